"""From what the API shows (Nodes, the inference pods) to what the rollout planner reads
(sites of nodes, each with its pod's digest and health), and from the planner's plan to
the EdgeDeployment's status. Pure functions of their inputs; `now` is passed in."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fogline.api.conditions import rfc3339, set_condition
from fogline.api.digests import is_digest, short_digest
from fogline.api.edgedeployment import EdgeDeployment, sites_ready_text
from fogline.edge.daemonsets import (
    DIGEST_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
    ModelRef,
    daemonset_name,
)
from fogline.rollout import NodeObservation, PodObservation, RolloutPlan, SiteObservation
from fogline.rollout.analysis import AnalysisRequest, MetricResult, PodTarget, WaveAnalysis

UPDATE_LOCK_ANNOTATION = "fogline.io/update-lock"
MAINTENANCE_LABEL = "fogline.io/maintenance"
# Container states from which a pod will not become healthy by waiting.
FAILING_REASONS = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "UnknownImage",
})  # fmt: skip


def selects(node: Mapping[str, Any], selector: Mapping[str, str]) -> bool:
    labels = node.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def node_ready(node: Mapping[str, Any]) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


# The reasons `fogline fetch` writes to its termination message (workloads/fetch.py).
FETCH_REASONS = frozenset(
    {
        "ArtifactUnreachable",
        "AccessDenied",
        "DigestMismatch",
        "InvalidArtifact",
        "SignatureMissing",
        "SignatureInvalid",
        "SignerKeyMissing",
        "ModelKeyMissing",
        "ModelKeyInvalid",
        "ModelNotEncrypted",
    }
)


def fetch_failure_reason(container: Mapping[str, Any]) -> str | None:
    """The reason a failed fetch step gave, from its current or last termination: after the
    first failure the kubelet restarts it, so the reason lives on in lastState."""
    for key in ("state", "lastState"):
        terminated = (container.get(key) or {}).get("terminated") or {}
        if terminated.get("exitCode") in (None, 0):
            continue
        try:
            message = json.loads(terminated.get("message") or "")
        except ValueError:
            message = None
        reason = message.get("reason") if isinstance(message, dict) else None
        return f"{reason}" if reason in FETCH_REASONS else "FetchFailed"
    return None


def pod_failure(pod: Mapping[str, Any]) -> str | None:
    """Why a pod will not become healthy, or None while it still may."""
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return "PodFailed"
    for container in status.get("initContainerStatuses") or []:
        if (reason := fetch_failure_reason(container)) is not None:
            return f"Init:{reason}"
    for key, prefix in (("initContainerStatuses", "Init:"), ("containerStatuses", "")):
        for container in status.get(key) or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FAILING_REASONS:
                return f"{prefix}{waiting['reason']}"
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


# -- what the indexes keep ------------------------------------------------------------------
# The operator's indexes hold every edge Node, pod and DaemonSet; a whole body is several KiB
# (managed fields, images, volumes, every condition), and the planner reads a few fields.
# These keep those fields, in the same shape, so that the readers above work on either.


def _ready_condition(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"type": "Ready", "status": c.get("status")}
        for c in status.get("conditions") or []
        if c.get("type") == "Ready"
    ]


def node_essence(node: Mapping[str, Any]) -> dict[str, Any]:
    """What observe_sites reads of a Node: its name, labels, update lock and readiness."""
    meta = node.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    kept = {k: annotations[k] for k in (UPDATE_LOCK_ANNOTATION,) if k in annotations}
    return {
        "metadata": {
            "name": meta.get("name"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": kept,
        },
        "status": {"conditions": _ready_condition(node.get("status") or {})},
    }


def _container_essence(container: Mapping[str, Any]) -> dict[str, Any]:
    """A container status as pod_failure reads it: the waiting reason, and a failed
    termination's exit code and message (the fetch step's reason lives there)."""
    kept: dict[str, Any] = {}
    for key in ("state", "lastState"):
        state = container.get(key) or {}
        entry: dict[str, Any] = {}
        if reason := (state.get("waiting") or {}).get("reason"):
            entry["waiting"] = {"reason": reason}
        terminated = state.get("terminated") or {}
        if terminated.get("exitCode") not in (None, 0):
            entry["terminated"] = {
                "exitCode": terminated["exitCode"],
                "message": terminated.get("message") or "",
            }
        if entry:
            kept[key] = entry
    return kept


def pod_essence(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What observe_sites, the pod replacement and the rollout analysis read of an edge pod:
    name, node, digest annotation, deletion, phase, readiness, the reasons it may be
    failing, and its address (where the analysis reads its metrics)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    kept_meta: dict[str, Any] = {
        "name": meta.get("name"),
        "annotations": {k: annotations[k] for k in (DIGEST_ANNOTATION,) if k in annotations},
    }
    if meta.get("deletionTimestamp"):
        kept_meta["deletionTimestamp"] = meta["deletionTimestamp"]
    return {
        "metadata": kept_meta,
        "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
        "status": {
            "phase": status.get("phase"),
            "podIP": status.get("podIP"),
            "conditions": _ready_condition(status),
            **{
                key: [_container_essence(c) for c in status.get(key) or []]
                for key in ("initContainerStatuses", "containerStatuses")
            },
        },
    }


def daemonset_essence(daemonset: Mapping[str, Any]) -> dict[str, Any]:
    """What the DaemonSet apply reads: name, generation, template hash, deletion; and the
    uid, which tells a refusal of this DaemonSet from one of an earlier one of its name."""
    meta = daemonset.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    kept: dict[str, Any] = {
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "generation": meta.get("generation"),
        "annotations": {k: annotations[k] for k in (TEMPLATE_HASH_ANNOTATION,) if k in annotations},
    }
    if meta.get("deletionTimestamp"):
        kept["deletionTimestamp"] = meta["deletionTimestamp"]
    return {"metadata": kept}


def observe_pod(pod: Mapping[str, Any]) -> PodObservation | None:
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None  # on its way out: the node is being replaced
    digest = (meta.get("annotations") or {}).get(DIGEST_ANNOTATION, "")
    return PodObservation(digest=digest, ready=pod_ready(pod), failure=pod_failure(pod))


# Who writes the Warnings that say a DaemonSet cannot create its pods.
DAEMONSET_CONTROLLER = "daemonset-controller"
REFUSAL_MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class WorkloadRefusal:
    """The newest Warning the DaemonSet controller gave about one DaemonSet (FailedCreate:
    Pod Security admission, a quota, a webhook), as the site's status shows it."""

    daemonset: str
    daemonset_uid: str
    event_uid: str
    message: str
    at: datetime | None

    def newer_than(self, other: WorkloadRefusal) -> bool:
        if self.at is None or other.at is None:
            return other.at is None
        return self.at >= other.at


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    series = event.get("series") or {}
    for value in (
        series.get("lastObservedTime"),
        event.get("lastTimestamp"),
        event.get("eventTime"),
        event.get("firstTimestamp"),
    ):
        if isinstance(value, str) and value:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
    return None


