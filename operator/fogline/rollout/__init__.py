"""The EdgeDeployment rollout planner: a pure function from observed sites, policy and
remembered state to the next actions. No I/O, no clock, no Kubernetes client in here."""

from fogline.rollout.memory import Phase, RolloutMemory, Stage
from fogline.rollout.messages import short_digest
from fogline.rollout.observations import NodeObservation, PodObservation, SiteObservation
from fogline.rollout.plan import PlanEvent, RolloutCounts, RolloutPlan, SiteState, SiteStatus
from fogline.rollout.planner import plan_rollout
from fogline.rollout.policy import DisconnectedPolicy, RolloutPolicy, wave_width

__all__ = [
    "DisconnectedPolicy",
    "NodeObservation",
    "Phase",
    "PlanEvent",
    "PodObservation",
    "RolloutCounts",
    "RolloutMemory",
    "RolloutPlan",
    "RolloutPolicy",
    "SiteObservation",
    "SiteState",
    "SiteStatus",
    "Stage",
    "plan_rollout",
    "short_digest",
    "wave_width",
]
