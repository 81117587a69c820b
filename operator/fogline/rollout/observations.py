"""What the rollout planner is told about the fleet: sites, their edge nodes and the pods on
them, as seen at one reconcile. Plain frozen values; building them from the API is the
controller's job."""

from __future__ import annotations

from dataclasses import dataclass


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
    its nodes is labelled ``fogline.io/maintenance=true``.
    """

    name: str
    nodes: tuple[NodeObservation, ...] = ()
    paused: bool = False
    maintenance: bool = False

    @property
    def held(self) -> bool:
        """Waves and convergence go around a paused site or one in maintenance."""
        return self.paused or self.maintenance

    @property
    def reachable(self) -> bool:
        """A site is disconnected when it has nodes and none of them is Ready."""
        return not self.nodes or any(node.ready for node in self.nodes)

    def workable_nodes(self) -> tuple[NodeObservation, ...]:
        """Ready, unlocked nodes in name order: the only ones whose pods may be replaced."""
        return tuple(sorted((n for n in self.nodes if n.workable), key=lambda n: n.name))
