"""EdgeDeployment handlers: every trigger (the CR, its pods and DaemonSets, edge Nodes, the
ModelTraining it follows, the planner's own requeue) kicks one debounced, level-triggered
reconcile that reads kopf's indexes (no lists), asks the pure rollout planner what to do,
applies per-site DaemonSets, replaces the pods the plan names and patches status."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import kopf

from fogline.api.conditions import set_condition
from fogline.api.edgedeployment import EdgeDeployment, validate_edgedeployment
from fogline.api.errors import SpecError
from fogline.controllers.runtime import OperatorState, state_of, utcnow
from fogline.edge.daemonsets import (
    COMPONENT_LABEL,
    EDGE_LABEL,
    MANAGED_BY,
    SITE_LABEL,
    TEMPLATE_HASH_ANNOTATION,
    ModelRef,
    build_site_daemonset,
)
from fogline.edge.fleet import (
    MAINTENANCE_LABEL,
    UPDATE_LOCK_ANNOTATION,
    build_status,
    next_history,
    node_ready,
    observe_sites,
)
from fogline.kube import GROUP, VERSION
from fogline.rollout import RolloutMemory, RolloutPolicy, plan_rollout

logger = logging.getLogger(__name__)
EDGE_SELECTOR = {**MANAGED_BY, COMPONENT_LABEL: "edge-server"}
KIND = "EdgeDeployment"
INDEX_NAMES = ("edges_by_name", "edges_by_training", "edge_nodes", "edge_pods", "edge_daemonsets",
               "trainings_by_name")  # fmt: skip


@kopf.index(GROUP, VERSION, "edgedeployments")
def edges_by_name(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): body}


@kopf.index(GROUP, VERSION, "edgedeployments")
def edges_by_training(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[Any, Any] | None:
    source = (spec.get("model") or {}).get("fromTraining")
    return {(namespace, source): name} if source else None


@kopf.index("", "v1", "nodes")
def edge_nodes(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {name: body}


@kopf.index("", "v1", "pods", labels=EDGE_SELECTOR)
def edge_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, labels.get(EDGE_LABEL)): body}


@kopf.index("apps", "v1", "daemonsets", labels=EDGE_SELECTOR)
def edge_daemonsets(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, labels.get(EDGE_LABEL)): body}


def _remember_indexes(state: OperatorState, kwargs: Mapping[str, Any]) -> None:
    # kopf's indexes are live views; the debounced reconcile runs outside any handler.
    for name in INDEX_NAMES:
        if name in kwargs:
            state.indexes[name] = kwargs[name]


def kick(state: OperatorState, namespace: str, name: str, delay: float = 0.2) -> None:
    async def reconcile(ns: str, nm: str) -> None:
        await reconcile_edge(state, ns, nm)

    state.kick((KIND, namespace, name), reconcile, delay)


async def reconcile_edge(state: OperatorState, namespace: str, name: str) -> None:
    """One reconcile, run by a kick outside any kopf handler: a failure (a conflict, the API
    server away) is logged and retried with back-off rather than lost with its task."""
    async with state.lock(KIND, namespace, name):
        owners = list(state.indexes["edges_by_name"].get((namespace, name), []))
        if not owners:
            return  # deleted: the garbage collector removes the DaemonSets
        body = owners[0]
        if body["metadata"].get("deletionTimestamp"):
            return
        key = (KIND, namespace, name)
        try:
            with state.metrics.reconciling(KIND):
                await _reconcile(state, body, utcnow())
        except Exception:
            failures = state.failures.get(key, 0) + 1
            state.failures[key] = failures
            delay = min(60.0, 2.0**failures)
            logger.exception(
                "reconcile of %s/%s failed; retrying in %.0f s", namespace, name, delay
            )
            kick(state, namespace, name, delay=delay)
        else:
            state.failures.pop(key, None)


async def _reconcile(state: OperatorState, body: kopf.Body, now: datetime) -> None:
    try:
        edge = EdgeDeployment.from_body(body)
        errors = validate_edgedeployment(edge.spec)
    except SpecError as err:
        errors = [err]
    if errors:
        await _hold(state, body, "Failed", "InvalidSpec", "; ".join(str(e) for e in errors), now)
        return
    model = _resolve_model(state, edge)
    if isinstance(model, str):
        await _hold(state, body, "Pending", "ArtifactNotReady", model, now)
        return
    key = (edge.namespace, edge.name)
    # Index bodies are read in place: copying 500 nodes on every reconcile buys nothing.
    pods = list(state.indexes["edge_pods"].get(key, []))
    nodes = [node for bodies in state.indexes["edge_nodes"].values() for node in bodies]
    sites = observe_sites(edge, nodes, pods)
    rollout = edge.spec.rollout
    policy = RolloutPolicy(
        canary_sites=rollout.canary_sites,
        max_unavailable=rollout.max_unavailable,
        pause_seconds=float(rollout.pause_seconds),
        progress_deadline_seconds=float(rollout.progress_deadline_seconds),
        auto_rollback=rollout.auto_rollback,
        paused=rollout.paused,
        disconnected=rollout.disconnected_sites,
        retry=rollout.retry,
    )
    memory = RolloutMemory.from_dict(dict(edge.status.rollout) if edge.status.rollout else None)
    plan = plan_rollout(sites, policy, memory, model.digest, now)

    history_in = list((body.get("status") or {}).get("history") or [])
    uris = {h.get("digest"): h.get("uri") for h in history_in if h.get("digest")}
    uris[model.digest] = model.uri

    await _apply_daemonsets(state, body, edge, plan.site_digests, uris)
    if rollout.replace_in_place:
        await _replace_pods(state, edge, pods, plan.replace_pods_on)

    history = next_history(history_in, plan.memory.stable_digest, uris.get(plan.memory.stable_digest or "") or model.uri,
                           edge.spec.revision_history_limit, now)  # fmt: skip
    status = build_status(edge, plan, model.uri, history, now)
    current = dict(body.get("status") or {})
    if any(current.get(k) != v for k, v in status.items() if k != "rollout") or _rollout_changed(
        current, status
    ):
        await state.kube.patch_status(KIND, edge.namespace, edge.name, status)
    for event in plan.events:
        state.post_event(body, type=event.type, reason=event.reason, message=event.message)
    if plan.requeue_after is not None:
        kick(state, edge.namespace, edge.name, delay=max(0.5, plan.requeue_after))


def _rollout_changed(current: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    return json.dumps(current.get("rollout"), sort_keys=True) != json.dumps(
        status.get("rollout"), sort_keys=True
    )


def _resolve_model(state: OperatorState, edge: EdgeDeployment) -> ModelRef | str:
    """The artifact the spec asks for, or why there is none yet."""
    source = edge.spec.model
    if source.uri and source.digest:
        return ModelRef(uri=source.uri, digest=source.digest)
    trainings = list(
        state.indexes["trainings_by_name"].get((edge.namespace, source.from_training), [])
    )
    if not trainings:
        return (
            f"ModelTraining {source.from_training!r} does not exist in namespace {edge.namespace!r}"
        )
    artifact = (trainings[0].get("status") or {}).get("artifact") or {}
    if not artifact.get("digest") or not artifact.get("uri"):
        return (f"waiting for ModelTraining {source.from_training!r} to publish an artifact that passes "
                "its evaluation gate")  # fmt: skip
    return ModelRef(uri=str(artifact["uri"]), digest=str(artifact["digest"]))


async def _apply_daemonsets(
    state: OperatorState, body: kopf.Body, edge: EdgeDeployment, site_digests: Mapping[str, str],
    uris: Mapping[str | None, str | None],
) -> None:  # fmt: skip
    existing = {
        d["metadata"]["labels"].get(SITE_LABEL): d
        for d in state.indexes["edge_daemonsets"].get((edge.namespace, edge.name), [])
    }
    for site, digest in sorted(site_digests.items()):
        uri = uris.get(digest)
        if not uri:
            continue  # a digest whose location is forgotten cannot be served; the planner waits
        desired = build_site_daemonset(edge, site, ModelRef(uri=uri, digest=digest), state.settings)
        current = existing.get(site[:63])
        wanted_hash = desired["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
        if current is not None:
            annotations = current["metadata"].get("annotations") or {}
            applied = state.applied_generations.get((edge.namespace, desired["metadata"]["name"]))
            generation = current["metadata"].get("generation")
            if annotations.get(TEMPLATE_HASH_ANNOTATION) == wanted_hash and applied in (
                None,
                generation,
            ):
                continue  # as we left it (someone else's edit bumps the generation: drift)
        kopf.adopt(desired, owner=body)
        result = await state.kube.apply(desired)
        state.applied_generations[(edge.namespace, desired["metadata"]["name"])] = result[
            "metadata"
        ]["generation"]
    for site, current in existing.items():
        if site not in {s[:63] for s in site_digests}:
            await state.kube.delete(
                "apps/v1", "DaemonSet", edge.namespace, current["metadata"]["name"]
            )


async def _replace_pods(
    state: OperatorState,
    edge: EdgeDeployment,
    pods: Sequence[Mapping[str, Any]],
    nodes: tuple[str, ...],
) -> None:
    wanted = set(nodes)
    for pod in pods:
        if pod.get("spec", {}).get("nodeName") in wanted and not pod["metadata"].get(
            "deletionTimestamp"
        ):
            await state.kube.delete("v1", "Pod", edge.namespace, pod["metadata"]["name"])


async def _hold(
    state: OperatorState, body: kopf.Body, phase: str, reason: str, message: str, now: datetime
) -> None:
    """A status that says why nothing rolls out (an invalid spec, no artifact yet)."""
    meta = body["metadata"]
    status = dict(body.get("status") or {})
    if status.get("phase") == phase and status.get("message") == message:
        return
    conditions = set_condition(status.get("conditions"), "ModelResolved", False,
                               reason, message, meta.get("generation"), now)  # fmt: skip
    await state.kube.patch_status(KIND, meta["namespace"], meta["name"], {
        "phase": phase, "observedGeneration": meta.get("generation"), "conditions": conditions, "message": message,
    })  # fmt: skip
    state.post_event(
        body, type="Warning" if phase == "Failed" else "Normal", reason=reason, message=message
    )


# -- triggers --------------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, "edgedeployments")
@kopf.on.create(GROUP, VERSION, "edgedeployments")
@kopf.on.update(GROUP, VERSION, "edgedeployments", field="spec")
async def edge_changed(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    state = state_of(memo)
    _remember_indexes(state, kwargs)
    kick(state, namespace or "", name, delay=0)


@kopf.on.event("", "v1", "pods", labels=EDGE_SELECTOR)
@kopf.on.event("apps", "v1", "daemonsets", labels=EDGE_SELECTOR)
async def edge_child_changed(
    namespace: str | None, labels: Mapping[str, str], memo: Any, **kwargs: Any
) -> None:
    state = state_of(memo)
    _remember_indexes(state, kwargs)
    if owner := labels.get(EDGE_LABEL):
        kick(state, namespace or "", owner)


def _node_essence(body: Mapping[str, Any], type_: str | None) -> str:
    """What of a node matters to rollouts; heartbeats that change nothing else are ignored."""
    if type_ == "DELETED":
        return "deleted"
    meta = body.get("metadata") or {}
    lock = UPDATE_LOCK_ANNOTATION in (meta.get("annotations") or {})
    labels = meta.get("labels") or {}
    return json.dumps(
        [labels, lock, node_ready(body), labels.get(MAINTENANCE_LABEL)], sort_keys=True
    )


@kopf.on.event("", "v1", "nodes")
async def node_changed(
    name: str, body: kopf.Body, type: str | None, memo: Any, **kwargs: Any
) -> None:
    state = state_of(memo)
    _remember_indexes(state, kwargs)
    essence = _node_essence(body, type)
    if state.node_essence.get(name) == essence:
        return
    state.node_essence[name] = essence
    edges: kopf.Index[Any, Any] = kwargs["edges_by_name"]
    for namespace, edge_name in list(edges.keys()):
        kick(state, namespace, edge_name, delay=0.5)


@kopf.on.event(GROUP, VERSION, "modeltrainings")
async def training_published(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    state = state_of(memo)
    _remember_indexes(state, kwargs)
    followers: kopf.Index[Any, Any] = kwargs["edges_by_training"]
    for edge_name in followers.get((namespace, name), []):
        kick(state, namespace or "", edge_name)