def workload_refusal(event: Mapping[str, Any]) -> WorkloadRefusal | None:
    """A core v1 Event as a refusal, when it is a Warning of the DaemonSet controller about
    a DaemonSet; None for anything else."""
    involved = event.get("involvedObject") or {}
    component = (event.get("source") or {}).get("component") or event.get("reportingComponent")
    if (
        event.get("type") != "Warning"
        or involved.get("kind") != "DaemonSet"
        or component != DAEMONSET_CONTROLLER
        or not involved.get("name")
    ):
        return None
    reason = str(event.get("reason") or "Warning")
    text = " ".join(str(event.get("message") or "").split())[:REFUSAL_MESSAGE_LIMIT]
    return WorkloadRefusal(
        daemonset=str(involved["name"]),
        daemonset_uid=str(involved.get("uid") or ""),
        event_uid=str((event.get("metadata") or {}).get("uid") or ""),
        message=f"DaemonSet {involved['name']} {reason}: {text}",
        at=_event_time(event),
    )


def observe_sites(
    edge: EdgeDeployment,
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    refusals: Mapping[str, WorkloadRefusal] | None = None,
) -> list[SiteObservation]:
    """The selected edge nodes grouped into sites, each node with its inference pod and
    each site with the refusal of its DaemonSet, if any (`refusals` by DaemonSet name,
    already matched to the DaemonSet that exists now)."""
    refusals = refusals or {}
    placement = edge.spec.placement
    wanted_sites = set(placement.sites) if placement.sites else None
    paused_sites = set(edge.spec.rollout.paused_sites or ())
    by_node: dict[str, PodObservation] = {}
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        observed = observe_pod(pod)
        if node_name and observed is not None:
            by_node[node_name] = observed
    sites: dict[str, list[NodeObservation]] = {}
    maintenance: set[str] = set()
    for node in nodes:
        if not selects(node, placement.node_selector):
            continue
        meta = node.get("metadata") or {}
        site = (meta.get("labels") or {}).get(placement.site_label)
        if not site or (wanted_sites is not None and site not in wanted_sites):
            continue
        if (meta.get("labels") or {}).get(MAINTENANCE_LABEL) == "true":
            maintenance.add(site)
        sites.setdefault(site, []).append(
            NodeObservation(
                name=meta["name"],
                ready=node_ready(node),
                locked=UPDATE_LOCK_ANNOTATION in (meta.get("annotations") or {}),
                pod=by_node.get(meta["name"]),
            )
        )
    result = []
    for site, site_nodes in sorted(sites.items()):
        refusal = refusals.get(daemonset_name(edge.name, site))
        result.append(
            SiteObservation(
                name=site,
                nodes=tuple(sorted(site_nodes, key=lambda n: n.name)),
                paused=site in paused_sites,
                maintenance=site in maintenance,
                refusal=refusal.message if refusal else None,
                refused_at=refusal.at if refusal else None,
            )
        )
    return result


