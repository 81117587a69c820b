"""EdgeDeployment handlers: every trigger (the CR, its pods and DaemonSets, edge Nodes, the
ModelTraining it follows, the planner's own requeue) puts the EdgeDeployment's key in the
work queue, which runs one level-triggered reconcile at a time per key: it reads kopf's
indexes (no lists), asks the pure rollout planner what to do, applies per-site DaemonSets,
replaces the pods the plan names and patches what changed in status."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any

import kopf

from fogline.api.conditions import set_condition
from fogline.api.crds import GROUP, VERSION
from fogline.api.edgedeployment import AnalysisSpec, EdgeDeployment, validate_edgedeployment
from fogline.api.errors import SpecError
from fogline.api.labels import MAINTENANCE_LABEL, UPDATE_LOCK_ANNOTATION
from fogline.controllers.analysis import AnalysisRun, AnalysisWindow, sample_interval, unread
from fogline.controllers.memo import Remembered
from fogline.controllers.runtime import (
    EdgeMemos,
    OperatorState,
    spec_may_have_changed,
    state_of,
    utcnow,
)
from fogline.edge.admission import admission_problems
from fogline.edge.daemonsets import (
    COMPONENT_LABEL,
    EDGE_LABEL,
    MANAGED_BY,
    TEMPLATE_HASH_ANNOTATION,
    ModelRef,
    build_site_daemonset,
    daemonset_name,
)
from fogline.edge.networkpolicy import build_edge_network_policy
from fogline.edge.observe import (
    WorkloadRefusal,
    analysis_targets,
    daemonset_essence,
    node_essence,
    node_ready,
    observe_sites,
    pod_essence,
    resolve_model,
    rollout_policy,
    workload_refusal,
)
from fogline.edge.status import (
    analysis_status,
    build_status,
    next_history,
    progress_only,
    rollback_targets,
)
from fogline.rollout import RolloutMemory, RolloutPlan, SiteObservation, plan_rollout
from fogline.rollout.analysis import AnalysisVerdict, WaveAnalysis, judge

logger = logging.getLogger(__name__)
EDGE_SELECTOR = {**MANAGED_BY, COMPONENT_LABEL: "edge-server"}
KIND = "EdgeDeployment"


@kopf.index(GROUP, VERSION, "edgedeployments")
def edges_by_name(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): body}


@kopf.index(GROUP, VERSION, "edgedeployments")
def edges_by_training(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[Any, Any] | None:
    source = (spec.get("model") or {}).get("fromTraining")
    return {(namespace, source): name} if source else None


# The three fleet indexes keep each object's essence (what the planner and the apply read),
# not its body: at a thousand nodes the bodies were most of the operator's memory.
@kopf.index("", "v1", "nodes")
def edge_nodes(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {name: node_essence(body)}


@kopf.index("", "v1", "pods", labels=EDGE_SELECTOR)
def edge_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, labels.get(EDGE_LABEL)): pod_essence(body)}


@kopf.index("apps", "v1", "daemonsets", labels=EDGE_SELECTOR)
def edge_daemonsets(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, labels.get(EDGE_LABEL)): daemonset_essence(body)}


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=EDGE_SELECTOR)
def edge_policies(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, labels.get(EDGE_LABEL)): body}


@kopf.index("apps", "v1", "daemonsets", labels=EDGE_SELECTOR)
def edge_daemonset_owners(
    namespace: str | None, name: str, labels: Mapping[str, str], **_: Any
) -> dict[Any, Any]:
    return {(namespace, name): labels.get(EDGE_LABEL)}


def kick(state: OperatorState, namespace: str, name: str, delay: float | None = None) -> None:
    state.enqueue(KIND, namespace, name, delay)


async def reconcile_edge(state: OperatorState, namespace: str, name: str) -> float | None:
    """One reconcile, run from the work queue: a failure (a conflict, the API server away)
    raises, and the queue retries it with back-off. Returns when to look again."""
    key = (KIND, namespace, name)
    owners = list(state.indexes["edges_by_name"].get((namespace, name), []))
    if not owners:
        state.forget(key)  # deleted: the garbage collector removes the DaemonSets
        return None
    body = owners[0]
    if body["metadata"].get("deletionTimestamp"):
        return None
    return await _reconcile(state, body)


CORRUPT_RECHECK_SECONDS = 5.0
CORRUPT_HELP = (
    "reset it with `kubectl patch edgedeployment {name} -n {namespace} --subresource=status "
    '--type=merge -p \'{{"status":{{"rollout":null}}}}\'` (the rollout then starts over '
    "from what the sites run)"
)


async def _reconcile(state: OperatorState, kopf_body: kopf.Body) -> float | None:
    now = utcnow()
    meta = kopf_body["metadata"]
    object_key = (KIND, meta["namespace"], meta["name"])
    body = state.status.view(object_key, kopf_body)
    memos = state.edge.memos.setdefault(object_key, EdgeMemos())
    memos.round()  # what the last reconcile asked for is kept; older entries go
    parsed = memos.parsed(kopf_body, body.get("status"))
    if isinstance(parsed, SpecError):
        errors = [parsed]
    else:
        edge = parsed
        errors = validate_edgedeployment(edge.spec)
    if errors:
        await _hold(
            state, kopf_body, "Failed", "InvalidSpec", "; ".join(str(e) for e in errors), now
        )
        return None
    # Before anything may hold the rollout: the sites already serving are covered too.
    await _apply_network_policy(state, kopf_body, edge)
    model = _resolve_model(state, edge)
    if isinstance(model, tuple):
        await _hold(state, kopf_body, "Pending", *model, now)
        return None
    refusals = admission_problems(edge.spec, model.uri, state.settings)
    if refusals:
        message = "; ".join(str(e) for e in refusals)
        await _hold(state, kopf_body, "Failed", "NotAllowed", message, now)
        return None
    try:
        memory = RolloutMemory.from_dict(dict(edge.status.rollout) if edge.status.rollout else None)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        help_ = CORRUPT_HELP.format(name=edge.name, namespace=edge.namespace)
        await _hold(
            state,
            kopf_body,
            "Failed",
            "CorruptRolloutMemory",
            f"status.rollout cannot be read ({err}); {help_}",
            now,
            ("Degraded", True),
        )
        # Nothing we watch changes when someone repairs our status: look again now and then
        # (a read of the index; the held status is written once).
        return CORRUPT_RECHECK_SECONDS
    key = (edge.namespace, edge.name)
    # Index entries are read in place: copying 1,000 nodes on every reconcile buys nothing.
    pods = list(state.indexes["edge_pods"].get(key, []))
    nodes = [node for bodies in state.indexes["edge_nodes"].values() for node in bodies]
    daemonsets = list(state.indexes["edge_daemonsets"].get(key, []))
    refused = _refusals(state, edge.namespace, daemonsets)
    sites = observe_sites(edge, nodes, pods, refused, observe=memos.pods)
    policy = rollout_policy(edge.spec.rollout)
    run = state.edge.analyses.get(object_key)
    # The analysis under way is read before planning, so that this plan judges the reading.
    # A wave's first reading is taken when the plan asks for an analysis not yet open
    # (_follow_analysis): only the plan says which sites it judges and which the baseline.
    if (
        run is not None
        and policy.analysis is not None
        and run.about(memory.wave_index, model.digest)
    ):
        run.verdict = await _sample(state, edge, run, policy.analysis, sites, pods, memory, now)
    plan = plan_rollout(
        sites, policy, memory, model.digest, now, run.given() if run is not None else None
    )
    ended, analysing, analysis_due = await _follow_analysis(
        state, edge, plan, policy.analysis, sites, pods, now
    )

    history_in = list((body.get("status") or {}).get("history") or [])
    uris = {h.get("digest"): h.get("uri") for h in history_in if h.get("digest")}
    uris[model.digest] = model.uri

    await _apply_daemonsets(
        state, kopf_body, edge, plan.site_digests, uris, history_in, memos.template_hashes
    )
    if edge.spec.rollout.replace_in_place:
        await _replace_pods(state, edge, pods, plan.replace_pods_on)
    # The calls above may have waited out an API outage: a wave this plan starts starts
    # when its DaemonSets were written, not when the plan was made, or the outage would
    # count against the wave's progress deadline.
    written = utcnow()
    if plan.memory.wave_started_at == now and written > now:
        plan = dataclasses.replace(
            plan, memory=dataclasses.replace(plan.memory, wave_started_at=written)
        )

    stable = plan.memory.stable_digest
    history = next_history(
        history_in,
        stable,
        uris.get(stable or "") or model.uri,
        edge.spec.revision_history_limit,
        written,
    )
    status = build_status(edge, plan, model.uri, history, written)
    previous = (body.get("status") or {}).get("analysis")
    status["analysis"] = analysis_status(previous, ended, analysing, written)
    flush_in = await state.status.write(
        state.kube, object_key, body, status, may_wait=progress_only
    )
    for event in plan.events:
        state.announcer.announce(object_key, kopf_body, event.type, event.reason, event.message)
    later = [t for t in (plan.requeue_after, flush_in, analysis_due) if t is not None]
    return max(0.5, min(later)) if later else None


async def _sample(
    state: OperatorState,
    edge: EdgeDeployment,
    run: AnalysisRun,
    policy: AnalysisSpec,
    sites: Sequence[SiteObservation],
    pods: Sequence[Mapping[str, Any]],
    memory: RolloutMemory,
    now: datetime,
) -> AnalysisVerdict:
    """Read the wave's and the baseline's sampled pods and judge them."""
    spec = edge.spec
    targets = analysis_targets(
        sites, pods, run.request, memory.stable_digest, spec.runtime.port, policy.max_pods
    )
    window = AnalysisWindow(
        key=run.key(edge.namespace, edge.name),
        namespace=edge.namespace,
        opened_at=run.opened_at,
        window_seconds=policy.window_seconds,
        targets=targets,
        counters=policy.counters(),
    )
    source_name = policy.source
    source = state.analysis_sources.get(source_name)
    if source_name == "Pods" and spec.runtime.tls is not None:
        windows = unread(
            targets,
            "the Pods source reads /metrics over plain HTTP and these servers serve TLS "
            "(spec.runtime.tls); use spec.rollout.analysis.source: Prometheus",
        )
    elif source is None:
        windows = unread(
            targets,
            f"source {source_name} is not configured in the operator (for Prometheus, the "
            "setting analysis.prometheus.url); use source: Pods or ask the administrator",
        )
    else:
        windows = await source.sample(window, now)
    return judge(policy, windows, run.opened_at, now)


async def _follow_analysis(
    state: OperatorState,
    edge: EdgeDeployment,
    plan: RolloutPlan,
    policy: AnalysisSpec | None,
    sites: Sequence[SiteObservation],
    pods: Sequence[Mapping[str, Any]],
    now: datetime,
) -> tuple[WaveAnalysis | None, WaveAnalysis | None, float | None]:
    """Open, keep or close the wave analysis the plan asks for. Returns the analysis that
    just ended (the planner stopped asking for it), the one under way, and when to sample
    next."""
    key = (KIND, edge.namespace, edge.name)
    run = state.edge.analyses.get(key)
    request = plan.analyze
    ended = None
    if run is not None and (request is None or not run.about(request.wave, request.digest)):
        # The planner is done with it: passed, failed, or the wave ended another way.
        state.edge.analyses.pop(key, None)
        for source in state.analysis_sources.values():
            source.forget(run.key(edge.namespace, edge.name))
        ended, run = run.given(), None
    if request is None or policy is None:
        return ended, None, None
    if run is None:
        # A new wave to analyse, or one whose analysis a restart lost: its window opens now.
        run = AnalysisRun(request, opened_at=now)
        state.edge.analyses[key] = run
        run.verdict = await _sample(state, edge, run, policy, sites, pods, plan.memory, now)
    else:
        run.request = request
    interval = sample_interval(policy.window_seconds)
    verdict = run.verdict
    if verdict is not None and verdict.phase == "Running":
        left = policy.window_seconds - (now - verdict.started_at).total_seconds()
        interval = min(interval, max(0.5, left))
    return ended, run.given(), interval


def _refusals(
    state: OperatorState, namespace: str, daemonsets: Sequence[Mapping[str, Any]]
) -> dict[str, WorkloadRefusal]:
    """The refusals of the DaemonSets as they exist now: one about an earlier DaemonSet of
    the same name (deleted and created again) is no longer true."""
    found = {}
    for daemonset in daemonsets:
        meta = daemonset["metadata"]
        refusal = state.edge.refusals.get((namespace, meta["name"]))
        if refusal is not None and refusal.daemonset_uid in ("", meta.get("uid")):
            found[meta["name"]] = refusal
    return found


def _resolve_model(state: OperatorState, edge: EdgeDeployment) -> ModelRef | tuple[str, str]:
    trainings = list(
        state.indexes["trainings_by_name"].get((edge.namespace, edge.spec.model.from_training), [])
    )
    return resolve_model(edge, trainings[0] if trainings else None)


async def _apply_daemonsets(
    state: OperatorState,
    body: kopf.Body,
    edge: EdgeDeployment,
    site_digests: Mapping[str, str],
    uris: Mapping[str | None, str | None],
    history: Sequence[Mapping[str, Any]],
    hashes: Remembered[tuple[int, str, ModelRef], str],
) -> None:
    existing = {
        d["metadata"]["name"]: d
        for d in state.indexes["edge_daemonsets"].get((edge.namespace, edge.name), [])
    }
    generations = state.edge.applied_generations.setdefault((KIND, edge.namespace, edge.name), {})

    async def apply(desired: dict[str, Any]) -> None:
        result = await state.kube.apply(desired)
        generations[desired["metadata"]["name"]] = result["metadata"]["generation"]

    applies = []
    for site, digest in sorted(site_digests.items()):
        uri = uris.get(digest)
        if not uri:
            continue  # a digest whose location is forgotten cannot be served; the planner waits
        keep = rollback_targets(history, digest, state.settings.edge_cache_keep)
        model = ModelRef(uri=uri, digest=digest, rollback=keep)
        desired = None
        wanted_hash = hashes.found((edge.generation, site, model))
        if wanted_hash is None:
            desired = build_site_daemonset(edge, site, model, state.settings)
            wanted_hash = desired["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
            hashes.keep((edge.generation, site, model), wanted_hash)
        name = daemonset_name(edge.name, site)
        current = existing.get(name)
        if current is not None:
            annotations = current["metadata"].get("annotations") or {}
            applied = generations.get(name)
            generation = current["metadata"].get("generation")
            if annotations.get(TEMPLATE_HASH_ANNOTATION) == wanted_hash and applied in (
                None,
                generation,
            ):
                continue  # as we left it (someone else's edit bumps the generation: drift)
        desired = desired or build_site_daemonset(edge, site, model, state.settings)
        kopf.adopt(desired, owner=body)
        applies.append(apply(desired))
    await _bounded(applies)
    wanted = {daemonset_name(edge.name, site) for site in site_digests}
    for name, current in existing.items():
        # A site that left, or a DaemonSet named the way older versions named them.
        if name not in wanted and not current["metadata"].get("deletionTimestamp"):
            await state.kube.delete("apps/v1", "DaemonSet", edge.namespace, name)
            generations.pop(name, None)


async def _apply_network_policy(
    state: OperatorState, body: kopf.Body, edge: EdgeDeployment
) -> None:
    """The servers' ingress policy when the administrator sets CIDRs, applied when missing or
    edited (a hand edit is reverted). Without the setting nothing is created, and a policy
    made before the setting was removed stays until its EdgeDeployment goes: a policy left
    behind only ever admits less."""
    cidrs = state.settings.edge_ingress_cidrs
    if cidrs is None:
        return
    desired = build_edge_network_policy(edge, cidrs)
    current = next(
        (
            p
            for p in state.indexes["edge_policies"].get((edge.namespace, edge.name), [])
            if p["metadata"]["name"] == desired["metadata"]["name"]
        ),
        None,
    )
    if current is not None and _policy_essence(current.get("spec")) == _policy_essence(
        desired["spec"]
    ):
        return
    kopf.adopt(desired, owner=body)
    await state.kube.apply(desired)


def _policy_essence(spec: Mapping[str, Any] | None) -> str:
    """What of a policy's spec we set, as the apiserver stores it (an empty list omitted)."""
    spec = spec or {}
    return json.dumps(
        [spec.get("podSelector"), spec.get("policyTypes"), spec.get("ingress") or []],
        sort_keys=True,
        default=dict,
    )


