"""Worked examples for the site predicates: served, behind, failing, which pods move next,
and whether a refusal belongs to the wave."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fogline.rollout import NodeObservation, SiteObservation
from fogline.rollout.sites import (
    REFUSAL_SLACK,
    converged,
    needs_replacement,
    pod_failure,
    refused_in_wave,
    replacements,
)
from tests.unit.rollout_fleet import A, B, at, node

pytestmark = pytest.mark.unit


def nodes(*members: NodeObservation) -> SiteObservation:
    return SiteObservation("s1", members)


def test_a_site_converges_when_every_ready_unlocked_node_serves_the_digest() -> None:
    assert converged(nodes(node("n1", B), node("n2", B)), B)
    assert not converged(nodes(node("n1", B), node("n2", A)), B)
    assert not converged(nodes(node("n1", B, pod_ready=False)), B)
    # Locked and NotReady nodes are not waited for; a site with no node is vacuously done.
    assert converged(nodes(node("n1", B), node("n2", A, locked=True)), B)
    assert converged(nodes(node("n1", B), node("n2", A, ready=False)), B)
    assert converged(nodes(), B)


def test_only_ready_unlocked_nodes_on_another_digest_need_replacement() -> None:
    assert needs_replacement(nodes(node("n1", B), node("n2", A)), B)
    assert not needs_replacement(nodes(node("n1", B), node("n2", A, locked=True)), B)
    assert not needs_replacement(nodes(node("n1", B), node("n2", None)), B)


def test_pod_failure_names_the_first_failing_node_on_the_digest() -> None:
    site = nodes(
        node("n2", B, failure="CrashLoopBackOff"),
        node("n1", B, failure="ImagePullBackOff"),
        node("n0", A, failure="Error"),
    )
    assert pod_failure(site, B) == "node n1: pod ImagePullBackOff on bbbbbbbbbbbb"
    assert pod_failure(site, A) == "node n0: pod Error on aaaaaaaaaaaa"


def test_a_failing_pod_on_a_notready_node_does_not_count() -> None:
    assert pod_failure(nodes(node("n1", B, ready=False, failure="Error")), B) is None


def test_idle_pods_go_at_once_and_ready_ones_one_at_a_time() -> None:
    """The worked example of ``replacements``."""
    site = nodes(node("n1", A), node("n2", A), node("n3", A, pod_ready=False))
    assert replacements(site, B) == ("n3", "n1")
    starting = replace(site, nodes=(node("n1", B, pod_ready=False), *site.nodes[1:]))
    assert replacements(starting, B) == ("n3",)


def test_a_failing_pod_on_the_digest_does_not_hold_back_the_next_ready_one() -> None:
    site = nodes(node("n1", B, failure="CrashLoopBackOff"), node("n2", A))
    assert replacements(site, B) == ("n2",)


def test_a_node_without_a_pod_holds_back_the_ready_ones() -> None:
    site = nodes(node("n1", None), node("n2", A))
    assert replacements(site, B) == ()


@pytest.mark.parametrize(
    ("refused_before_wave", "counts"),
    [(-30.0, True), (0.0, True), (REFUSAL_SLACK.total_seconds(), True), (40.0, False)],
)
def test_a_refusal_belongs_to_the_wave_unless_it_is_older_than_the_slack(
    refused_before_wave: float, counts: bool
) -> None:
    site = SiteObservation(
        "s1",
        (node("n1", None),),
        refusal="pods forbidden: violates PodSecurity",
        refused_at=at(100 - refused_before_wave),
    )
    found = refused_in_wave(site, at(100))
    assert (found == "pods forbidden: violates PodSecurity") is counts


def test_a_refusal_counts_before_any_wave_and_not_once_every_pod_is_placed() -> None:
    refused = SiteObservation("s1", (node("n1", None),), refusal="quota", refused_at=at(0))
    assert refused_in_wave(refused, None) == "quota"
    placed = replace(refused, nodes=(node("n1", B),))
    assert refused_in_wave(placed, at(0)) is None
