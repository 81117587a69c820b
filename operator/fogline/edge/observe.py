"""What the rollout planner reads, from what the API shows: the selected edge Nodes grouped
into sites, each node with its inference pod's digest and health and each site with the
refusal of its DaemonSet; the artifact the spec resolves to; spec.rollout as the planner's
policy; and the slim copies of Nodes, pods and DaemonSets that the operator's indexes keep.
Pure functions of their inputs; edge/status.py turns the plan into status."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fogline.api.digests import is_digest, short_digest
from fogline.api.edgedeployment import EdgeDeployment, RolloutSpec
from fogline.api.labels import MAINTENANCE_LABEL, UPDATE_LOCK_ANNOTATION
from fogline.api.timestamps import parse_time
from fogline.edge.daemonsets import (
    DIGEST_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
    ModelRef,
    daemonset_name,
)
from fogline.rollout import NodeObservation, PodObservation, RolloutPolicy, SiteObservation
from fogline.rollout.analysis import AnalysisRequest, PodTarget

# Container states from which a pod will not become healthy by waiting.
FAILING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "UnknownImage",
    }
)


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
        if isinstance(value, str) and (moment := parse_time(value)) is not None:
            return moment
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
    observe: Callable[[Mapping[str, Any]], PodObservation | None] = observe_pod,
) -> list[SiteObservation]:
    """The selected edge nodes grouped into sites, each node with its inference pod and
    each site with the refusal of its DaemonSet, if any (`refusals` by DaemonSet name,
    already matched to the DaemonSet that exists now). `observe` is observe_pod or a
    memo of it."""
    refusals = refusals or {}
    placement = edge.spec.placement
    wanted_sites = set(placement.sites) if placement.sites else None
    paused_sites = set(edge.spec.rollout.paused_sites or ())
    by_node: dict[str, PodObservation] = {}
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        observed = observe(pod)
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


def rollout_policy(spec: RolloutSpec) -> RolloutPolicy:
    """spec.rollout as the planner reads it: the one place where the API's fields meet the
    planner's (`disconnectedSites` is its `disconnected`; `pausedSites` and `replaceInPlace`
    are not the planner's to read: observe_sites marks the paused sites and the controller
    replaces the pods)."""
    return RolloutPolicy(
        canary_sites=spec.canary_sites,
        max_unavailable=spec.max_unavailable,
        pause_seconds=float(spec.pause_seconds),
        progress_deadline_seconds=float(spec.progress_deadline_seconds),
        auto_rollback=spec.auto_rollback,
        paused=spec.paused,
        disconnected=spec.disconnected_sites,
        retry=spec.retry,
        analysis=spec.analysis,
    )


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
