"""Status merge patches: only what changes, explicit nulls for what no longer applies, and
nothing at all for a steady state."""

from __future__ import annotations

import pytest

from fogline.api.status import status_patch

pytestmark = pytest.mark.unit


def test_a_steady_state_patches_nothing() -> None:
    current = {"phase": "Available", "rollout": {"siteDigests": {"a": "x"}}, "history": [1]}
    assert status_patch(current, dict(current)) == {}


def test_a_number_the_api_server_gives_back_without_its_fraction_is_no_change() -> None:
    # Written as 0.0 and 12.0, read back as 0 and 12 (a CRD `number` through Go's JSON).
    stored = {"rollout": {"waveStoppedSeconds": 0, "siteDigests": {"a": "x"}}, "score": 12}
    desired = {"rollout": {"waveStoppedSeconds": 0.0, "siteDigests": {"a": "x"}}, "score": 12.0}
    assert status_patch(stored, desired) == {}
    moved = {"rollout": {"waveStoppedSeconds": 0.5, "siteDigests": {"a": "x"}}, "score": 12.0}
    assert status_patch(stored, moved) == {"rollout": {"waveStoppedSeconds": 0.5}}


def test_a_key_of_the_last_run_that_no_longer_applies_becomes_null() -> None:
    current = {
        "phase": "Succeeded",
        "completionTime": "t",
        "progress": {"epoch": 4},
        "artifact": {},
    }
    desired = {"phase": "Running"}
    patch = status_patch(current, desired, removable=("completionTime", "progress", "startTime"))
    # artifact is not removable: a partial desired status leaves it alone.
    assert patch == {"phase": "Running", "completionTime": None, "progress": None}


def test_a_removed_site_leaves_the_nested_site_digests() -> None:
    current = {"rollout": {"siteDigests": {"a": "x", "gone": "x"}, "waveIndex": 2}}
    desired = {"rollout": {"siteDigests": {"a": "x"}, "waveIndex": 2}}
    assert status_patch(current, desired) == {"rollout": {"siteDigests": {"gone": None}}}


def test_none_in_the_desired_status_removes_the_key_once() -> None:
    assert status_patch({"failedSite": "s1"}, {"failedSite": None}) == {"failedSite": None}
    assert status_patch({}, {"failedSite": None}) == {}
