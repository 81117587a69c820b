"""Worked examples for how planner messages name sites and digests."""

from __future__ import annotations

import pytest

from fogline.rollout.messages import MESSAGE_SITES, short_digest, site_names_text
from tests.unit.rollout_fleet import A

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("names", "limit", "text"),
    [
        ([], 3, ""),
        (["s1", "s2"], 3, "s1, s2"),
        (["s1", "s2", "s3"], 3, "s1, s2, s3"),
        (["s1", "s2", "s3", "s4"], 2, "s1, s2 and 2 more"),
    ],
)
def test_site_names_text_names_at_most_the_limit_and_counts_the_rest(
    names: list[str], limit: int, text: str
) -> None:
    assert site_names_text(names, limit) == text


def test_site_names_text_stays_short_for_a_large_fleet() -> None:
    names = [f"site-{i:04d}" for i in range(5000)]
    assert site_names_text(names).endswith(f"and {5000 - MESSAGE_SITES} more")
    assert site_names_text(names).count(",") == MESSAGE_SITES - 1


@pytest.mark.parametrize(
    ("digest", "short"),
    [
        (A, "aaaaaaaaaaaa"),
        (None, "none"),
        ("latest-and-some-long-name", "latest-and-s"),
    ],
)
def test_short_digest_keeps_the_algorithm_and_twelve_digits(digest: str | None, short: str) -> None:
    assert short_digest(digest) == short
