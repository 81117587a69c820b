"""The observer of a training run: from the Job and its pods as the API shows them to the
ModelTraining's status, the gate's verdict and the Events a transition deserves. Pure:
`now` is passed in, nothing is read or written here."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fogline.api.conditions import is_reason, rfc3339, set_condition
from fogline.api.digests import is_digest, short_digest
from fogline.api.modeltraining import ModelTraining
from fogline.training.jobs import PROGRESS_ANNOTATION, TrainingRun

TERMINAL_PHASES = ("Succeeded", "Failed")
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class TrainingEvent:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class TrainingObservation:
    """What the controller writes: a status merge patch and the Events to emit."""

    status: dict[str, Any]
    events: tuple[TrainingEvent, ...] = ()
    phase: str = "Pending"


@dataclass(frozen=True)
class _Verdict:
    phase: str
    reason: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _rank_zero(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pods of rank 0 (completion index 0, or the only worker), newest first."""
    chosen = [
        p
        for p in pods
        if (p.get("metadata", {}).get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION, "0")
        == "0"
    ]
    return sorted(chosen, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)


def _termination_message(pod: Mapping[str, Any]) -> str | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated and terminated.get("message"):
            return str(terminated["message"])
    return None


def _summary(pods: Sequence[Mapping[str, Any]], phase: str) -> dict[str, Any] | None:
    """The trainer's JSON summary from the newest rank-0 pod that ended in `phase`."""
    for pod in _rank_zero(pods):
        if (pod.get("status") or {}).get("phase") != phase:
            continue
        message = _termination_message(pod)
        if message is None:
            continue
        try:
            summary = json.loads(message)
        except json.JSONDecodeError:
            return {"phase": "Failed", "reason": "UnreadableResult", "message": message[-300:]}
        return summary if isinstance(summary, dict) else None
    return None


def _unschedulable(pods: Sequence[Mapping[str, Any]]) -> str | None:
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Pending":
            continue
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return str(cond.get("message") or "no node fits the pod")
    return None