def analysis_targets(
    sites: Sequence[SiteObservation],
    pods: Iterable[Mapping[str, Any]],
    request: AnalysisRequest,
    stable: str | None,
    port: int,
    max_pods: int,
) -> tuple[PodTarget, ...]:
    """The pods an analysis samples: Ready pods with an address on Ready nodes, at most
    ``max_pods`` of the wave (on its digest) and as many of the baseline (on ``stable``),
    taken one site at a time in turn so that every site is sampled before any site twice,
    in site and pod name order (the same pods from one reconcile to the next)."""
    node_site = {node.name: site.name for site in sites for node in site.nodes if node.ready}
    chosen: list[PodTarget] = []
    for baseline, names, digest in (
        (False, request.sites, request.digest),
        (True, request.baseline_sites, stable),
    ):
        wanted = set(names)
        by_site: dict[str, list[Mapping[str, Any]]] = {}
        for pod in pods:
            meta = pod.get("metadata") or {}
            site = node_site.get((pod.get("spec") or {}).get("nodeName") or "")
            if (
                site in wanted
                and digest is not None
                and (meta.get("annotations") or {}).get(DIGEST_ANNOTATION) == digest
                and not meta.get("deletionTimestamp")
                and pod_ready(pod)
                and (pod.get("status") or {}).get("podIP")
            ):
                by_site.setdefault(site, []).append(pod)
        queues = [
            sorted(found, key=lambda p: str(p["metadata"]["name"]))
            for _, found in sorted(by_site.items())
        ]
        sites_in_turn = [name for name, _ in sorted(by_site.items())]
        taken = 0
        depth = 0
        while taken < max_pods and any(depth < len(q) for q in queues):
            for site, queue in zip(sites_in_turn, queues, strict=True):
                if depth < len(queue) and taken < max_pods:
                    pod = queue[depth]
                    chosen.append(
                        PodTarget(
                            name=str(pod["metadata"]["name"]),
                            site=site,
                            address=str(pod["status"]["podIP"]),
                            port=port,
                            baseline=baseline,
                        )
                    )
                    taken += 1
            depth += 1
    return tuple(chosen)


# status.analysis.waves keeps this many finished analyses, newest first.
MAX_ANALYSED_WAVES = 20


def _result_dict(result: MetricResult) -> dict[str, Any]:
    row: dict[str, Any] = {"metric": result.metric, "threshold": result.threshold}
    if result.value is not None:
        row["value"] = round(result.value, 6)
    if result.baseline is not None:
        row["baseline"] = round(result.baseline, 6)
    if result.site:
        row["site"] = result.site
    row["passed"] = result.passed
    if result.message:
        row["message"] = result.message[:256]
    return row


