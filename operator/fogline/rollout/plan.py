"""What the rollout planner hands back: the plan, its status rows, counts and Events. Plain
frozen values; the controller applies and persists them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fogline.api.edgedeployment import SiteState

__all__ = ["EventType", "PlanEvent", "RolloutCounts", "RolloutPlan", "SiteState", "SiteStatus"]
from fogline.rollout.analysis import AnalysisRequest
from fogline.rollout.memory import Phase, RolloutMemory

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class PlanEvent:
    """An Event for the EdgeDeployment; emitted only on a transition."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class SiteStatus:
    """One row of ``status.sites``. ``digest`` is the site's template digest (None: no
    workload yet); ``updated`` counts pods on it, ``ready`` the Ready ones on Ready nodes."""

    name: str
    digest: str | None
    state: SiteState
    desired: int
    updated: int
    ready: int
    reachable: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest or "",
            "state": self.state,
            "desired": self.desired,
            "updated": self.updated,
            "ready": self.ready,
            "reachable": self.reachable,
            "message": self.message,
        }


@dataclass(frozen=True)
class RolloutCounts:
    """``status.counts``. Updated means running the target digest; a ready site has every
    node Ready with a Ready pod on its template digest."""

    sites: int
    sites_updated: int
    sites_ready: int
    nodes: int
    nodes_updated: int
    nodes_ready: int

    def to_dict(self) -> dict[str, int]:
        return {
            "sites": self.sites,
            "sitesUpdated": self.sites_updated,
            "sitesReady": self.sites_ready,
            "nodes": self.nodes,
            "nodesUpdated": self.nodes_updated,
            "nodesReady": self.nodes_ready,
        }


@dataclass(frozen=True)
class RolloutPlan:
    """What the controller does now.

    ``site_digests``: the digest each site's workload template must carry; a site absent
    here has no workload (held before it ever got one, or removed). ``replace_pods_on``:
    nodes whose pod must be deleted now so that it comes back from its site's template.
    ``memory``: persist it and pass it back next time. ``requeue_after``: seconds until the
    planner wants to be asked again even if nothing changes (end of a pause, a deadline).
    ``analyze``: the wave analysis to run, its verdict to be handed to the next call.
    """

    site_digests: dict[str, str]
    replace_pods_on: tuple[str, ...]
    memory: RolloutMemory
    phase: Phase
    sites: tuple[SiteStatus, ...]
    events: tuple[PlanEvent, ...]
    requeue_after: float | None
    counts: RolloutCounts
    message: str
    analyze: AnalysisRequest | None = None
