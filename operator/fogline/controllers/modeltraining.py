"""ModelTraining handlers: a CR becomes a training Job (and its Service and trainer RBAC);
the Job and its pods become the CR's status. Every trigger (the CR, its Job, its pods, a
restart) puts the training's key in the work queue, which runs the same level-triggered
reconcile and retries it when it fails. No timers: they would make kopf put a
finalizer on every CR, and a CR must stay deletable while the operator is down."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

from fogline.api.crds import GROUP, VERSION
from fogline.api.errors import SpecError
from fogline.api.modeltraining import ModelTraining, validate_modeltraining
from fogline.controllers.runtime import OperatorState, spec_may_have_changed, state_of, utcnow
from fogline.training.jobs import (
    COMPONENT_LABEL,
    MANAGED_BY,
    TRAINING_LABEL,
    TeacherArtifact,
    build_rendezvous_service,
    build_trainer_rbac,
    build_training_job,
    plan_run,
    teacher_of,
)
from fogline.training.observe import TERMINAL_PHASES, observe_training, progress_only, regate

TRAINER_SELECTOR = {**MANAGED_BY, COMPONENT_LABEL: "trainer"}


@kopf.index(GROUP, VERSION, "modeltrainings")
def trainings_by_name(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, name): body}


@kopf.index(GROUP, VERSION, "modeltrainings")
def students_by_teacher(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[Any, Any] | None:
    teacher = ((spec.get("distillation") or {}).get("teacher") or {}).get("fromTraining")
    return {(namespace, teacher): name} if teacher else None


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


KIND = "ModelTraining"
# Keys of one run: a new run (or a Job that is gone) must not show the last run's times.
RUN_KEYS = ("startTime", "completionTime", "progress")


async def reconcile_training(state: OperatorState, namespace: str, name: str) -> float | None:
    """One reconcile, run from the work queue: a failure (a conflict, the API server away,
    a status patch refused) raises, and the queue retries it with back-off."""
    key = (KIND, namespace, name)
    owners = list(state.indexes["trainings_by_name"].get((namespace, name), []))
    if not owners:
        # Deleted: the garbage collector removes the children; we forget the object.
        used = any(ns == namespace for ns, _ in state.indexes["trainings_by_name"])
        state.training.forget(key, namespace_still_used=used)
        state.forget(key)
        return None
    body = owners[0]
    if body["metadata"].get("deletionTimestamp"):
        return None
    # The index's body, with the status our last patch left while the body predates it.
    body = kopf.Body(cast(kopf.RawBody, dict(state.status.view(key, body))))
    return await _reconcile(
        body, state, state.indexes["training_jobs"], state.indexes["training_pods"]
    )


async def _reconcile(
    body: kopf.Body,
    state: OperatorState,
    jobs: kopf.Index[Any, Any],
    pods: kopf.Index[Any, Any],
) -> float | None:
    """Returns the seconds until a held status change is due."""
    try:
        training = ModelTraining.from_body(body)
        errors = validate_modeltraining(training.spec)
    except SpecError as err:
        errors = [err]
    if errors:
        await _report_invalid(body, state, errors)
        return None
    run = plan_run(training)
    key = (training.namespace, training.name)
    object_key = (KIND, training.namespace, training.name)
    own_jobs = {j["metadata"]["name"]: j for j in jobs.get(key, [])}
    job = own_jobs.get(run.job_name)

    # Runs of an older spec are superseded: stop them (their artifacts stay where they are).
    for old, old_job in own_jobs.items():
        if old != run.job_name and not old_job["metadata"].get("deletionTimestamp"):
            await state.kube.delete("batch/v1", "Job", training.namespace, old)
            state.announcer.announce(
                object_key, body, "Normal", "RunSuperseded", f"spec changed; Job {old} deleted"
            )

    finished = training.status.job_name == run.job_name and training.status.phase in TERMINAL_PHASES
    created: str | None = None  # the new run's Event, when this reconcile starts one
    if job is None and not finished:
        teacher = _teacher(training, state.indexes["trainings_by_name"])
        if training.spec.distillation is not None and teacher is None:
            await _wait_for_teacher(body, training, state)
            return None  # the teacher's status change brings us back
        # The new Job as the API server stored it is observed like any other, so the status
        # written now is the one its own watch event would compute: that event writes and
        # says nothing again.
        job, created = await _create_run(body, training, state, teacher)
    elif job is not None:
        if training.status.phase not in TERMINAL_PHASES:
            # A run under way needs its trainer identity: pods it creates from now on (a
            # retry, another worker) run as it. A no-op unless it was deleted.
            await _ensure_trainer_rbac(state, training.namespace)
        await _sync_suspend(training, job, state)
    if job is None:
        # Finished and cleaned up by ttlSecondsAfterFinished: the run's status stands,
        # but the gate is the spec's, now: a raised threshold withdraws the artifact.
        desired, events = regate(training, {}, utcnow())
        removable: tuple[str, ...] = ()
    else:
        run_pods = [
            p for p in pods.get(key, []) if p["metadata"]["labels"].get("job-name") == run.job_name
        ]
        # `now` is read after the API calls above: they may have waited out an outage.
        now = utcnow()
        observation = observe_training(training, run, job, run_pods, now)
        desired, withdrawn = regate(training, observation.status, now)
        removable, events = RUN_KEYS, (*observation.events, *withdrawn)
    held = await state.status.write(
        state.kube, object_key, body, desired, removable, may_wait=progress_only
    )
    if created is not None:
        # One Event for the new run: it names the Job and says the run's first state.
        verdict = events[0]
        state.announcer.announce(
            object_key,
            body,
            "Normal",
            "JobCreated",
            f"{created}; {verdict.message}",
            covers=(verdict.reason, verdict.message),
        )
    for event in events:
        # A pod's ignored report is said once per pod, apart from the training's own news.
        about = ("Pod", training.namespace, event.pod) if event.pod else object_key
        state.announcer.announce(
            about, body, event.type, event.reason, event.message, once_per_reason=bool(event.pod)
        )
    return held


def _teacher(training: ModelTraining, trainings: kopf.Index[Any, Any]) -> TeacherArtifact | None:
    """The distillation teacher: the spec's uri and digest, or the newest gated artifact of
    the teacher ModelTraining, as the index holds it (None while it has none)."""
    distillation = training.spec.distillation
    if distillation is None or distillation.teacher.from_training is None:
        return teacher_of(training.spec, None)
    found = list(trainings.get((training.namespace, distillation.teacher.from_training), []))
    artifact = ((found[0] if found else {}).get("status") or {}).get("artifact") or {}
    if not artifact.get("uri") or not artifact.get("digest"):
        return None
    return TeacherArtifact(str(artifact["uri"]), str(artifact["digest"]))


async def _wait_for_teacher(body: kopf.Body, training: ModelTraining, state: OperatorState) -> None:
    from fogline.api.conditions import set_condition

    assert training.spec.distillation is not None
    name = training.spec.distillation.teacher.from_training
    message = (
        f"waiting for ModelTraining {name!r}, the distillation teacher, to publish an "
        "artifact that passes its evaluation gate"
    )
    current = dict(body.get("status") or {})
    waiting = current.get("phase") == "Pending" and any(
        c.get("reason") == "TeacherNotReady" and c.get("message") == message
        for c in current.get("conditions") or []
    )
    if not waiting:
        conditions = set_condition(
            current.get("conditions"),
            "Progressing",
            True,
            "TeacherNotReady",
            message,
            training.generation,
            utcnow(),
        )
        desired = {
            "phase": "Pending",
            "observedGeneration": training.generation,
            "conditions": conditions,
        }
        await state.status.write(
            state.kube, (KIND, training.namespace, training.name), body, desired
        )
    state.announcer.announce(
        (KIND, training.namespace, training.name), body, "Normal", "TeacherNotReady", message
    )


async def _create_run(
    body: kopf.Body,
    training: ModelTraining,
    state: OperatorState,
    teacher: TeacherArtifact | None = None,
) -> tuple[dict[str, Any], str]:
    """Start the spec's run: the trainer's RBAC, the rendezvous Service of a distributed
    run, the Job. Returns the Job as stored and what the creation Event says."""
    run = plan_run(training)
    await _ensure_trainer_rbac(state, training.namespace)
    if training.spec.distributed.is_distributed:
        service = build_rendezvous_service(training, run)
        kopf.adopt(service, owner=body)
        await state.kube.apply(service)
    job = build_training_job(training, run, state.settings, teacher)
    kopf.adopt(job, owner=body)
    stored = await state.kube.apply(job)
    where = f" in queue {training.spec.queue_name!r}" if training.spec.queue_name else ""
    return stored, f"created Job {run.job_name}{where}"


async def _ensure_trainer_rbac(state: OperatorState, namespace: str) -> None:
    """Apply the trainer's ServiceAccount, Role and RoleBinding once per namespace. Many
    trainings can arrive in one namespace at once: one of them grants the RBAC, the others
    wait for it instead of applying the same three objects again. The watch on those
    objects forgets the namespace when one of them is deleted (`trainer_rbac_deleted`)."""
    async with state.training.rbac_lock:
        if namespace not in state.training.rbac_ready:
            for obj in build_trainer_rbac(namespace, state.settings):
                await state.kube.apply(obj)
            state.training.rbac_ready.add(namespace)


async def _sync_suspend(
    training: ModelTraining, job: Mapping[str, Any], state: OperatorState
) -> None:
    """spec.runPolicy.suspend pauses and resumes the run. A queued Job's suspension belongs
    to Kueue, so it is only ever set here, never cleared."""
    wanted = training.spec.run_policy.suspend
    actual = bool((job.get("spec") or {}).get("suspend"))
    if wanted == actual or (actual and training.spec.queue_name):
        return
    await state.kube.patch(
        "batch/v1",
        "Job",
        training.namespace,
        job["metadata"]["name"],
        {"spec": {"suspend": wanted}},
    )


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

    conditions = set_condition(
        status.get("conditions"),
        "Succeeded",
        False,
        "InvalidSpec",
        message,
        meta.get("generation"),
        utcnow(),
    )
    key = (KIND, meta["namespace"], meta["name"])
    desired = {
        "phase": "Failed",
        "observedGeneration": meta.get("generation"),
        "conditions": conditions,
    }
    await state.status.write(state.kube, key, body, desired)
    state.announcer.announce(key, body, "Warning", "InvalidSpec", message)


# -- triggers --------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "modeltrainings")
async def training_event(
    namespace: str | None, name: str, type: str | None, body: kopf.Body, memo: Any, **kwargs: Any
) -> None:
    """A training is reconciled when it is listed, created, deleted (so that its memory is
    dropped) or its spec changes; its own status writes change nothing it reads. The
    students of a teacher are reconciled when it changes, so that they start once it has
    published an artifact."""
    state = state_of(memo)
    state.remember_indexes(kwargs)
    if spec_may_have_changed(type, body):
        state.enqueue(KIND, namespace or "", name, delay=0)
    students: kopf.Index[Any, Any] = kwargs["students_by_teacher"]
    for student in students.get((namespace, name), []):
        state.enqueue(KIND, namespace or "", student)


@kopf.on.event("batch", "v1", "jobs", labels=TRAINER_SELECTOR)
@kopf.on.event("", "v1", "pods", labels=TRAINER_SELECTOR)
async def training_child_changed(
    namespace: str | None, labels: Mapping[str, str], memo: Any, **kwargs: Any
) -> None:
    state = state_of(memo)
    state.remember_indexes(kwargs)
    owners: kopf.Index[Any, Any] = kwargs["trainings_by_name"]
    owner = labels.get(TRAINING_LABEL, "")
    if (namespace, owner) in owners:
        state.enqueue(KIND, namespace or "", owner)


@kopf.on.event("", "v1", "serviceaccounts", labels=MANAGED_BY)
@kopf.on.event("rbac.authorization.k8s.io", "v1", "roles", labels=MANAGED_BY)
@kopf.on.event("rbac.authorization.k8s.io", "v1", "rolebindings", labels=MANAGED_BY)
async def trainer_rbac_deleted(
    namespace: str | None, name: str, type: str | None, memo: Any, **kwargs: Any
) -> None:
    """Someone deleted part of a namespace's trainer identity: forget that it is in place
    and reconcile the namespace's trainings, which apply it again (a run under way at
    once, a new run when it starts). The watch is filtered on the server to our objects."""
    state = state_of(memo)
    state.remember_indexes(kwargs)
    if type != "DELETED" or name != state.settings.trainer_service_account:
        return
    namespace = namespace or ""
    state.training.rbac_ready.discard(namespace)
    trainings: kopf.Index[Any, Any] = kwargs["trainings_by_name"]
    for owner_namespace, owner in list(trainings.keys()):
        if owner_namespace == namespace:
            state.enqueue(KIND, namespace, owner)
