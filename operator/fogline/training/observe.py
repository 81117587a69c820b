"""The observer of a training run: from the Job and its pods as the API shows them to the
ModelTraining's status, the gate's verdict and the Events a transition deserves. Pure:
`now` is passed in, nothing is read or written here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fogline.api.conditions import ConditionStatus, is_reason, set_condition
from fogline.api.digests import is_digest, short_digest
from fogline.api.labels import PROGRESS_ANNOTATION
from fogline.api.modeltraining import ModelTraining
from fogline.api.timestamps import parse_time, rfc3339
from fogline.training import reports
from fogline.training.jobs import TrainingRun

TERMINAL_PHASES = ("Succeeded", "Failed")
# What of a run's status moves without a transition: the Job's start and attempt count as
# the Job controller fills them in, and the trainer's per-epoch report. A patch of these
# alone may wait for the next transition (or a few seconds).
PROGRESS_KEYS = frozenset({"startTime", "attempts", "progress"})
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
REPORT_IGNORED = "PodReportIgnored"
# The only artifact format an edge server loads.
DEPLOYABLE_FORMAT = "onnx"


@dataclass(frozen=True)
class TrainingEvent:
    type: str  # Normal or Warning
    reason: str
    message: str
    # Set for an Event about one pod's report: announced once per pod, not once per change
    # of the training's reason.
    pod: str | None = None


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
    ignored: tuple[TrainingEvent, ...] = ()


@dataclass(frozen=True)
class _Summary:
    """A rank-0 pod's termination message: the strict-JSON object, or an excerpt of text
    that is not one (a custom image's traceback), and what was wrong with it."""

    pod: str
    document: Mapping[str, Any] | None
    excerpt: str | None = None
    problems: tuple[str, ...] = ()


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


def _pod_name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name") or "(unnamed)")


def _ignored(pod: str, problems: Sequence[str]) -> tuple[TrainingEvent, ...]:
    if not problems:
        return ()
    listed = "; ".join(problems[:4]) + ("; ..." if len(problems) > 4 else "")
    message = f"pod {pod}: {listed}; ignored what did not pass (the rest of the status stands)"
    return (TrainingEvent("Warning", REPORT_IGNORED, message, pod=pod),)


def _summary(pods: Sequence[Mapping[str, Any]], phase: str) -> _Summary | None:
    """The trainer's JSON summary from the newest rank-0 pod that ended in `phase`."""
    for pod in _rank_zero(pods):
        if (pod.get("status") or {}).get("phase") != phase:
            continue
        message = _termination_message(pod)
        if message is None:
            continue
        name = _pod_name(pod)
        document, why = reports.strict_json(message, reports.MAX_MESSAGE_BYTES)
        if why is None and isinstance(document, Mapping):
            return _Summary(name, document)
        excerpt = reports.text(message[-300:], 300)
        # Plain text is what a custom image's crash leaves; only a broken JSON report (or a
        # huge one) is worth a Warning of its own.
        looks_like_report = message.lstrip().startswith("{") or (why is not None and "bytes" in why)
        problem = f"termination message {why or 'is not a JSON object'}"
        return _Summary(name, None, excerpt, (problem,) if looks_like_report else ())
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
    return _progress(pods, started, now)[0]


def _progress(
    pods: Sequence[Mapping[str, Any]], started: datetime | None, now: datetime
) -> tuple[dict[str, Any] | None, tuple[TrainingEvent, ...]]:
    ignored: list[TrainingEvent] = []
    for pod in _rank_zero(pods):
        raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(PROGRESS_ANNOTATION)
        if not raw:
            continue
        parsed = reports.parse_progress(str(raw))
        ignored += _ignored(_pod_name(pod), parsed.problems)
        if parsed.fields is None:
            continue  # an older pod's report, if any, is still worth showing
        progress = parsed.fields
        epoch, epochs = progress["epoch"], progress["epochs"]
        updated = reports.timestamp(progress.get("updatedAt")) or now
        if started is not None and epoch > 0 and updated > started:
            per_epoch = (updated - started) / epoch
            eta: datetime | None
            try:
                eta = updated + per_epoch * (epochs - epoch)
            except OverflowError:  # an estimate past year 9999 is none
                eta = None
            if eta is not None and eta <= reports.LATEST:
                progress["eta"] = rfc3339(eta)
        return progress, tuple(ignored)
    return None, tuple(ignored)


def _success(training: ModelTraining, summary: _Summary) -> _Verdict:
    if summary.document is None:
        return _Verdict(
            "Failed",
            "ResultMissing",
            "the training Job completed but the termination message of pod "
            f"{summary.pod} is not the trainer's JSON summary: {summary.excerpt}",
            ignored=_ignored(summary.pod, summary.problems),
        )
    parsed = reports.parse_success(summary.document)
    found = parsed.fields or {}
    ignored = _ignored(summary.pod, parsed.problems)
    metrics: dict[str, float] = found.get("metrics", {})
    gate = training.spec.evaluation
    value = found.get("value")
    if value is None:
        value = reports.finite_number(metrics.get(gate.metric), 0.0, 1.0)
    digest = found.get("digest")
    fields: dict[str, Any] = {"metrics": metrics}
    if value is None or digest is None:
        return _Verdict(
            "Failed",
            "ResultMissing",
            "the trainer finished without a metric and an artifact digest in its "
            "termination message",
            fields,
            ignored,
        )
    metric = {"name": gate.metric, "value": value}
    record = {
        "uri": found.get("uri"),
        "digest": digest,
        "format": DEPLOYABLE_FORMAT,
        "sizeBytes": found.get("sizeBytes"),
        "quantized": found.get("quantized", False),
        "metric": metric,
        "generation": training.generation,
    }
    record = {k: v for k, v in record.items() if v is not None}
    if found.get("format") == DEPLOYABLE_FORMAT:
        # Kept whether it passes or not: the gate is judged again from it (regate).
        fields["lastRun"] = {"artifact": record}
    if not gate.passes(value):
        return _Verdict(
            "Failed",
            "EvaluationBelowThreshold",
            f"{gate.metric} {value:.4f} is below the threshold {gate.threshold}; "
            "the artifact is not offered to EdgeDeployments",
            fields,
            ignored,
        )
    if found.get("format") != DEPLOYABLE_FORMAT:
        return _Verdict(
            "Failed",
            "ArtifactNotDeployable",
            f"the served artifact is {found.get('format')}, and edge servers load ONNX only; "
            "add onnx to spec.export.formats",
            fields,
            ignored,
        )
    fields["artifact"] = dict(record)
    fields["artifactDigestShort"] = short_digest(digest)
    # The table describes the published artifact; a run without compression clears it
    # (None deletes the key in the merge patch).
    compression = (summary.document or {}).get("compression")
    fields["compression"] = compression if isinstance(compression, dict) else None
    return _Verdict(
        "Succeeded",
        "EvaluationPassed",
        f"{gate.metric} {value:.4f} reached the threshold {gate.threshold}; "
        f"artifact {short_digest(digest)} published",
        fields,
        ignored,
    )


def _failure(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> _Verdict:
    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget") or {}
    job_reason = str(failed.get("reason") or "JobFailed")
    reason = job_reason if is_reason(job_reason) else "JobFailed"
    message = str(failed.get("message") or "the training Job failed")
    summary = _summary(pods, "Failed")
    if summary is None:
        return _Verdict("Failed", reason, message)
    said: dict[str, Any] = {}
    if summary.document is not None:
        said = reports.parse_failure(summary.document).fields or {}
    words = said.get("message") or summary.excerpt
    ignored = _ignored(summary.pod, summary.problems)
    if "reason" in said:
        # The trainer said why: that is the reason a user can act on. A custom image may
        # write any text there; only a CamelCase reason can become a condition's reason.
        return _Verdict(
            "Failed", said["reason"], f"{words or ''} ({job_reason})".strip(), ignored=ignored
        )
    if words:
        message = f"{message}; the trainer's last words: {words}"
    return _Verdict("Failed", reason, message, ignored=ignored)


def _verdict(
    training: ModelTraining, job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]
) -> _Verdict:
    if job is None:
        return _Verdict("Pending", "JobPending", "the training Job is being created")
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        summary = _summary(pods, "Succeeded")
        if summary is None:
            return _Verdict(
                "Failed",
                "ResultMissing",
                "the training Job completed but its rank-0 pod left no termination "
                "message; is the image a Fogline trainer?",
            )
        return _success(training, summary)
    if _job_condition(job, "Failed") or _job_condition(job, "FailureTarget"):
        return _failure(job, pods)
    if (job.get("spec") or {}).get("suspend"):
        if training.spec.run_policy.suspend:
            return _Verdict(
                "Suspended", "Suspended", "spec.runPolicy.suspend is true; the Job is paused"
            )
        if training.spec.queue_name:
            return _Verdict(
                "Queued",
                "Queued",
                f"waiting for Kueue to admit the Job in queue {training.spec.queue_name!r}",
            )
    if message := _unschedulable(pods):
        return _Verdict("Pending", "Unschedulable", message)
    if any((p.get("status") or {}).get("phase") == "Running" for p in pods):
        return _Verdict("Running", "Training", "the trainer is running")
    return _Verdict("Pending", "PodsStarting", "waiting for the training pods to start")


def progress_only(patch: Mapping[str, Any]) -> bool:
    """Whether a status patch changes only PROGRESS_KEYS."""
    return bool(patch) and patch.keys() <= PROGRESS_KEYS


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
        conditions = set_condition(
            conditions,
            "Scheduled",
            scheduled,
            "Scheduled" if scheduled else "Unschedulable",
            "training pods were placed" if scheduled else verdict.message,
            generation,
            now,
        )
    progressing = phase in ("Pending", "Queued", "Running")
    conditions = set_condition(
        conditions, "Progressing", progressing, verdict.reason, verdict.message, generation, now
    )
    succeeded: ConditionStatus | bool = {"Succeeded": True, "Failed": False}.get(phase, "Unknown")
    conditions = set_condition(
        conditions,
        "Succeeded",
        succeeded,
        verdict.reason,
        verdict.message,
        generation,
        now,
    )

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
    progress, ignored = _progress(pods, started, now)
    if progress:
        status["progress"] = progress
    status.update(verdict.fields)
    if "lastRun" in status:
        status["lastRun"] = {"jobName": run.job_name, **status["lastRun"]}

    # One Event per verdict; the controller posts it once per change of reason. A pod's
    # report that was ignored gets one Warning of its own, once per pod.
    kind = "Warning" if phase == "Failed" or verdict.reason == "Unschedulable" else "Normal"
    events = [TrainingEvent(kind, verdict.reason, verdict.message)]
    seen: set[str | None] = set()
    for event in (*ignored, *verdict.ignored):
        if event.pod not in seen:
            seen.add(event.pod)
            events.append(event)
    return TrainingObservation(status=status, events=tuple(events), phase=phase)


def _passing_value(training: ModelTraining, artifact: Mapping[str, Any]) -> float | None:
    """The artifact's metric when it passes spec.evaluation now, else None."""
    gate = training.spec.evaluation
    metric = artifact.get("metric") or {}
    value = metric.get("value") if metric.get("name") == gate.metric else None
    if isinstance(value, int | float) and gate.passes(float(value)):
        return float(value)
    return None


def regate(
    training: ModelTraining, desired: Mapping[str, Any], now: datetime
) -> tuple[dict[str, Any], tuple[TrainingEvent, ...]]:
    """The gate as a pure function of the spec and the last run's result (status.lastRun),
    whether or not the run's Job still exists.

    - The current run finished with an artifact that passes spec.evaluation now (the
      threshold was lowered again): its artifact is published in status.artifact and the
      run is Succeeded.
    - status.artifact no longer passes spec.evaluation (the threshold was raised, the metric
      changed): it is withdrawn, with a Warning.

    EdgeDeployments that follow the training hold while there is no artifact (they stop any
    rollout toward it and keep serving the digest they serve) and roll out the artifact
    once it is published again (see the README and docs/rollout.md)."""
    previous = training.status.to_dict()
    status: dict[str, Any] = dict(desired)
    events: list[TrainingEvent] = []
    current = {**previous, **desired}
    gate = training.spec.evaluation
    last = current.get("lastRun") or {}
    last_artifact = last.get("artifact") or {}
    published = current.get("artifact") or {}
    value = _passing_value(training, last_artifact) if last_artifact else None
    if (
        value is not None
        and last.get("jobName") == current.get("jobName")
        and current.get("phase") in TERMINAL_PHASES
        and published.get("digest") != last_artifact.get("digest")
    ):
        digest = str(last_artifact.get("digest") or "")
        message = (
            f"{gate.metric} {value:.4f} reached the threshold {gate.threshold}; "
            f"artifact {short_digest(digest)} published"
        )
        conditions = set_condition(
            current.get("conditions"),
            "Succeeded",
            True,
            "EvaluationPassed",
            message,
            training.generation,
            now,
        )
        status.update(
            phase="Succeeded",
            conditions=conditions,
            observedGeneration=training.generation,
            artifact=dict(last_artifact),
            artifactDigestShort=short_digest(digest),
            # The table of a run with compression describes its own artifact; a run whose
            # gate can move without retraining has none.
            compression=None,
        )
        return status, (TrainingEvent("Normal", "EvaluationPassed", message),)
    if not published or _passing_value(training, published) is not None:
        return status, tuple(events)
    metric = published.get("metric") or {}
    measured = metric.get("value") if metric.get("name") == gate.metric else None
    said = (
        f"{gate.metric} {float(measured):.4f}"
        if isinstance(measured, int | float)
        else f"no {gate.metric}"
    )
    digest = str(published.get("digest") or "")
    message = (
        f"artifact {short_digest(digest) if is_digest(digest) else digest!r} has {said}, "
        f"below spec.evaluation.threshold {gate.threshold}; it is withdrawn from "
        "status.artifact"
    )
    status.update(artifact=None, artifactDigestShort=None)
    if current.get("phase") == "Succeeded":
        conditions = set_condition(
            current.get("conditions"),
            "Succeeded",
            False,
            "EvaluationBelowThreshold",
            message,
            training.generation,
            now,
        )
        status.update(phase="Failed", conditions=conditions, observedGeneration=training.generation)
    return status, (TrainingEvent("Warning", "ArtifactWithdrawn", message),)