async def _replace_pods(
    state: OperatorState,
    edge: EdgeDeployment,
    pods: Sequence[Mapping[str, Any]],
    nodes: tuple[str, ...],
) -> None:
    wanted = set(nodes)
    # Pods we deleted that the watch still shows (not even with a deletionTimestamp yet, on
    # a busy API server): the next plan names their nodes again, and they must not be
    # deleted twice. Forgotten once the watch shows them gone.
    deleted = state.edge.deleted_pods.setdefault((KIND, edge.namespace, edge.name), set())
    deleted.intersection_update(pod["metadata"]["name"] for pod in pods)

    async def replace(name: str) -> None:
        await state.kube.delete("v1", "Pod", edge.namespace, name)
        deleted.add(name)

    await _bounded(
        [
            replace(pod["metadata"]["name"])
            for pod in pods
            if pod["metadata"]["name"] not in deleted
            and not pod["metadata"].get("deletionTimestamp")
            and pod.get("spec", {}).get("nodeName") in wanted
        ]
    )


# A reconcile's child writes (a wave's DaemonSet applies, and the pods it replaces, one per
# site of the wave: 40 of each at 200 sites) go out this many at a time. One after another
# they took 0.2 s each on a loaded API server, 8 s a step, and each of a wave's steps (a
# site replaces its nodes' pods one by one) waited for the slowest; 1,000 nodes rolled at
# 2.2x the time of a script that sends them in parallel. Bounded, so that ten
# EdgeDeployments rolling at once do not put hundreds of calls in flight (the client's
# worker threads and connection pool are about this size).
CHILD_WRITE_CONCURRENCY = 8


