"""What a pod writes about itself is untrusted: poisoned progress annotations and termination
messages never reach a status patch, never stop the rest of the status, and each poisoned
pod gets one Warning. A property test feeds the observer random reports and checks every
status it produces against the CRD's own status schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fogline.api.conditions import is_reason, rfc3339
from fogline.api.labels import PROGRESS_ANNOTATION
from fogline.api.modeltraining import ModelTraining
from fogline.training.jobs import plan_run
from fogline.training.observe import (
    COMPLETION_INDEX_ANNOTATION,
    REPORT_IGNORED,
    TrainingObservation,
    observe_training,
)
from tests.crd_schema import status_errors

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 24, 8, 0, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=10)
DIGEST = "sha256:" + "ab" * 32
GOOD_PROGRESS = {
    "epoch": 2,
    "epochs": 4,
    "loss": 0.2,
    "metric": {"name": "accuracy", "value": 0.9},
    "samplesPerSecond": 5000.0,
    "updatedAt": rfc3339(T0 + timedelta(minutes=4)),
}


def training(threshold: float = 0.5) -> ModelTraining:
    return ModelTraining.from_body(
        {
            "metadata": {"name": "digits", "namespace": "ml", "generation": 3},
            "spec": {
                "model": {"architecture": "mlp"},
                "dataset": {"uri": "builtin:digits"},
                "output": {"uri": "pvc://models/runs"},
                "evaluation": {"metric": "accuracy", "threshold": threshold},
            },
        }
    )


def job(kind: str) -> dict[str, Any]:
    conditions = {
        "running": [],
        "complete": [{"type": "Complete", "status": "True", "reason": "CompletionsReached"}],
        "failed": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
                "lastTransitionTime": rfc3339(T0 + timedelta(minutes=9)),
            }
        ],
    }[kind]
    status = {"startTime": rfc3339(T0), "active": int(kind == "running"), "conditions": conditions}
    return {"metadata": {"name": "digits-x"}, "spec": {}, "status": status}


def pod(
    name: str,
    phase: str,
    progress: str | None = None,
    message: str | None = None,
    index: str = "0",
) -> dict[str, Any]:
    annotations = {COMPLETION_INDEX_ANNOTATION: index}
    if progress is not None:
        annotations[PROGRESS_ANNOTATION] = progress
    status: dict[str, Any] = {"phase": phase}
    if message is not None:
        status["containerStatuses"] = [
            {"name": "trainer", "state": {"terminated": {"exitCode": 1, "message": message}}}
        ]
    return {
        "metadata": {"name": name, "creationTimestamp": rfc3339(T0), "annotations": annotations},
        "status": status,
    }


def observe(
    pods: list[dict[str, Any]], kind: str = "running", threshold: float = 0.5
) -> TrainingObservation:
    t = training(threshold)
    return observe_training(t, plan_run(t), job(kind), pods, NOW)


def warnings_about_pods(observation: TrainingObservation) -> list[str | None]:
    return [e.pod for e in observation.events if e.reason == REPORT_IGNORED]


def assert_valid(observation: TrainingObservation) -> None:
    assert status_errors("ModelTraining", observation.status) == []


def with_progress(**changes: Any) -> str:
    return json.dumps({**GOOD_PROGRESS, **changes})


# --- the checker itself can fail ------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [
        {"progress": {"epoch": 1, "epochs": 2, "loss": float("nan")}},
        {"progress": {"epoch": -1}},
        {"progress": {"updatedAt": "yesterday"}},
        {"metrics": {"accuracy": "high"}},
        {"artifact": {"digest": "sha256:nothex"}},
        {"observedGeneration": 2**63},
        {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "not camel case",
                    "message": "",
                    "lastTransitionTime": rfc3339(T0),
                }
            ]
        },
    ],
)
def test_the_schema_checker_refuses_what_the_apiserver_refuses(status: dict[str, Any]) -> None:
    assert status_errors("ModelTraining", status)


# --- each poisoned progress annotation ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        pytest.param('{"epoch": 1, "epochs": 4, "loss": NaN}', False, id="bare-nan"),
        pytest.param('{"epoch": 1, "epochs": 4, "loss": Infinity}', False, id="infinity"),
        pytest.param(with_progress(epoch=1e308), False, id="epoch-1e308"),
        pytest.param(with_progress(epoch=5, epochs=4), False, id="epoch-past-epochs"),
        pytest.param(with_progress(epochs=True), False, id="bool-epochs"),
        pytest.param(
            with_progress(metric={"name": "m" * 200_000, "value": 1.0}),
            False,
            id="200kb-metric-name",
        ),
        pytest.param(
            with_progress(metric={"name": "accuracy", "value": 1e400}), False, id="metric-overflow"
        ),
        pytest.param(with_progress(updatedAt="not a time"), True, id="updated-at-not-a-time"),
        pytest.param(with_progress(updatedAt="2030-01-01T00:00:00"), True, id="naive-time"),
        pytest.param(with_progress(samplesPerSecond=-1), True, id="negative-rate"),
        pytest.param(with_progress(loss=10**400), True, id="huge-integer-loss"),
        pytest.param("[" * 100_000, False, id="deep-nesting"),
        pytest.param("[]", False, id="not-an-object"),
    ],
)
def test_a_poisoned_progress_annotation_leaves_a_valid_status_and_one_warning(
    raw: str, kept: bool
) -> None:
    observation = observe([pod("digits-x-0", "Running", progress=raw)])
    assert_valid(observation)
    assert observation.phase == "Running"
    assert warnings_about_pods(observation) == ["digits-x-0"]
    progress = observation.status.get("progress")
    if kept:  # the sound fields stay; only the bad one is dropped
        assert progress is not None and progress["epoch"] == 2 and progress["epochs"] == 4
    else:
        assert progress is None


def test_a_good_progress_annotation_warns_nothing_and_gets_an_eta() -> None:
    observation = observe([pod("digits-x-0", "Running", progress=with_progress())])
    assert warnings_about_pods(observation) == []
    assert observation.status["progress"]["eta"] == rfc3339(T0 + timedelta(minutes=8))
    assert_valid(observation)


def test_an_eta_beyond_year_9999_is_left_out() -> None:
    raw = with_progress(epoch=1, epochs=10000, updatedAt="9999-01-01T00:00:00Z")
    observation = observe([pod("digits-x-0", "Running", progress=raw)])
    assert "eta" not in observation.status["progress"]
    assert_valid(observation)


def test_each_poisoned_pod_warns_once_and_an_older_sound_report_still_shows() -> None:
    older = pod("digits-x-old", "Running", progress=with_progress(epoch=1))
    newer = pod("digits-x-new", "Running", progress='{"epoch": NaN}')
    newer["metadata"]["creationTimestamp"] = rfc3339(T0 + timedelta(minutes=1))
    observation = observe([older, newer])
    assert warnings_about_pods(observation) == ["digits-x-new"]
    assert observation.status["progress"]["epoch"] == 1


# --- poisoned termination messages ----------------------------------------------------------


def summary(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "phase": "Succeeded",
        "metrics": {"accuracy": 0.95, "loss": 0.1},
        "evaluation": {"metric": "accuracy", "value": 0.95},
        "artifact": {
            "uri": "pvc://models/x",
            "digest": DIGEST,
            "format": "onnx",
            "sizeBytes": 10,
            "quantized": False,
        },
    }
    document.update(changes)
    return document


def test_a_bare_nan_in_a_succeeded_message_fails_the_training_instead_of_freezing_it() -> None:
    text = json.dumps(
        summary(
            metrics={"accuracy": float("nan")},
            evaluation={"metric": "accuracy", "value": float("nan")},
        )
    )
    assert "NaN" in text
    observation = observe([pod("digits-x-0", "Succeeded", message=text)], kind="complete")
    assert_valid(observation)
    assert observation.phase == "Failed"
    assert "artifact" not in observation.status
    assert warnings_about_pods(observation) == ["digits-x-0"]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"evaluation": {"value": 1e308}}, id="metric-above-one-passes-no-gate"),
        pytest.param({"evaluation": {"value": -0.5}}, id="negative-metric"),
        pytest.param({"metrics": {"x" * 100_000: 1.0}}, id="huge-metric-name"),
        pytest.param({"metrics": {"loss": 1e400}}, id="metric-overflow"),
        pytest.param(
            {"artifact": {"digest": DIGEST, "sizeBytes": 2**70, "uri": "u" * 5000}},
            id="artifact-out-of-range",
        ),
    ],
)
def test_out_of_range_numbers_in_a_result_are_dropped_with_a_warning(
    changes: dict[str, Any],
) -> None:
    text = json.dumps(summary(**changes))
    observation = observe([pod("digits-x-0", "Succeeded", message=text)], kind="complete")
    assert_valid(observation)
    assert warnings_about_pods(observation) == ["digits-x-0"]
    if observation.phase == "Succeeded":
        assert 0 <= observation.status["artifact"]["metric"]["value"] <= 1


def test_a_torchscript_artifact_is_not_offered_to_edge_deployments() -> None:
    document = summary()
    document["artifact"]["format"] = "torchscript"
    message = json.dumps(document)
    observation = observe([pod("digits-x-0", "Succeeded", message=message)], kind="complete")
    assert observation.phase == "Failed"
    assert "artifact" not in observation.status
    assert observation.events[0].reason == "ArtifactNotDeployable"
    assert "onnx" in observation.events[0].message
    assert_valid(observation)


def test_a_failed_trainer_message_is_bounded_and_its_reason_wins() -> None:
    message = json.dumps(
        {
            "phase": "Failed",
            "reason": "TrainingDiverged",
            "message": "training diverged at epoch 1\x00" + "x" * 50_000,
        }
    )
    observation = observe([pod("digits-x-0", "Failed", message=message[:4000] + '"}')], "failed")
    assert observation.events[0].reason == "TrainingDiverged"
    assert_valid(observation)


# --- the property ---------------------------------------------------------------------------

json_numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2, 4, 10000, 10001, -1, 0.5, 1.0, 1e308]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), json_numbers, st.text(max_size=40)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
progress_keys = ["epoch", "epochs", "loss", "metric", "samplesPerSecond", "updatedAt"]
summary_keys = ["phase", "reason", "message", "metrics", "evaluation", "artifact", "epochs"]
timestamps = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(rfc3339), st.text(max_size=30), json_values
)


def mutated(base: dict[str, Any], keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """The base document with some keys replaced by anything at all."""
    return st.dictionaries(
        st.sampled_from(keys),
        st.one_of(json_values, timestamps, st.builds(dict, value=json_values)),
        max_size=len(keys),
    ).map(lambda changes: {**base, **changes})


def as_text(document: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    return document.map(lambda d: json.dumps(d, allow_nan=True))


reports_text = st.one_of(st.none(), st.text(max_size=200), as_text(json_values))
progress_text = st.one_of(reports_text, as_text(mutated(GOOD_PROGRESS, progress_keys)))
message_text = st.one_of(
    reports_text,
    as_text(mutated(summary(), summary_keys)),
    as_text(mutated({"phase": "Failed", "reason": "DatasetInvalid", "message": "x"}, summary_keys)),
)
pods_strategy = st.lists(
    st.builds(
        pod,
        name=st.sampled_from(["p-0", "p-1", "p-2"]),
        phase=st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]),
        progress=progress_text,
        message=message_text,
        index=st.sampled_from(["0", "0", "1"]),
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pods=pods_strategy,
    kind=st.sampled_from(["running", "complete", "failed"]),
    threshold=st.floats(min_value=0, max_value=1),
)
def test_no_report_a_pod_can_write_makes_a_status_the_apiserver_refuses(
    pods: list[dict[str, Any]], kind: str, threshold: float
) -> None:
    observation = observe(pods, kind, threshold)
    assert status_errors("ModelTraining", observation.status) == []
    for event in observation.events:
        assert is_reason(event.reason) and len(event.message) <= 4096
    pod_warnings = warnings_about_pods(observation)
    assert len(pod_warnings) == len(set(pod_warnings))  # at most one per pod