def _verdict_dict(analysis: WaveAnalysis, ended: bool) -> dict[str, Any]:
    verdict = analysis.verdict
    phase, message = verdict.phase, verdict.message
    if ended and phase == "Running":
        # The wave ended (its deadline passed, a pod failed, a new rollout began) with the
        # window still open: no answer came.
        phase, message = "Inconclusive", f"the wave ended before its window did ({message})"
    shown: dict[str, Any] = {
        "wave": analysis.wave,
        "digest": analysis.digest,
        "phase": phase,
        "startedAt": rfc3339(verdict.started_at),
        "requests": verdict.requests,
        "pods": verdict.pods,
        "baselinePods": verdict.baseline_pods,
        "results": [_result_dict(r) for r in verdict.results],
        "message": message[:1024],
    }
    if verdict.failure is not None:
        failure = verdict.failure
        shown["failure"] = {
            "site": failure.site,
            "metric": failure.metric,
            "value": round(failure.value, 6),
            "threshold": failure.threshold,
        }
    return shown


def analysis_status(
    previous: Mapping[str, Any] | None,
    ended: WaveAnalysis | None,
    current: WaveAnalysis | None,
    now: datetime,
) -> dict[str, Any] | None:
    """status.analysis: the verdict of the wave under analysis (``current``), else of the
    one that just ended, else as it was; an ``ended`` analysis (the planner no longer asks
    for it) goes first into ``waves``, which keeps MAX_ANALYSED_WAVES."""
    if ended is None and current is None:
        return dict(previous) if previous else None
    waves = [dict(w) for w in (previous or {}).get("waves") or []]
    if ended is not None:
        done = _verdict_dict(ended, ended=True)
        entry = {key: done[key] for key in ("wave", "digest", "phase", "requests", "message")}
        entry["finishedAt"] = rfc3339(now)
        entry["results"] = done["results"]
        waves = [entry, *waves][:MAX_ANALYSED_WAVES]
    shown = _verdict_dict(current, ended=False) if current is not None else done
    if waves:
        shown["waves"] = waves
    return shown


