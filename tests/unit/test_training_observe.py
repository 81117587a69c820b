"""The training observer: from the Job and its pods to the ModelTraining's phase, reasons,
conditions, artifact and progress. Every case is a tiny Job and pod shape and a fixed `now`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fogline.api.conditions import rfc3339
from fogline.api.labels import PROGRESS_ANNOTATION
from fogline.api.modeltraining import ModelTraining
from fogline.training.jobs import plan_run
from fogline.training.observe import (
    COMPLETION_INDEX_ANNOTATION,
    TrainingObservation,
    observe_training,
    progress_from_pods,
    regate,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 24, 8, 0, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=10)
DIGEST = "sha256:" + "ab" * 32
URI = "pvc://models/runs/digits/0123abcd"


# --- tiny constructors ----------------------------------------------------------------------


def training(
    threshold: float = 0.9,
    suspend: bool = False,
    queue: str | None = None,
    status: dict[str, Any] | None = None,
) -> ModelTraining:
    spec: dict[str, Any] = {
        "model": {"architecture": "mlp"},
        "dataset": {"uri": "builtin:digits"},
        "output": {"uri": "pvc://models/runs"},
        "evaluation": {"metric": "accuracy", "threshold": threshold},
        "runPolicy": {"suspend": suspend},
    }
    if queue:
        spec["queueName"] = queue
    return ModelTraining.from_body(
        {
            "metadata": {"name": "digits", "namespace": "ml", "generation": 4},
            "spec": spec,
            "status": status or {},
        }
    )


def job(
    *conditions: tuple[str, str],
    suspend: bool = False,
    active: int = 0,
    failed: int = 0,
    succeeded: int = 0,
    start: datetime | None = T0,
    completion: datetime | None = None,
) -> dict[str, Any]:
    """A Job with True conditions given as (type, reason)."""
    status: dict[str, Any] = {
        "conditions": [
            {
                "type": type_,
                "status": "True",
                "reason": reason,
                "message": f"job says {reason}",
                "lastTransitionTime": rfc3339(T0 + timedelta(minutes=5)),
            }
            for type_, reason in conditions
        ],
        "active": active,
        "failed": failed,
        "succeeded": succeeded,
    }
    if start:
        status["startTime"] = rfc3339(start)
    if completion:
        status["completionTime"] = rfc3339(completion)
    return {"metadata": {"name": "digits-0123abcd"}, "spec": {"suspend": suspend}, "status": status}


def pod(
    phase: str,
    message: str | None = None,
    index: str | None = None,
    created: datetime = T0,
    unschedulable: str | None = None,
    progress: dict[str, Any] | None = None,
) -> dict[str, Any]:
    annotations: dict[str, str] = {}
    if index is not None:
        annotations[COMPLETION_INDEX_ANNOTATION] = index
    if progress is not None:
        annotations[PROGRESS_ANNOTATION] = json.dumps(progress)
    status: dict[str, Any] = {"phase": phase}
    if message is not None:
        status["containerStatuses"] = [
            {"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": message}}}
        ]
    if unschedulable is not None:
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        ]
    return {
        "metadata": {"creationTimestamp": rfc3339(created), "annotations": annotations},
        "status": status,
    }


def success(accuracy: float, digest: str = DIGEST) -> str:
    return json.dumps(
        {
            "phase": "Succeeded",
            "metrics": {"accuracy": accuracy, "loss": 0.1},
            "evaluation": {"metric": "accuracy", "value": accuracy},
            "artifact": {
                "uri": URI,
                "digest": digest,
                "format": "onnx",
                "sizeBytes": 1234,
                "quantized": False,
            },
        }
    )


def failure(reason: str, message: str = "no such dataset") -> str:
    return json.dumps({"phase": "Failed", "reason": reason, "message": message})


def observe(
    t: ModelTraining, j: dict[str, Any] | None, pods: list[dict[str, Any]], now: datetime = NOW
) -> TrainingObservation:
    return observe_training(t, plan_run(t), j, pods, now)


def condition(observation: TrainingObservation, type_: str) -> dict[str, Any]:
    (found,) = [c for c in observation.status["conditions"] if c["type"] == type_]
    result: dict[str, Any] = found
    return result


# --- phase and reason -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "j", "pods", "want_phase", "want_reason"),
    [
        pytest.param(training(), None, [], "Pending", "JobPending", id="no-job-yet"),
        pytest.param(
            training(suspend=True),
            job(suspend=True, start=None),
            [],
            "Suspended",
            "Suspended",
            id="suspended-by-run-policy",
        ),
        pytest.param(
            training(queue="team-a"),
            job(suspend=True, start=None),
            [],
            "Queued",
            "Queued",
            id="waiting-for-kueue",
        ),
        pytest.param(
            training(suspend=True, queue="team-a"),
            job(suspend=True, start=None),
            [],
            "Suspended",
            "Suspended",
            id="suspend-wins-over-queue",
        ),
        pytest.param(
            training(),
            job(active=1),
            [pod("Pending", unschedulable="0/4 nodes: Insufficient nvidia.com/gpu")],
            "Pending",
            "Unschedulable",
            id="unschedulable",
        ),
        pytest.param(
            training(), job(active=1), [pod("Pending")], "Pending", "PodsStarting", id="starting"
        ),
        pytest.param(
            training(), job(active=1), [pod("Running")], "Running", "Training", id="running"
        ),
        pytest.param(
            training(threshold=0.9),
            job(("Complete", "CompletionsReached"), succeeded=1),
            [pod("Succeeded", success(0.95))],
            "Succeeded",
            "EvaluationPassed",
            id="complete-above-threshold",
        ),
        pytest.param(
            training(threshold=0.9),
            job(("Complete", "CompletionsReached"), succeeded=1),
            [pod("Succeeded", success(0.9))],
            "Succeeded",
            "EvaluationPassed",
            id="complete-at-threshold",
        ),
        pytest.param(
            training(threshold=0.9),
            job(("Complete", "CompletionsReached"), succeeded=1),
            [pod("Succeeded", success(0.5))],
            "Failed",
            "EvaluationBelowThreshold",
            id="complete-below-threshold",
        ),
        pytest.param(
            training(),
            job(("Complete", "CompletionsReached"), succeeded=1),
            [pod("Succeeded")],
            "Failed",
            "ResultMissing",
            id="complete-without-message",
        ),
        pytest.param(
            training(),
            job(("Complete", "CompletionsReached"), succeeded=1),
            [pod("Succeeded", success(0.95, digest="not-a-digest"))],
            "Failed",
            "ResultMissing",
            id="complete-with-bad-digest",
        ),
        pytest.param(
            training(),
            job(("Complete", "CompletionsReached"), succeeded=1),
            [
                pod(
                    "Succeeded",
                    json.dumps({"evaluation": {"value": "high"}, "artifact": {"digest": DIGEST}}),
                )
            ],
            "Failed",
            "ResultMissing",
            id="complete-with-a-metric-that-is-not-a-number",
        ),
        pytest.param(
            training(),
            job(("SuccessCriteriaMet", "CompletionsReached"), succeeded=1),
            [pod("Succeeded", success(0.95))],
            "Succeeded",
            "EvaluationPassed",
            id="success-criteria-met",
        ),
        pytest.param(
            training(),
            job(("Failed", "BackoffLimitExceeded"), failed=4),
            [pod("Failed")],
            "Failed",
            "BackoffLimitExceeded",
            id="backoff-limit",
        ),
        pytest.param(
            training(),
            job(("Failed", "DeadlineExceeded"), failed=1),
            [pod("Failed")],
            "Failed",
            "DeadlineExceeded",
            id="deadline",
        ),
        pytest.param(
            training(),
            job(("FailureTarget", "BackoffLimitExceeded"), failed=4),
            [pod("Failed")],
            "Failed",
            "BackoffLimitExceeded",
            id="failure-target-before-failed",
        ),
        pytest.param(
            training(),
            job(("Failed", "PodFailurePolicy"), failed=1),
            [pod("Failed", failure("DatasetNotFound"))],
            "Failed",
            "DatasetNotFound",
            id="trainer-reason-wins",
        ),
        pytest.param(
            training(),
            job(("Failed", "BackoffLimitExceeded"), failed=4),
            [pod("Failed", "Traceback (most recent call last): boom")],
            "Failed",
            "BackoffLimitExceeded",
            id="non-json-message-keeps-job-reason",
        ),
        pytest.param(
            training(),
            job(("Failed", "PodFailurePolicy"), failed=1),
            [pod("Failed", failure("bad input: no such file"))],
            "Failed",
            "PodFailurePolicy",
            id="reason-that-is-not-camel-case-keeps-job-reason",
        ),
    ],
)
def test_job_and_pods_decide_phase_and_reason(
    t: ModelTraining,
    j: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    want_phase: str,
    want_reason: str,
) -> None:
    observation = observe(t, j, pods)
    assert observation.phase == want_phase
    assert observation.status["phase"] == want_phase
    assert condition(observation, "Progressing")["reason"] == want_reason
    assert [e.reason for e in observation.events if e.pod is None] == [want_reason]
    want_succeeded = {"Succeeded": "True", "Failed": "False"}.get(want_phase, "Unknown")
    assert condition(observation, "Succeeded")["status"] == want_succeeded


def test_unschedulable_pod_reports_the_scheduler_message() -> None:
    message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    observation = observe(training(), job(active=1), [pod("Pending", unschedulable=message)])
    scheduled = condition(observation, "Scheduled")
    assert (scheduled["status"], scheduled["reason"], scheduled["message"]) == (
        "False",
        "Unschedulable",
        message,
    )
    assert condition(observation, "Progressing")["message"] == message
    assert observation.events[0].type == "Warning"


def test_running_pod_marks_the_run_scheduled_and_progressing() -> None:
    observation = observe(training(), job(active=1), [pod("Running")])
    assert condition(observation, "Scheduled")["status"] == "True"
    assert condition(observation, "Progressing")["status"] == "True"
    assert observation.status["attempts"] == 1
    assert observation.status["startTime"] == rfc3339(T0)
    assert observation.status["jobName"] == plan_run(training()).job_name
    assert observation.status["observedGeneration"] == 4
    assert "completionTime" not in observation.status


def test_no_job_yet_sets_no_scheduled_condition() -> None:
    observation = observe(training(), None, [])
    assert {c["type"] for c in observation.status["conditions"]} == {"Progressing", "Succeeded"}


# --- the gate and the artifact --------------------------------------------------------------


def test_passing_run_publishes_the_artifact() -> None:
    done = T0 + timedelta(minutes=8)
    observation = observe(
        training(threshold=0.9),
        job(("Complete", "CompletionsReached"), succeeded=1, completion=done),
        [pod("Succeeded", success(0.95))],
    )
    status = observation.status
    assert status["artifact"] == {
        "uri": URI,
        "digest": DIGEST,
        "format": "onnx",
        "sizeBytes": 1234,
        "quantized": False,
        "metric": {"name": "accuracy", "value": 0.95},
        "generation": 4,
    }
    assert status["artifactDigestShort"] == "ab" * 6
    assert status["metrics"] == {"accuracy": 0.95, "loss": 0.1}
    assert status["completionTime"] == rfc3339(done)
    assert condition(observation, "Progressing")["status"] == "False"


def test_run_below_the_threshold_publishes_no_artifact() -> None:
    observation = observe(
        training(threshold=0.9),
        job(("Complete", "CompletionsReached"), succeeded=1),
        [pod("Succeeded", success(0.5))],
    )
    assert "artifact" not in observation.status
    assert "artifactDigestShort" not in observation.status
    assert observation.status["metrics"]["accuracy"] == 0.5
    assert "below the threshold 0.9" in observation.events[0].message
    assert observation.events[0].type == "Warning"


def test_metric_from_metrics_is_used_when_the_evaluation_has_no_value() -> None:
    summary = json.loads(success(0.95))
    del summary["evaluation"]
    observation = observe(
        training(threshold=0.9),
        job(("Complete", "CompletionsReached"), succeeded=1),
        [pod("Succeeded", json.dumps(summary))],
    )
    assert observation.phase == "Succeeded"


def test_newest_rank_zero_pod_is_read_for_the_result() -> None:
    pods = [
        pod("Succeeded", success(0.5), index="0", created=T0),
        pod("Succeeded", success(0.99, digest="sha256:" + "1" * 64), index="1", created=NOW),
        pod("Succeeded", success(0.95), index="0", created=T0 + timedelta(minutes=1)),
    ]
    observation = observe(
        training(threshold=0.9), job(("Complete", "CompletionsReached"), succeeded=2), pods
    )
    assert observation.phase == "Succeeded"
    assert observation.status["artifact"]["digest"] == DIGEST


# --- failures -------------------------------------------------------------------------------


def test_trainer_reason_keeps_the_job_reason_in_the_message() -> None:
    observation = observe(
        training(),
        job(("Failed", "PodFailurePolicy"), failed=1),
        [pod("Failed", failure("DatasetNotFound", "pvc://data/x.npz does not exist"))],
    )
    assert condition(observation, "Succeeded")["message"] == (
        "pvc://data/x.npz does not exist (PodFailurePolicy)"
    )


def test_non_json_message_is_quoted_after_the_job_message() -> None:
    observation = observe(
        training(),
        job(("Failed", "BackoffLimitExceeded"), failed=4),
        [pod("Failed", "CUDA error: out of memory")],
    )
    assert condition(observation, "Succeeded")["message"] == (
        "job says BackoffLimitExceeded; the trainer's last words: CUDA error: out of memory"
    )


def test_failed_run_without_completion_time_ends_when_the_job_failed() -> None:
    observation = observe(training(), job(("Failed", "DeadlineExceeded"), failed=2), [])
    assert observation.status["completionTime"] == rfc3339(T0 + timedelta(minutes=5))
    assert observation.status["attempts"] == 2


# --- progress -------------------------------------------------------------------------------


def test_progress_eta_extrapolates_the_time_per_epoch() -> None:
    report = {
        "epoch": 2,
        "epochs": 10,
        "loss": 0.3,
        "metric": {"name": "accuracy", "value": 0.8},
        "samplesPerSecond": 500.0,
        "updatedAt": rfc3339(T0 + timedelta(minutes=4)),
    }
    progress = progress_from_pods([pod("Running", progress=report)], T0, NOW)
    assert progress == {
        "epoch": 2,
        "epochs": 10,
        "loss": 0.3,
        "samplesPerSecond": 500.0,
        "updatedAt": rfc3339(T0 + timedelta(minutes=4)),
        "metric": {"name": "accuracy", "value": 0.8},
        # two epochs took four minutes: eight more take sixteen
        "eta": rfc3339(T0 + timedelta(minutes=20)),
    }


@pytest.mark.parametrize(
    ("report", "started"),
    [
        pytest.param({"epoch": 0, "epochs": 10}, T0, id="no-epoch-finished"),
        pytest.param({"epoch": 2, "epochs": 10}, None, id="job-not-started"),
        pytest.param(
            {"epoch": 2, "epochs": 10, "updatedAt": rfc3339(T0 - timedelta(minutes=1))},
            T0,
            id="report-older-than-start",
        ),
    ],
)
def test_progress_has_no_eta_without_a_measured_epoch(
    report: dict[str, Any], started: datetime | None
) -> None:
    progress = progress_from_pods([pod("Running", progress=report)], started, NOW)
    assert progress is not None
    assert "eta" not in progress


def test_progress_without_update_time_extrapolates_from_now() -> None:
    progress = progress_from_pods([pod("Running", progress={"epoch": 5, "epochs": 10})], T0, NOW)
    assert progress is not None
    assert progress["eta"] == rfc3339(NOW + timedelta(minutes=10))


@pytest.mark.parametrize(
    "pods",
    [
        pytest.param([], id="no-pods"),
        pytest.param([pod("Running")], id="no-annotation"),
        pytest.param([pod("Running", progress={"epoch": 1})], id="no-epochs"),
        pytest.param(
            [pod("Running", progress={"epoch": 1, "epochs": 3}, index="1")], id="not-rank-zero"
        ),
    ],
)
def test_progress_is_none_without_a_rank_zero_report(pods: list[dict[str, Any]]) -> None:
    assert progress_from_pods(pods, T0, NOW) is None


def test_progress_reaches_the_status() -> None:
    observation = observe(
        training(), job(active=1), [pod("Running", progress={"epoch": 1, "epochs": 4})]
    )
    assert observation.status["progress"]["epoch"] == 1


# --- conditions over time -------------------------------------------------------------------


def test_condition_time_is_kept_while_status_does_not_flip() -> None:
    first = observe(training(), job(active=1), [pod("Pending")], now=T0)
    later = NOW + timedelta(minutes=1)
    again = observe(training(status=first.status), job(active=1), [pod("Running")], now=later)
    assert condition(again, "Progressing")["reason"] == "Training"
    assert condition(again, "Progressing")["lastTransitionTime"] == rfc3339(T0)
    assert condition(again, "Scheduled")["lastTransitionTime"] == rfc3339(T0)
    done = observe(
        training(status=again.status),
        job(("Complete", "CompletionsReached"), succeeded=1),
        [pod("Succeeded", success(0.95))],
        now=later,
    )
    assert condition(done, "Progressing")["lastTransitionTime"] == rfc3339(later)
    assert condition(done, "Succeeded")["lastTransitionTime"] == rfc3339(later)
    assert condition(done, "Scheduled")["lastTransitionTime"] == rfc3339(T0)


# --- the gate, re-judged from the spec and the artifact's own metric -------------------------

PUBLISHED = {
    "phase": "Succeeded",
    "jobName": "digits-0123abcd",
    "conditions": [],
    "artifact": {"uri": URI, "digest": DIGEST, "metric": {"name": "accuracy", "value": 0.93}},
    "artifactDigestShort": DIGEST[7:19],
}


def test_a_raised_threshold_withdraws_the_artifact_even_without_the_job() -> None:
    status, events = regate(training(threshold=0.95, status=PUBLISHED), {}, NOW)
    assert status["artifact"] is None and status["artifactDigestShort"] is None
    assert status["phase"] == "Failed"
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["status"] == "False" and succeeded["reason"] == "EvaluationBelowThreshold"
    assert [e.reason for e in events] == ["ArtifactWithdrawn"]
    assert "0.9300" in events[0].message and "0.95" in events[0].message


def test_an_artifact_that_still_passes_the_gate_stays() -> None:
    status, events = regate(training(threshold=0.9, status=PUBLISHED), {}, NOW)
    assert status == {} and events == ()


def test_a_new_run_keeps_the_last_good_artifact_only_while_it_passes() -> None:
    running = {"phase": "Running", "observedGeneration": 4}
    kept, _ = regate(training(threshold=0.9, status=PUBLISHED), running, NOW)
    assert "artifact" not in kept  # the merge patch leaves it in place
    withdrawn, _ = regate(training(threshold=0.99, status=PUBLISHED), running, NOW)
    assert withdrawn["artifact"] is None and withdrawn["phase"] == "Running"


def finished(accuracy: float, threshold: float) -> dict[str, Any]:
    """The status of a run that completed with `accuracy`, judged at `threshold`."""
    t = training(threshold=threshold)
    complete = job(("Complete", "CompletionsReached"), succeeded=1)
    done = observe(t, complete, [pod("Succeeded", success(accuracy))])
    return done.status


def merged(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = {**status, **patch}
    return {k: v for k, v in out.items() if v is not None}


def test_the_last_run_is_kept_in_status_whether_it_passed_or_not() -> None:
    for accuracy in (0.95, 0.85):
        last = finished(accuracy, threshold=0.9)["lastRun"]
        assert last["jobName"] == plan_run(training()).job_name
        assert last["artifact"]["digest"] == DIGEST
        assert last["artifact"]["metric"] == {"name": "accuracy", "value": accuracy}


def test_lowering_the_threshold_again_after_the_job_is_gone_publishes_the_artifact() -> None:
    published = finished(0.93, threshold=0.9)
    assert published["artifact"]["digest"] == DIGEST
    raised, _ = regate(training(threshold=0.95, status=published), {}, NOW)
    withdrawn = merged(published, raised)
    assert "artifact" not in withdrawn and withdrawn["phase"] == "Failed"
    # The Job is gone (ttl): the gate is judged from status.lastRun alone.
    lowered, events = regate(training(threshold=0.9, status=withdrawn), {}, NOW)
    assert lowered["phase"] == "Succeeded"
    assert lowered["artifact"] == published["artifact"]
    assert lowered["artifactDigestShort"] == DIGEST[7:19]
    succeeded = next(c for c in lowered["conditions"] if c["type"] == "Succeeded")
    assert succeeded["status"] == "True" and succeeded["reason"] == "EvaluationPassed"
    assert [e.reason for e in events] == ["EvaluationPassed"]
    # Published once: judged again, it changes nothing.
    again = merged(withdrawn, lowered)
    assert regate(training(threshold=0.9, status=again), {}, NOW) == ({}, ())


def test_a_run_that_failed_the_gate_publishes_when_the_threshold_comes_down_to_it() -> None:
    failing = finished(0.85, threshold=0.9)
    assert failing["phase"] == "Failed" and "artifact" not in failing
    lowered, _ = regate(training(threshold=0.8, status=failing), {}, NOW)
    assert lowered["phase"] == "Succeeded" and lowered["artifact"]["digest"] == DIGEST


def test_the_last_run_of_an_older_job_is_never_published_for_the_current_one() -> None:
    failing = finished(0.85, threshold=0.9)
    newer = {**failing, "jobName": "digits-ffffffff", "phase": "Failed"}
    lowered, events = regate(training(threshold=0.8, status=newer), {}, NOW)
    assert lowered == {} and events == ()
