"""The planner's immutable state: what is recalled from memory, what is remembered, and the
bookkeeping a rule does (Events, templates, replacements, the deadline clock)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fogline.rollout import RolloutMemory, RolloutPolicy
from fogline.rollout.state import PlanInputs, Progress
from tests.unit.rollout_fleet import A, B, at, fleet, inputs, mid_wave

pytestmark = pytest.mark.unit


def test_two_observations_of_one_site_are_refused() -> None:
    with pytest.raises(ValueError, match="two observations share a site name"):
        PlanInputs.of(fleet(["s1", "s1"]), RolloutPolicy(), RolloutMemory(), B, at(0))


def test_sites_are_read_in_name_order() -> None:
    assert list(inputs(fleet(["s3", "s1", "s2"])).sites) == ["s1", "s2", "s3"]


def test_removed_sites_drop_out_of_everything_recalled() -> None:
    memory = replace(
        mid_wave(fleet(["s1", "s2", "s3"]), ("s1", "s3")),
        completed_sites=("s2", "s3"),
        skipped_sites=("s3",),
        converging_sites=("s3", "s1"),
        rolled_back_sites=("s3",),
    )
    progress = Progress.recall(inputs(fleet(["s1", "s2"]), memory))
    assert progress.wave_sites == ("s1",)
    assert progress.completed == {"s2"}
    assert progress.skipped == frozenset()
    assert progress.converging == ("s1",)
    assert progress.rolled_back == frozenset()
    assert dict(progress.templates) == {"s1": B, "s2": A}


def test_what_is_recalled_is_remembered_unchanged() -> None:
    sites = fleet(["s1", "s2"])
    memory = replace(mid_wave(sites, ("s2",)), completed_sites=("s1",), retry_observed=2)
    assert Progress.recall(inputs(sites, memory)).remember(B, "Progressing") == memory


def test_the_clock_adds_the_time_it_stood_still_to_the_wave_budget() -> None:
    """The worked example of ``resume_clock``: stopped 12:00:10, resumed 12:01:40."""
    memory = replace(mid_wave(fleet(["s1"]), ("s1",)), wave_stopped_seconds=15.0)
    stopped = Progress.recall(inputs(fleet(["s1"]), memory)).stop_clock(at(10))
    assert stopped.stop_clock(at(50)).clock_stopped_at == at(10)
    resumed = stopped.resume_clock(at(100))
    assert resumed.clock_stopped_at is None
    assert resumed.wave_stopped_seconds == 15.0 + 90.0
    assert resumed.resume_clock(at(200)) == resumed


def test_a_site_is_reported_skipped_once() -> None:
    progress = Progress.recall(inputs(fleet(["s1", "s2"])))
    progress = progress.pass_over(["s1"]).pass_over(["s1", "s2", "s2"])
    assert progress.skipped == {"s1", "s2"}
    assert [e.message.split()[1] for e in progress.events] == ["s1", "s2"]
    assert {e.reason for e in progress.events} == {"SiteSkipped"}


def test_replacements_leave_out_sites_with_nothing_to_replace_and_keep_the_last_word() -> None:
    progress = Progress.recall(inputs(fleet(["s1", "s2"])))
    progress = progress.with_replacements({"s1": ("n1",), "s2": ()})
    progress = progress.with_replacements({"s1": ("n2",)})
    assert dict(progress.replacements) == {"s1": ("n2",)}


@pytest.mark.parametrize(
    ("stable", "wave_index", "canary_sites", "label"),
    [
        (None, 0, 1, "wave 0 (first deploy)"),
        (A, 0, 1, "wave 0 (canary)"),
        (A, 0, 0, "wave 0"),
        (A, 3, 1, "wave 3"),
    ],
)
def test_the_wave_label_names_first_deploys_and_canaries(
    stable: str | None, wave_index: int, canary_sites: int, label: str
) -> None:
    progress = replace(Progress.recall(inputs(fleet(["s1"]))), stable=stable, wave_index=wave_index)
    assert progress.wave_label(RolloutPolicy(canary_sites=canary_sites)) == label


def test_the_width_counts_sites_that_are_not_held() -> None:
    sites = [*fleet(["s1", "s2", "s3"]), *fleet(["s4"]), *fleet(["s5"])]
    sites = [replace(s, paused=True) if s.name == "s4" else s for s in sites]
    sites = [replace(s, maintenance=True) if s.name == "s5" else s for s in sites]
    sites = [replace(s, nodes=()) if s.name == "s3" else s for s in sites]
    assert inputs(sites, policy=RolloutPolicy(max_unavailable="100%")).width() == 3