def progress_from_pods(
    pods: Sequence[Mapping[str, Any]], started: datetime | None, now: datetime
) -> dict[str, Any] | None:
    """status.progress from the annotation the rank-0 trainer keeps on its pod, with an ETA
    extrapolated from the time the finished epochs took."""
    for pod in _rank_zero(pods):
        raw = (pod.get("metadata", {}).get("annotations") or {}).get(PROGRESS_ANNOTATION)
        if not raw:
            continue
        try:
            report = json.loads(raw)
            epoch, epochs = int(report["epoch"]), int(report["epochs"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        progress: dict[str, Any] = {"epoch": epoch, "epochs": epochs}
        for key in ("loss", "samplesPerSecond", "updatedAt"):
            if report.get(key) is not None:
                progress[key] = report[key]
        metric = report.get("metric")
        if isinstance(metric, dict) and metric.get("value") is not None:
            progress["metric"] = {"name": metric.get("name"), "value": metric["value"]}
        updated = parse_time(report.get("updatedAt")) or now
        if started is not None and epoch > 0 and updated > started:
            per_epoch = (updated - started) / epoch
            progress["eta"] = rfc3339(updated + per_epoch * (epochs - epoch))
        return progress
    return None


def _success(training: ModelTraining, summary: dict[str, Any]) -> _Verdict:
    metrics = {
        k: float(v) for k, v in (summary.get("metrics") or {}).items() if isinstance(v, int | float)
    }
    evaluation = summary.get("evaluation") or {}
    artifact = summary.get("artifact") or {}
    gate = training.spec.evaluation
    value = evaluation.get("value")
    if value is None:
        value = metrics.get(gate.metric)
    digest = artifact.get("digest")
    fields: dict[str, Any] = {"metrics": metrics}
    if not isinstance(value, int | float) or not isinstance(digest, str) or not is_digest(digest):
        return _Verdict("Failed", "ResultMissing",
                        "the trainer finished without a metric and an artifact digest in its "
                        "termination message", fields)  # fmt: skip
    metric = {"name": gate.metric, "value": float(value)}
    if not gate.passes(float(value)):
        return _Verdict(
            "Failed",
            "EvaluationBelowThreshold",
            f"{gate.metric} {float(value):.4f} is below the threshold {gate.threshold}; "
            "the artifact is not offered to EdgeDeployments",
            fields,
        )
    fields["artifact"] = {
        "uri": artifact.get("uri"),
        "digest": digest,
        "format": artifact.get("format", "onnx"),
        "sizeBytes": artifact.get("sizeBytes"),
        "quantized": bool(artifact.get("quantized", False)),
        "metric": metric,
        "generation": training.generation,
    }
    fields["artifactDigestShort"] = short_digest(digest)
    # The table describes the published artifact; a run without compression clears it
    # (None deletes the key in the merge patch).
    compression = summary.get("compression")
    fields["compression"] = compression if isinstance(compression, dict) else None
    return _Verdict(
        "Succeeded",
        "EvaluationPassed",
        f"{gate.metric} {float(value):.4f} reached the threshold {gate.threshold}; "
        f"artifact {short_digest(digest)} published",
        fields,
    )


def _failure(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> _Verdict:
    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget") or {}
    reason = str(failed.get("reason") or "JobFailed")
    message = str(failed.get("message") or "the training Job failed")
    summary = _summary(pods, "Failed") or {}
    trainer_reason = str(summary.get("reason") or "")
    if is_reason(trainer_reason) and trainer_reason != "UnreadableResult":
        # The trainer said why: that is the reason a user can act on. A custom image may
        # write any text there; only a CamelCase reason can become a condition's reason.
        reason = trainer_reason
        message = f"{summary.get('message', '')} ({failed.get('reason', 'JobFailed')})".strip()
    elif summary.get("message"):
        message = f"{message}; the trainer's last words: {summary['message']}"
    return _Verdict("Failed", reason, message)


def _verdict(
    training: ModelTraining, job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]
) -> _Verdict:
    if job is None:
        return _Verdict("Pending", "JobPending", "the training Job is being created")
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        summary = _summary(pods, "Succeeded")
        if summary is None:
            return _Verdict("Failed", "ResultMissing",
                            "the training Job completed but its rank-0 pod left no termination "
                            "message; is the image a Fogline trainer?")  # fmt: skip
        return _success(training, summary)
    if _job_condition(job, "Failed") or _job_condition(job, "FailureTarget"):
        return _failure(job, pods)
    if (job.get("spec") or {}).get("suspend"):
        if training.spec.run_policy.suspend:
            return _Verdict(
                "Suspended", "Suspended", "spec.runPolicy.suspend is true; the Job is paused"
            )
        if training.spec.queue_name:
            return _Verdict("Queued", "Queued",
                            f"waiting for Kueue to admit the Job in queue {training.spec.queue_name!r}")  # fmt: skip
    if message := _unschedulable(pods):
        return _Verdict("Pending", "Unschedulable", message)
    if any((p.get("status") or {}).get("phase") == "Running" for p in pods):
        return _Verdict("Running", "Training", "the trainer is running")
    return _Verdict("Pending", "PodsStarting", "waiting for the training pods to start")


def observe_training(
    training: ModelTraining,
    run: TrainingRun,
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    now: datetime,
) -> TrainingObservation:
    """The status a run deserves now, as a merge patch, and the Events of its transitions."""
    previous = training.status
    verdict = _verdict(training, job, pods)
    generation = training.generation
    conditions: list[dict[str, Any]] = [c.to_dict() for c in previous.conditions or ()]
    phase = verdict.phase

    scheduled = verdict.reason != "Unschedulable"
    if job is not None or not scheduled:
        conditions = set_condition(conditions, "Scheduled", scheduled,
                                   "Scheduled" if scheduled else "Unschedulable",
                                   "training pods were placed" if scheduled else verdict.message,
                                   generation, now)  # fmt: skip
    progressing = phase in ("Pending", "Queued", "Running")
    conditions = set_condition(
        conditions, "Progressing", progressing, verdict.reason, verdict.message, generation, now
    )
    succeeded: bool | str = {"Succeeded": True, "Failed": False}.get(phase, "Unknown")
    conditions = set_condition(conditions, "Succeeded", succeeded if succeeded != "Unknown" else "Unknown",  # type: ignore[arg-type]
                               verdict.reason, verdict.message, generation, now)  # fmt: skip

    job_status = (job or {}).get("status") or {}
    started = parse_time(job_status.get("startTime"))
    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": generation,
        "conditions": conditions,
        "jobName": run.job_name,
        "attempts": int(job_status.get("failed") or 0)
        + (1 if job_status.get("active") or job_status.get("succeeded") else 0),
    }
    if started is not None:
        status["startTime"] = rfc3339(started)
    if phase in TERMINAL_PHASES:
        finished = parse_time(job_status.get("completionTime"))
        failed_cond = _job_condition(job or {}, "Failed")
        if finished is None and failed_cond:
            finished = parse_time(failed_cond.get("lastTransitionTime"))
        status["completionTime"] = rfc3339(finished or now)
    if progress := progress_from_pods(pods, started, now):
        status["progress"] = progress
    status.update(verdict.fields)

    # One Event per verdict; the controller posts it once per change of reason.
    kind = "Warning" if phase == "Failed" or verdict.reason == "Unschedulable" else "Normal"
    events = [TrainingEvent(kind, verdict.reason, verdict.message)]
    return TrainingObservation(status=status, events=tuple(events), phase=phase)


def regate(
    training: ModelTraining, desired: Mapping[str, Any], now: datetime
) -> tuple[dict[str, Any], tuple[TrainingEvent, ...]]:
    """The gate as a pure function of the spec and the artifact's own metric, whether or
    not the run's Job still exists: an artifact that no longer passes spec.evaluation (the
    threshold was raised, the metric changed) is withdrawn from status.artifact, with a
    Warning. EdgeDeployments that follow the training then hold: they stop any rollout
    toward it and keep serving the digest they serve (see the README)."""
    previous = training.status.to_dict()
    artifact = desired["artifact"] if "artifact" in desired else previous.get("artifact")
    if not artifact:
        return dict(desired), ()
    gate = training.spec.evaluation
    metric = artifact.get("metric") or {}
    value = metric.get("value") if metric.get("name") == gate.metric else None
    if isinstance(value, int | float) and gate.passes(float(value)):
        return dict(desired), ()
    measured = (
        f"{gate.metric} {float(value):.4f}"
        if isinstance(value, int | float)
        else f"no {gate.metric}"
    )
    digest = str(artifact.get("digest") or "")
    message = (
        f"artifact {short_digest(digest) if is_digest(digest) else digest!r} has {measured}, "
        f"below spec.evaluation.threshold {gate.threshold}; it is withdrawn from "
        "status.artifact"
    )
    status: dict[str, Any] = {**desired, "artifact": None, "artifactDigestShort": None}
    phase = desired.get("phase", previous.get("phase"))
    if phase == "Succeeded":
        conditions = desired.get("conditions", previous.get("conditions"))
        conditions = set_condition(
            conditions,
            "Succeeded",
            False,
            "EvaluationBelowThreshold",
            message,
            training.generation,
            now,
        )
        status.update(phase="Failed", conditions=conditions, observedGeneration=training.generation)
    return status, (TrainingEvent("Warning", "ArtifactWithdrawn", message),)
