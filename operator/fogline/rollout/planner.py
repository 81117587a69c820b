"""The rollout planner: observed sites, the policy and remembered state in; template digests,
pods to replace, status and events out. Pure: no I/O, no clock reads, no Kubernetes types.
The rules, with worked examples, are in docs/rollout.md; ``plan_rollout`` states them briefly
and chains them: ``rules.RULES`` in order, then ``report.report``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from fogline.rollout.analysis import WaveAnalysis
from fogline.rollout.memory import RolloutMemory
from fogline.rollout.messages import site_names_text
from fogline.rollout.observations import SiteObservation
from fogline.rollout.plan import RolloutPlan
from fogline.rollout.policy import RolloutPolicy
from fogline.rollout.report import report
from fogline.rollout.rules import RULES
from fogline.rollout.state import PlanInputs, Progress

# site_names_text is read from here by callers that format site lists as the planner does.
__all__ = ["plan_rollout", "site_names_text"]


def plan_rollout(
    sites: Sequence[SiteObservation],
    policy: RolloutPolicy,
    memory: RolloutMemory,
    target_digest: str,
    now: datetime,
    analysis: WaveAnalysis | None = None,
) -> RolloutPlan:
    """Decide the next step of the rollout of ``target_digest``.

    The rules, in order (docs/rollout.md has them in full):

    1. A target different from ``memory.target_digest``, or ``policy.retry`` above
       ``memory.retry_observed`` after a failure, starts a rollout from wave 0.
    2. ``policy.paused``: nothing is replaced, no wave starts, the deadline clock stops.
    3. Without a stable digest (first deploy) wave 0 is every eligible site. Otherwise wave
       0 is the canary, ``canary_sites`` sites, then waves of W sites (``wave_width``),
       in site-name order, ``pause_seconds`` apart. Eligible: neither paused nor in
       maintenance; under ``disconnected == "Skip"`` also reachable.
    4. Inside a wave site, every Ready, unlocked node moves to the target: pods that are
       not Ready are replaced at once, Ready ones one at a time, and only when no pod of the
       site is still coming up, so a site keeps serving during its update.
    5. A wave succeeds when every Ready, unlocked node of its sites serves the target
       and, with ``policy.analysis``, ``analysis`` (the verdict on this wave's metrics,
       asked for in ``RolloutPlan.analyze``) passed. It fails when a pod on the target
       reports a failure, when the workload refuses a pod of the wave, when the analysis
       fails (or ends inconclusive under ``inconclusive: Fail``), or when the progress
       deadline passes first; the clock stops while a wave waits for a disconnected site
       (Wait). An inconclusive wave is never promoted.
    6. On failure, with ``auto_rollback`` and a stable digest to return to, every site
       not on the stable digest converges back to it (phase RolledBack); otherwise the
       rollout holds (phase Failed).
    7. After completion (and during a rollback) sites that fall behind converge without a
       new rollout, at most W at a time; a site whose new pods fail keeps its slot.
    8. A target becomes stable only once a site was seen serving it: with every remaining
       site unreachable, held or locked, the rollout waits rather than completes.
    """
    inputs = PlanInputs.of(sites, policy, memory, target_digest, now, analysis)
    progress = Progress.recall(inputs)
    for rule in RULES:
        progress = rule(inputs, progress)
    return report(inputs, progress)
