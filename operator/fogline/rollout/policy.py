"""The rollout knobs of an EdgeDeployment (``spec.rollout``) as the planner reads them, and
the wave-width formula. Parsing and validation of the CR happen in the API layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fogline.api.edgedeployment import AnalysisSpec

DisconnectedPolicy = Literal["Skip", "Wait"]


def wave_width(max_unavailable: int | str, eligible_sites: int) -> int:
    """How many sites one wave may update at once.

    ``max_unavailable`` is a count of sites or a percentage ``"N%"`` of the eligible sites
    (sites neither paused nor in maintenance, reachable or not). Percentages round down;
    the width is never below 1, or a rollout could never finish::

        W = max(1, maxUnavailable)                            when a count
        W = max(1, floor(N * eligibleSites / 100))            when "N%"

    Worked examples:
        maxUnavailable=3,     10 eligible sites -> W = 3
        maxUnavailable="25%", 10 eligible sites -> floor(2.5)  = 2
        maxUnavailable="25%",  3 eligible sites -> floor(0.75) = 0 -> 1
        maxUnavailable="100%", 7 eligible sites -> 7 (everything at once after the canary)
        maxUnavailable=0                        -> 1
    """
    if isinstance(max_unavailable, int):
        return max(1, max_unavailable)
    text = max_unavailable.strip()
    if not text.endswith("%") or not text[:-1].strip().isdigit():
        raise ValueError(
            f"spec.rollout.maxUnavailable: {max_unavailable!r} is neither a count nor a "
            'percentage; use for example 2 or "25%"'
        )
    percent = int(text[:-1])
    return max(1, percent * max(0, eligible_sites) // 100)


@dataclass(frozen=True)
class RolloutPolicy:
    """``spec.rollout``: canary size, wave width, pacing, failure handling, and the metrics
    analysis a wave must pass once its pods are Ready (None: readiness is enough)."""

    canary_sites: int = 1
    max_unavailable: int | str = 1
    pause_seconds: float = 0.0
    progress_deadline_seconds: float = 600.0
    auto_rollback: bool = True
    paused: bool = False
    disconnected: DisconnectedPolicy = "Skip"
    retry: int = 0
    analysis: AnalysisSpec | None = None

    def width(self, eligible_sites: int) -> int:
        return wave_width(self.max_unavailable, eligible_sites)
