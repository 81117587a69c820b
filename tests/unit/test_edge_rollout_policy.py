"""spec.rollout becomes the planner's policy in one place (edge/observe.py): every knob the
planner reads arrives, from the CR as the API parses it."""

from __future__ import annotations

import dataclasses

import pytest

from fogline.api.edgedeployment import AnalysisSpec, CustomRatio, EdgeDeploymentSpec
from fogline.edge.observe import rollout_policy
from fogline.rollout import RolloutPolicy

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "a" * 64


def spec(**rollout: object) -> EdgeDeploymentSpec:
    model = {"uri": "https://models.example/m", "digest": DIGEST}
    return EdgeDeploymentSpec.from_dict({"model": model, "rollout": rollout})


def test_the_crds_defaults_are_the_planners_defaults() -> None:
    assert rollout_policy(spec().rollout) == RolloutPolicy()


def test_every_rollout_knob_reaches_the_planner() -> None:
    chosen = spec(
        canarySites=2,
        maxUnavailable="30%",
        pauseSeconds=45,
        progressDeadlineSeconds=120,
        autoRollback=False,
        paused=True,
        disconnectedSites="Wait",
        retry=3,
        analysis={
            "windowSeconds": 20,
            "minRequests": 7,
            "maxErrorRatio": 0.02,
            "maxP99LatencyMs": 250,
            "maxP99LatencyRatio": 1.5,
            "customRatio": {
                "name": "rejected",
                "numerator": "fogline_inference_queue_rejected_total",
                "denominator": "fogline_http_requests_total",
                "max": 0.1,
            },
            "source": "Prometheus",
            "maxPods": 3,
            "inconclusive": "Fail",
        },
    )
    policy = rollout_policy(chosen.rollout)
    assert policy == RolloutPolicy(
        canary_sites=2,
        max_unavailable="30%",
        pause_seconds=45.0,
        progress_deadline_seconds=120.0,
        auto_rollback=False,
        paused=True,
        disconnected="Wait",
        retry=3,
        analysis=AnalysisSpec(
            window_seconds=20.0,
            min_requests=7,
            max_error_ratio=0.02,
            max_p99_latency_ms=250.0,
            max_p99_latency_ratio=1.5,
            custom_ratio=CustomRatio(
                "rejected",
                "fogline_inference_queue_rejected_total",
                "fogline_http_requests_total",
                0.1,
            ),
            source="Prometheus",
            max_pods=3,
            inconclusive="Fail",
        ),
    )
    # Each field differs from its default, so a knob that were dropped would show here.
    defaults = RolloutPolicy()
    unchanged = [
        f.name
        for f in dataclasses.fields(RolloutPolicy)
        if getattr(policy, f.name) == getattr(defaults, f.name)
    ]
    assert unchanged == []
    # The same for the analysis: every field of it differs from its default.
    assert policy.analysis is not None
    analysis_defaults = AnalysisSpec()
    assert [
        f.name
        for f in dataclasses.fields(AnalysisSpec)
        if getattr(policy.analysis, f.name) == getattr(analysis_defaults, f.name)
    ] == []
