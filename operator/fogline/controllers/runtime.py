"""Operator start-up: kopf settings (finalizers, peering so that two replicas never both
act, watch timeouts, posting), Fogline's own settings, the shared API client and the one
work queue both controllers reconcile through, kept in kopf's memo."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIServer

import kopf

from fogline.api.edgedeployment import EdgeDeployment
from fogline.api.errors import SpecError
from fogline.controllers.analysis import AnalysisRun, MetricsSource, PodScrapeSource
from fogline.controllers.announcer import Announcer
from fogline.controllers.memo import Remembered, SameObjects
from fogline.controllers.metrics import OperatorMetrics, serve_metrics
from fogline.controllers.prometheus import PrometheusSource
from fogline.controllers.workqueue import Key, WorkQueue
from fogline.controllers.written import StatusWriter
from fogline.edge.daemonsets import ModelRef
from fogline.edge.observe import WorkloadRefusal, observe_pod
from fogline.kube import KubeClient
from fogline.rollout import PodObservation
from fogline.settings import OperatorSettings

logger = logging.getLogger(__name__)
OWNED_SELECTOR = "app.kubernetes.io/managed-by=fogline"


@dataclass
class TrainingCache:
    """What the ModelTraining controller remembers between reconciles."""

    # Namespaces whose trainer RBAC we applied; dropped when the last training of a
    # namespace goes (deleting a namespace deletes its trainings first), so a recreated
    # namespace gets its RBAC again.
    rbac_ready: set[str] = field(default_factory=set)
    # Many trainings can arrive in one namespace at once: one grants the RBAC, the others
    # wait for it instead of applying the same three objects again.
    rbac_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def forget(self, key: Key, namespace_still_used: bool) -> None:
        if not namespace_still_used:
            self.rbac_ready.discard(key[1])


@dataclass
class EdgeMemos:
    """What one EdgeDeployment's reconciles derive and meet again: the parsed CR (by its body
    and the status it is seen with), each pod's observation, and each site's template hash
    by spec generation, site and model (the operator's settings are fixed for its
    lifetime): most reconciles change no DaemonSet."""

    parsed: SameObjects[EdgeDeployment | SpecError] = field(
        default_factory=lambda: SameObjects(_parse_edge)
    )
    pods: SameObjects[PodObservation | None] = field(
        default_factory=lambda: SameObjects(observe_pod)
    )
    template_hashes: Remembered[tuple[int, str, ModelRef], str] = field(default_factory=Remembered)

    def round(self) -> None:
        self.parsed.round()
        self.pods.round()
        self.template_hashes.round()


def _parse_edge(body: Mapping[str, Any], status: Any) -> EdgeDeployment | SpecError:
    try:
        return EdgeDeployment.from_body({**body, "status": status})
    except SpecError as err:
        return err


@dataclass
class EdgeCache:
    """What the EdgeDeployment controller remembers between reconciles."""

    # DaemonSet generations as our last apply left them, per EdgeDeployment: a different
    # one means someone else edited the DaemonSet (drift).
    applied_generations: dict[Key, dict[str, int]] = field(default_factory=dict)
    # What of each node matters to rollouts, so that heartbeats wake nothing.
    node_essence: dict[str, str] = field(default_factory=dict)

    # What each EdgeDeployment's reconciles derived and meet again (controllers/memo.py).
    memos: dict[Key, EdgeMemos] = field(default_factory=dict)
    # Pods deleted to be replaced that the watch still shows, by EdgeDeployment.
    deleted_pods: dict[Key, set[str]] = field(default_factory=dict)
    # The newest refusal of each of our DaemonSets, by (namespace, name): one at most per
    # DaemonSet, dropped when its Event expires or the DaemonSet goes.
    refusals: dict[tuple[str, str], WorkloadRefusal] = field(default_factory=dict)
    # The wave analysis in progress, by EdgeDeployment (its window's first readings are in
    # the source): lost on a restart, when the window starts again.
    analyses: dict[Key, AnalysisRun] = field(default_factory=dict)

    def forget(self, key: Key) -> None:
        self.analyses.pop(key, None)
        self.applied_generations.pop(key, None)
        self.memos.pop(key, None)
        self.deleted_pods.pop(key, None)

    def remember_refusal(self, namespace: str, refusal: WorkloadRefusal) -> bool:
        """Keep the newer of this and what is known; True when it changed."""
        key = (namespace, refusal.daemonset)
        known = self.refusals.get(key)
        if known is not None and (known == refusal or not refusal.newer_than(known)):
            return False
        self.refusals[key] = refusal
        return True

    def forget_refusal(self, namespace: str, daemonset: str, event_uid: str | None = None) -> bool:
        """Drop a DaemonSet's refusal (only the one of that Event when `event_uid` is
        given); True when one was dropped."""
        known = self.refusals.get((namespace, daemonset))
        if known is None or (event_uid is not None and known.event_uid != event_uid):
            return False
        del self.refusals[(namespace, daemonset)]
        return True


Reconciler = Callable[["OperatorState", str, str], Awaitable[float | None]]


@dataclass
class OperatorState:
    """What every handler shares, stored in kopf's memo under `fogline`: each part has one
    job (the queue schedules, the announcer posts Events once, the caches remember)."""

    settings: OperatorSettings
    kube: KubeClient
    metrics: OperatorMetrics
    announcer: Announcer
    queue: WorkQueue = field(init=False)
    reconcilers: dict[str, Reconciler] = field(default_factory=dict)
    # kopf's indexes are live views; reconciles run from the queue, outside any handler,
    # so handlers leave them here.
    indexes: dict[str, Any] = field(default_factory=dict)
    training: TrainingCache = field(default_factory=TrainingCache)
    edge: EdgeCache = field(default_factory=EdgeCache)
    # Our CRs' status writes: coalesced progress, and what they left until the watch
    # brings it.
    status: StatusWriter = field(default_factory=StatusWriter)
    # Where wave analyses read metrics, by spec.rollout.analysis.source.
    analysis_sources: dict[str, MetricsSource] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self._dispatch, metrics=self.metrics)

    async def _dispatch(self, key: Key) -> float | None:
        kind, namespace, name = key
        with self.metrics.reconciling(kind):
            return await self.reconcilers[kind](self, namespace, name)

    def enqueue(self, kind: str, namespace: str, name: str, delay: float | None = None) -> None:
        self.queue.add((kind, namespace, name), delay)

    def remember_indexes(self, kwargs: dict[str, Any]) -> None:
        for name, value in kwargs.items():
            if isinstance(value, kopf.Index):
                self.indexes[name] = value

    def forget(self, key: Key) -> None:
        """The object is gone: drop every per-object memory of it."""
        run = self.edge.analyses.get(key)
        if run is not None:
            for source in self.analysis_sources.values():
                source.forget(run.key(key[1], key[2]))
        self.queue.forget(key)
        self.announcer.forget(key)
        self.edge.forget(key)
        self.status.forget(key)

    def tracked(self) -> int:
        """How many objects the operator holds memory of (nodes not counted: they are the
        fleet, not objects that come and go with CRs)."""
        edge = len(self.edge.applied_generations) + self.status.tracked()
        edge += len(self.edge.memos)
        edge += len(self.edge.deleted_pods)
        edge += len(self.edge.refusals) + len(self.edge.analyses)
        return self.queue.tracked() + self.announcer.tracked() + edge


def utcnow() -> datetime:
    """The clock, read by handlers only: pure code takes `now` as an argument."""
    return datetime.now(UTC)


def spec_may_have_changed(event_type: str | None, body: Mapping[str, Any]) -> bool:
    """Whether a watch event of one of our kinds needs a reconcile: kopf's initial listing
    (type None), ADDED and DELETED always do; a MODIFIED only while the status has not
    answered the object's generation, which the API server bumps on every spec change. So
    the operator's own status writes (which leave the generation alone) wake nothing."""
    if event_type != "MODIFIED":
        return True
    generation = (body.get("metadata") or {}).get("generation")
    return generation != (body.get("status") or {}).get("observedGeneration")