async def _bounded(calls: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run `calls`, CHILD_WRITE_CONCURRENCY at a time, each to its end (what succeeded is
    remembered by the call itself); then raise the first failure, so that the work queue
    retries the reconcile."""
    slots = asyncio.Semaphore(CHILD_WRITE_CONCURRENCY)

    async def one(call: Coroutine[Any, Any, None]) -> None:
        async with slots:
            await call

    outcomes = await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def _hold(
    state: OperatorState,
    body: kopf.Body,
    phase: str,
    reason: str,
    message: str,
    now: datetime,
    condition: tuple[str, bool] = ("ModelResolved", False),
) -> None:
    """A status that says why nothing rolls out (an invalid spec, no artifact yet, a
    rollout memory that cannot be read); the DaemonSets stay as they are."""
    meta = body["metadata"]
    status = dict(body.get("status") or {})
    if status.get("phase") == phase and status.get("message") == message:
        return
    conditions = set_condition(
        status.get("conditions"),
        condition[0],
        condition[1],
        reason,
        message,
        meta.get("generation"),
        now,
    )
    key = (KIND, meta["namespace"], meta["name"])
    desired = {
        "phase": phase,
        "observedGeneration": meta.get("generation"),
        "conditions": conditions,
        "message": message,
    }
    await state.status.write(state.kube, key, body, desired)
    state.announcer.announce(
        key,
        body,
        "Warning" if phase == "Failed" else "Normal",
        reason,
        message,
    )


# -- triggers --------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "edgedeployments")
async def edge_event(
    namespace: str | None, name: str, type: str | None, body: kopf.Body, memo: Any, **kwargs: Any
) -> None:
    """Reconciled when listed, created, deleted (so that its memory is dropped) or its spec
    changes; its own status writes change nothing it reads."""
    if spec_may_have_changed(type, body):
        state = state_of(memo)
        state.remember_indexes(kwargs)
        kick(state, namespace or "", name, delay=0)


@kopf.on.event("", "v1", "pods", labels=EDGE_SELECTOR)
@kopf.on.event("apps", "v1", "daemonsets", labels=EDGE_SELECTOR)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=EDGE_SELECTOR)
async def edge_child_changed(
    namespace: str | None,
    name: str,
    labels: Mapping[str, str],
    body: kopf.Body,
    type: str | None,
    memo: Any,
    **kwargs: Any,
) -> None:
    state = state_of(memo)
    state.remember_indexes(kwargs)
    if type == "DELETED" and body.get("kind") == "DaemonSet":
        state.edge.forget_refusal(namespace or "", name)
    if owner := labels.get(EDGE_LABEL):
        kick(state, namespace or "", owner)


# DaemonSet status has no condition for pods it cannot create: the DaemonSet controller
# says so only in Warning Events (FailedCreate: Pod Security admission, a quota, a webhook).
# The watch is filtered on the server to Warnings about DaemonSets (runtime.configure); only
# those about our DaemonSets are kept, the newest per DaemonSet.
@kopf.on.event("", "v1", "events", field="involvedObject.kind", value="DaemonSet")
async def daemonset_warned(
    namespace: str | None, body: kopf.Body, type: str | None, memo: Any, **kwargs: Any
) -> None:
    state = state_of(memo)
    state.remember_indexes(kwargs)
    refusal = workload_refusal(body)
    if refusal is None:
        return
    namespace = namespace or ""
    owners: kopf.Index[Any, Any] = kwargs["edge_daemonset_owners"]
    owner = next(iter(owners.get((namespace, refusal.daemonset), [])), None)
    if type == "DELETED":
        changed = state.edge.forget_refusal(namespace, refusal.daemonset, refusal.event_uid)
    elif owner is None:
        return  # not one of ours (or already gone)
    else:
        changed = state.edge.remember_refusal(namespace, refusal)
    if changed and owner:
        kick(state, namespace, owner)


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
    state.remember_indexes(kwargs)
    essence = _node_essence(body, type)
    if state.edge.node_essence.get(name) == essence:
        return
    if type == "DELETED":
        state.edge.node_essence.pop(name, None)
    else:
        state.edge.node_essence[name] = essence
    edges: kopf.Index[Any, Any] = kwargs["edges_by_name"]
    for namespace, edge_name in list(edges.keys()):
        kick(state, namespace, edge_name, delay=0.5)


@kopf.on.event(GROUP, VERSION, "modeltrainings")
async def training_published(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    state = state_of(memo)
    state.remember_indexes(kwargs)
    followers: kopf.Index[Any, Any] = kwargs["edges_by_training"]
    for edge_name in followers.get((namespace, name), []):
        kick(state, namespace or "", edge_name)
