"""ModelTraining handlers: a CR becomes a training Job (and its Service and trainer RBAC);
the Job and its pods become the CR's status. Every trigger (the CR, its Job, its pods, a
restart) runs the same level-triggered reconcile. No timers: they would make kopf put a
finalizer on every CR, and a CR must stay deletable while the operator is down."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from fogline.api.errors import SpecError
from fogline.api.modeltraining import ModelTraining, validate_modeltraining
from fogline.controllers.runtime import OperatorState, state_of, utcnow
from fogline.kube import GROUP, VERSION
from fogline.training.jobs import (
    COMPONENT_LABEL,
    MANAGED_BY,
    TRAINING_LABEL,
    build_rendezvous_service,
    build_trainer_rbac,
    build_training_job,
    plan_run,
)
from fogline.training.observe import TERMINAL_PHASES, observe_training

TRAINER_SELECTOR = {**MANAGED_BY, COMPONENT_LABEL: "trainer"}


@kopf.index(GROUP, VERSION, "modeltrainings")
def trainings_by_name(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, name): body}


@kopf.index("batch", "v1", "jobs", labels=TRAINER_SELECTOR)
def training_jobs(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, labels[TRAINING_LABEL]): body}


@kopf.index("", "v1", "pods", labels=TRAINER_SELECTOR)
def training_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, labels[TRAINING_LABEL]): body}


async def reconcile_training(
    body: kopf.Body,
    state: OperatorState,
    jobs: kopf.Index[Any, Any],
    pods: kopf.Index[Any, Any],
) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if body["metadata"].get("deletionTimestamp"):
        return  # the garbage collector removes the children; nothing to reconcile
    async with state.lock("ModelTraining", namespace, name):
        with state.metrics.reconciling("ModelTraining"):
            await _reconcile(body, state, jobs, pods)


async def _reconcile(
    body: kopf.Body,
    state: OperatorState,
    jobs: kopf.Index[Any, Any],
    pods: kopf.Index[Any, Any],
) -> None:
    now = utcnow()
    try:
        training = ModelTraining.from_body(body)
        errors = validate_modeltraining(training.spec)
    except SpecError as err:
        errors = [err]
    if errors:
        await _report_invalid(body, state, errors)
        return
    run = plan_run(training)
    key = (training.namespace, training.name)
    own_jobs = {j["metadata"]["name"]: j for j in jobs.get(key, [])}
    job = own_jobs.get(run.job_name)

    # Runs of an older spec are superseded: stop them (their artifacts stay where they are).
    for old in own_jobs:
        if old != run.job_name:
            await state.kube.delete("batch/v1", "Job", training.namespace, old)
            state.post_event(
                body,
                type="Normal",
                reason="RunSuperseded",
                message=f"spec changed; Job {old} deleted",
            )

    finished = training.status.job_name == run.job_name and training.status.phase in TERMINAL_PHASES
    if job is None and not finished:
        await _create_run(body, training, state)
        return  # the Job's own event brings us back with it in the index
    if job is not None:
        await _sync_suspend(training, job, state)
    if job is None:
        return  # finished and cleaned up by ttlSecondsAfterFinished: the status stands
    run_pods = [
        p for p in pods.get(key, []) if p["metadata"]["labels"].get("job-name") == run.job_name
    ]
    observation = observe_training(training, run, job, run_pods, now)
    current = dict(body.get("status") or {})
    if any(current.get(k) != v for k, v in observation.status.items()):
        await state.kube.patch_status(
            "ModelTraining", training.namespace, training.name, observation.status
        )
    for event in observation.events:
        if state.should_announce("ModelTraining", training.namespace, training.name, event.reason):
            state.post_event(body, type=event.type, reason=event.reason, message=event.message)


async def _create_run(body: kopf.Body, training: ModelTraining, state: OperatorState) -> None:
    settings = state.settings
    run = plan_run(training)
    # Many trainings can arrive in one namespace at once: one of them grants the RBAC,
    # the others wait for it instead of applying the same three objects again.
    async with state.lock("TrainerRBAC", training.namespace, ""):
        if training.namespace not in state.rbac_ready:
            for obj in build_trainer_rbac(training.namespace, settings):
                await state.kube.apply(obj)
            state.rbac_ready.add(training.namespace)
    if training.spec.distributed.is_distributed:
        service = build_rendezvous_service(training, run)
        kopf.adopt(service, owner=body)
        await state.kube.apply(service)
    job = build_training_job(training, run, settings)
    kopf.adopt(job, owner=body)
    await state.kube.apply(job)
    phase = (
        "Queued"
        if training.spec.queue_name
        else ("Suspended" if training.spec.run_policy.suspend else "Pending")
    )
    status = {"phase": phase, "observedGeneration": training.generation, "jobName": run.job_name}
    await state.kube.patch_status("ModelTraining", training.namespace, training.name, status)
    where = f" in queue {training.spec.queue_name!r}" if training.spec.queue_name else ""
    state.should_announce("ModelTraining", training.namespace, training.name, "JobCreated")
    state.post_event(
        body, type="Normal", reason="JobCreated", message=f"created Job {run.job_name}{where}"
    )


async def _sync_suspend(
    training: ModelTraining, job: Mapping[str, Any], state: OperatorState
) -> None:
    """spec.runPolicy.suspend pauses and resumes the run. A queued Job's suspension belongs
    to Kueue, so it is only ever set here, never cleared."""
    wanted = training.spec.run_policy.suspend
    actual = bool((job.get("spec") or {}).get("suspend"))
    if wanted == actual or (actual and training.spec.queue_name):
        return
    await state.kube.patch("batch/v1", "Job", training.namespace, job["metadata"]["name"],
                           {"spec": {"suspend": wanted}})  # fmt: skip


async def _report_invalid(body: kopf.Body, state: OperatorState, errors: list[SpecError]) -> None:
    message = "; ".join(str(e) for e in errors)
    meta = body["metadata"]
    status = dict(body.get("status") or {})
    if status.get("phase") == "Failed" and any(
        c.get("reason") == "InvalidSpec" and c.get("message") == message
        for c in status.get("conditions") or []
    ):
        return
    from fogline.api.conditions import set_condition

    conditions = set_condition(status.get("conditions"), "Succeeded", False, "InvalidSpec", message,
                               meta.get("generation"), utcnow())  # fmt: skip
    await state.kube.patch_status("ModelTraining", meta["namespace"], meta["name"], {
        "phase": "Failed", "observedGeneration": meta.get("generation"), "conditions": conditions,
    })  # fmt: skip
    state.post_event(body, type="Warning", reason="InvalidSpec", message=message)


# -- triggers --------------------------------------------------------------------------------


def _indexes(kwargs: Mapping[str, Any]) -> tuple[kopf.Index[Any, Any], kopf.Index[Any, Any]]:
    # kopf passes each index as a keyword named after its function.
    return kwargs["training_jobs"], kwargs["training_pods"]


@kopf.on.resume(GROUP, VERSION, "modeltrainings")
@kopf.on.create(GROUP, VERSION, "modeltrainings")
@kopf.on.update(GROUP, VERSION, "modeltrainings", field="spec")
async def training_changed(body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    await reconcile_training(body, state_of(memo), *_indexes(kwargs))


@kopf.on.event("batch", "v1", "jobs", labels=TRAINER_SELECTOR)
@kopf.on.event("", "v1", "pods", labels=TRAINER_SELECTOR)
async def training_child_changed(
    namespace: str | None, labels: Mapping[str, str], memo: Any, **kwargs: Any
) -> None:
    owners: kopf.Index[Any, Any] = kwargs["trainings_by_name"]
    for owner in owners.get((namespace, labels.get(TRAINING_LABEL, "")), []):
        await reconcile_training(owner, state_of(memo), *_indexes(kwargs))