def state_of(memo: Any) -> OperatorState:
    state: OperatorState = memo.fogline
    return state


class NoDiffBase(kopf.DiffBaseStorage):
    """A diff-base storage that keeps nothing. kopf builds every watched object's essence
    (a deep copy of its body without metadata and status) on every watch event, to find
    what changed since the last time its change handlers (on.create, on.update, timers,
    daemons) ran. The operator has none of those: its handlers are event handlers and
    indexes, which get every event whatever changed. Through a rollout of 500 nodes those
    copies were a sixth of the operator's CPU. tests/unit/test_runtime_settings.py fails
    the day a change handler is registered, when this storage would hide its changes."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Every handler is an event handler that puts a key in the work queue: kopf keeps no
    # state on the objects (no finalizer, no progress or diff-base annotation), so the
    # operator writes nothing but their status, and a CR stays deletable while it is down.
    settings.posting.level = logging.WARNING
    settings.persistence.diffbase_storage = NoDiffBase()
    # How long a silent replica still counts as alive; a standby takes over after that.
    settings.peering.lifetime = int(os.environ.get("FOGLINE_PEERING_LIFETIME", "60"))
    # No watch waits forever: the server ends each after 5 min and kopf reopens it from
    # its resourceVersion; a stream silent for 70 s (not even a bookmark, which the server
    # sends every minute) is cut and reopened (kopf's inactivity timeout); the client ends
    # any after 6 min; a connection not made within 10 s is retried.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 360
    settings.watching.connect_timeout = 10
    settings.watching.reconnect_backoff = 1.0
    # kopf's own calls (patches of its annotations, Events) are cut after 30 s too.
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.batching.error_delays = [1, 2, 5, 10, 30]
    # Server-side filters: of all Events only the Warnings about DaemonSets (a pod the
    # DaemonSet controller could not create), and of ServiceAccounts, Roles and
    # RoleBindings only ours (the trainer identity, re-applied when someone deletes it).
    settings.watching.field_selectors["", "v1", "events"] = (
        "involvedObject.kind=DaemonSet,type=Warning"
    )
    for resource in (
        ("", "v1", "serviceaccounts"),
        ("rbac.authorization.k8s.io", "v1", "roles"),
        ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    ):
        settings.watching.label_selectors[resource] = OWNED_SELECTOR
    metrics = OperatorMetrics()
    kube = KubeClient(metrics=metrics)
    state = OperatorState(
        settings=OperatorSettings.from_env(),
        kube=kube,
        metrics=metrics,
        announcer=Announcer(metrics),
    )
    from fogline.controllers.edgedeployment import reconcile_edge
    from fogline.controllers.modeltraining import reconcile_training

    state.reconcilers = {"ModelTraining": reconcile_training, "EdgeDeployment": reconcile_edge}
    state.analysis_sources["Pods"] = PodScrapeSource(
        on_scrape=lambda outcome: metrics.analysis_scrapes.labels(outcome).inc()
    )
    prometheus = PrometheusSource.from_settings(
        state.settings,
        on_request=lambda outcome: metrics.analysis_prometheus_queries.labels(outcome).inc(),
    )
    if prometheus is not None:
        state.analysis_sources["Prometheus"] = prometheus
    metrics.tracked.set_function(state.tracked)
    memo.fogline = state
    if port := os.environ.get("FOGLINE_METRICS_PORT"):
        memo.metrics_server = serve_metrics(metrics, "0.0.0.0", int(port))


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    state = getattr(memo, "fogline", None)
    if state is not None:
        await state.queue.close()
        for source in state.analysis_sources.values():
            await source.close()
    server: WSGIServer | None = getattr(memo, "metrics_server", None)
    if server is not None:
        server.shutdown()