def build_status(
    edge: EdgeDeployment,
    plan: RolloutPlan,
    target_uri: str,
    history: Sequence[Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """The status merge patch for a plan."""
    memory = plan.memory
    counts = plan.counts
    previous = [c.to_dict() for c in edge.status.conditions or ()]
    generation = edge.generation
    available = plan.phase in ("Available", "Degraded")
    conditions = set_condition(previous, "ModelResolved", True, "ArtifactResolved",
                               f"serving {short_digest(memory.target_digest)} from {target_uri}", generation, now)  # fmt: skip
    conditions = set_condition(
        conditions, "Available", available, plan.phase, plan.message or plan.phase, generation, now
    )
    progressing = plan.phase in ("Progressing", "Pending")
    conditions = set_condition(
        conditions,
        "Progressing",
        progressing,
        plan.phase,
        plan.message or plan.phase,
        generation,
        now,
    )
    degraded = plan.phase in ("Degraded", "RolledBack", "Failed")
    conditions = set_condition(
        conditions, "Degraded", degraded, plan.phase, plan.message or plan.phase, generation, now
    )
    rows, omitted = bounded_site_rows([site.to_dict() for site in plan.sites])
    status: dict[str, Any] = {
        "phase": plan.phase,
        "observedGeneration": generation,
        "conditions": conditions,
        "currentDigest": memory.stable_digest,
        "currentDigestShort": short_digest(memory.stable_digest) if memory.stable_digest else None,
        "targetDigest": memory.target_digest,
        "targetUri": target_uri,
        "sitesReady": sites_ready_text(counts.sites_ready, counts.sites),
        "counts": counts.to_dict(),
        "sites": rows,
        "sitesOmitted": omitted or None,
        "wave": {
            "index": memory.wave_index,
            # The first deployment's wave is every site: the list is bounded like status.sites.
            "sites": list(memory.wave_sites[:MAX_SITE_ROWS]),
            "siteCount": len(memory.wave_sites),
            "startedAt": rfc3339(memory.wave_started_at) if memory.wave_started_at else None,
        },
        "failedSite": memory.failed_site,
        "message": plan.message,
        "history": list(history),
        "rollout": memory.to_dict(),
    }
    return status


# Status keys that move with every pod transition (a node's pod goes, its new one becomes
# Ready) or every analysis sample, and that nothing reads back: the planner's memory lives
# in status.rollout. A change confined to these may wait a little, so that one patch
# carries many transitions; what an analysis decides moves the memory and goes at once.
PROGRESS_KEYS = frozenset({"counts", "sitesReady", "sites", "sitesOmitted", "analysis"})


def progress_only(patch: Mapping[str, Any]) -> bool:
    """Whether a status patch changes only progress figures (PROGRESS_KEYS): such a patch
    may be coalesced with the next ones; any other change (phase, wave, conditions, the
    planner's memory, history) is written at once, carrying the progress with it."""
    return bool(patch) and patch.keys() <= PROGRESS_KEYS


# status.sites lists at most this many sites (the CRD allows 1,024 items): the ones that
# need a look first (failing, updating, unreachable, pending, ...), then Ready ones by name.
# status.counts covers every site and status.sitesOmitted says how many were left out, so
# the object stays small at any fleet size.
MAX_SITE_ROWS = 100
_ROW_ORDER = {
    state: rank
    for rank, state in enumerate(
        ("Failed", "Unreachable", "Updating", "RolledBack", "Skipped", "Paused", "Pending", "Ready")
    )
}


def bounded_site_rows(
    rows: Sequence[Mapping[str, Any]], limit: int = MAX_SITE_ROWS
) -> tuple[list[dict[str, Any]], int]:
    """At most `limit` site rows, the ones that need attention first, listed by name; and
    how many were left out."""
    if len(rows) <= limit:
        return [dict(r) for r in rows], 0
    ranked = sorted(rows, key=lambda r: (_ROW_ORDER.get(str(r.get("state")), 8), str(r["name"])))
    kept = sorted(ranked[:limit], key=lambda r: str(r["name"]))
    return [dict(r) for r in kept], len(rows) - limit


def next_history(
    history: Sequence[Mapping[str, Any]],
    stable_digest: str | None,
    uri: str,
    limit: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """Revision history: a new entry when a digest becomes the stable one, newest first,
    at most `limit` entries."""
    entries = [dict(h) for h in history]
    if not stable_digest or (entries and entries[0].get("digest") == stable_digest):
        return entries[:limit]
    revision = max((int(h.get("revision") or 0) for h in entries), default=0) + 1
    entry = {"revision": revision, "digest": stable_digest, "uri": uri, "deployedAt": rfc3339(now)}
    return [entry, *entries][:limit]


def rollback_targets(
    history: Sequence[Mapping[str, Any]], digest: str, limit: int
) -> tuple[str, ...]:
    """The digests a site serving `digest` could roll back to, most recent first, at most
    `limit`: what status.history lists as deployed before `digest` first was. Counting from its
    oldest entry keeps the answer the same when `digest` becomes stable (a new entry on top), so
    the DaemonSet's template, which carries the answer, does not change then."""
    digests = [h.get("digest") for h in history]
    if digest in digests:
        digests = digests[len(digests) - digests[::-1].index(digest) :]
    older = [d for d in digests if isinstance(d, str) and d != digest]
    return tuple(dict.fromkeys(older))[:limit]


def resolve_model(
    edge: EdgeDeployment, training: Mapping[str, Any] | None
) -> ModelRef | tuple[str, str]:
    """The artifact the spec asks for, or (reason, message) saying why there is none and
    what the fleet does meanwhile: it holds (no rollout moves, each site keeps the digest
    it runs). `training` is the followed ModelTraining's body, None when it is gone."""
    source = edge.spec.model
    if source.uri and source.digest:
        return ModelRef(uri=source.uri, digest=source.digest)
    rollout = edge.status.rollout or {}
    target, stable = rollout.get("targetDigest"), rollout.get("stableDigest")
    held = ""
    if isinstance(target, str) and is_digest(target) and target != stable:
        held = (
            f"; the rollout toward {short_digest(target)} is held where it is and each site "
            "keeps the digest it runs"
        )
    elif isinstance(stable, str) and is_digest(stable):
        held = f"; the sites keep serving {short_digest(stable)}"
    if training is None:
        return (
            "TrainingNotFound",
            f"ModelTraining {source.from_training!r} does not exist in namespace "
            f"{edge.namespace!r}{held}; recreate it, or set spec.model.uri and "
            "spec.model.digest",
        )
    artifact = (training.get("status") or {}).get("artifact") or {}
    if not artifact.get("digest") or not artifact.get("uri"):
        return (
            "ArtifactNotReady",
            f"waiting for ModelTraining {source.from_training!r} to publish an artifact "
            f"that passes its evaluation gate{held}",
        )
    return ModelRef(uri=str(artifact["uri"]), digest=str(artifact["digest"]))
