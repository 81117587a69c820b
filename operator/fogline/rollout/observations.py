"""What the rollout planner is told about the fleet: sites, their edge nodes and the pods on
them, as seen at one reconcile. Plain frozen values; building them from the API is the
controller's job."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class PodObservation:
    """The inference pod on one node.

    ``failure`` names why the pod will not become healthy (``CrashLoopBackOff``,
    ``ImagePullBackOff``, ``ProbeFailed``, ``Error``); ``None`` while it is healthy or still
    starting. A pod that is being deleted is reported as no pod at all.
    """

    digest: str
    ready: bool
    failure: str | None = None


@dataclass(frozen=True)
class NodeObservation:
    """One edge node: its Ready condition, the ``fogline.io/update-lock`` annotation, its pod."""

    name: str
    ready: bool
    locked: bool = False
    pod: PodObservation | None = None

    @property
    def workable(self) -> bool:
        """The planner may replace this node's pod: the node is Ready and not locked."""
        return self.ready and not self.locked

    def runs(self, digest: str) -> bool:
        return self.pod is not None and self.pod.digest == digest

    def serves(self, digest: str) -> bool:
        """Runs ``digest`` on a Ready node with a Ready pod."""
        return self.ready and self.pod is not None and self.pod.digest == digest and self.pod.ready


@dataclass(frozen=True)
class SiteObservation:
    """A site: the edge nodes sharing one site label value.

    ``paused`` comes from ``spec.rollout.pausedSites``; ``maintenance`` is true while any of
    its nodes is labelled ``fogline.io/maintenance=true``. ``refusal`` is the newest Warning
    the workload's controller gave about the site's workload (a pod it could not create:
    Pod Security admission, a quota), and ``refused_at`` when it gave it last.
    """

    name: str
    nodes: tuple[NodeObservation, ...] = ()
    paused: bool = False
    maintenance: bool = False
    refusal: str | None = None
    refused_at: datetime | None = None

    @property
    def held(self) -> bool:
        """Waves and convergence go around a paused site or one in maintenance."""
        return self.paused or self.maintenance

    @property
    def reachable(self) -> bool:
        """A site is disconnected when it has nodes and none of them is Ready."""
        return not self.nodes or any(node.ready for node in self.nodes)

    @property
    def blocked(self) -> str | None:
        """The refusal, while a Ready, unlocked node still has no pod: the workload cannot
        place its pods, and waiting will not change that. None once every such node has one
        (a refusal that was fixed, or one about a pod that is there now)."""
        if self.refusal is None or all(n.pod is not None for n in self.workable_nodes()):
            return None
        return self.refusal

    def workable_nodes(self) -> tuple[NodeObservation, ...]:
        """Ready, unlocked nodes in name order: the only ones whose pods may be replaced."""
        return tuple(sorted((n for n in self.nodes if n.workable), key=lambda n: n.name))
