"""Choosing what the edge serves: every candidate (one per compression method) measured on
size, accuracy and latency, judged against the edge budget and the evaluation gate, and the
smallest one that meets both chosen. When none does, the closest one is named with what it
missed. Pure: measured numbers in, a verdict table out; no files, no clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FLOAT32 = "float32"
INT8_DYNAMIC = "int8-dynamic"
INT8_STATIC = "int8-static"
FLOAT16 = "float16"
WEIGHT_SHARING = "weight-sharing"
STRUCTURED_PRUNING = "structured-pruning"
#: Every method, in the order the table lists them and ties are broken.
METHODS = (FLOAT32, INT8_DYNAMIC, INT8_STATIC, FLOAT16, WEIGHT_SHARING, STRUCTURED_PRUNING)

#: Without a latency budget a candidate may not be slower than the float model; latency
#: medians of equal graphs differ by a few percent from run to run, so "slower" means more
#: than this factor slower.
SLOWER_THAN_FLOAT_TOLERANCE = 1.10
#: ...and more than this many milliseconds slower: for a model that runs in microseconds,
#: session.run's own overhead dominates the median and a scheduling hiccup moves it by tens
#: of percent, while a served request (HTTP, decoding) costs at least a millisecond, so a
#: gap below this is neither measurable nor noticeable.
SLOWER_THAN_FLOAT_MARGIN_MS = 0.05


@dataclass(frozen=True)
class Budget:
    """The edge device's limits and the gate's floor. batch_size and threads say how latency
    is measured, and apply even without max_latency_ms."""

    max_size_bytes: int | None = None
    max_latency_ms: float | None = None
    batch_size: int = 1
    threads: int = 1
    min_accuracy: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"batchSize": self.batch_size, "threads": self.threads}
        if self.max_size_bytes is not None:
            values["maxSizeBytes"] = self.max_size_bytes
        if self.max_latency_ms is not None:
            values["maxLatencyMs"] = self.max_latency_ms
        values["minAccuracy"] = self.min_accuracy
        return values


@dataclass(frozen=True)
class Candidate:
    """One built file and what was measured of it."""

    method: str
    file: str
    size_bytes: int
    accuracy: float
    latency_ms: float


@dataclass(frozen=True)
class Verdict:
    candidate: Candidate
    misses: tuple[str, ...]  # empty when the candidate meets the budget and the gate
    shortfall: float  # how far it is from fitting, summed relative excess; 0 when it fits
    chosen: bool = False
    reason: str = ""

    @property
    def fits(self) -> bool:
        return not self.misses

    def to_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {
            "method": c.method,
            "file": c.file,
            "sizeBytes": c.size_bytes,
            "accuracy": round(c.accuracy, 6),
            "latencyMs": round(c.latency_ms, 4),
            "chosen": self.chosen,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Selection:
    budget: Budget
    verdicts: tuple[Verdict, ...]

    @property
    def chosen(self) -> Candidate | None:
        return next((v.candidate for v in self.verdicts if v.chosen), None)

    def closest(self) -> Verdict | None:
        """The candidate nearest to fitting (least summed relative excess)."""
        misses = [v for v in self.verdicts if not v.fits]
        return min(misses, key=lambda v: v.shortfall) if misses else None

    def failure_message(self) -> str:
        nearest = self.closest()
        if nearest is None:
            return "no compression candidate was built; list at least one method"
        others = ", ".join(
            f"{v.candidate.method} ({'; '.join(v.misses)})"
            for v in self.verdicts
            if v is not nearest
        )
        return (
            f"no candidate meets the edge budget and the evaluation gate; the closest is "
            f"{nearest.candidate.method}: {'; '.join(nearest.misses)}"
            + (f". Others: {others}" if others else "")
            + ". Raise spec.export.budget or lower spec.evaluation.threshold, or add methods"
        )

    def to_dict(self) -> dict[str, Any]:
        chosen = self.chosen
        return {
            "chosen": chosen.method if chosen else None,
            "budget": self.budget.to_dict(),
            "candidates": [v.to_dict() for v in self.verdicts],
        }


def judge(candidate: Candidate, budget: Budget, float_latency_ms: float | None) -> Verdict:
    """What `candidate` misses of the budget and the gate, and by how much in all."""
    misses: list[str] = []
    shortfall = 0.0
    if budget.max_size_bytes is not None and candidate.size_bytes > budget.max_size_bytes:
        misses.append(
            f"size {candidate.size_bytes:,} B exceeds maxSizeBytes {budget.max_size_bytes:,}"
        )
        shortfall += candidate.size_bytes / max(budget.max_size_bytes, 1) - 1
    latency_limit = budget.max_latency_ms
    if latency_limit is not None and candidate.latency_ms > latency_limit:
        misses.append(
            f"latency p50 {candidate.latency_ms:.3f} ms at batch {budget.batch_size} exceeds "
            f"maxLatencyMs {latency_limit:g}"
        )
        shortfall += candidate.latency_ms / max(latency_limit, 1e-9) - 1
    elif (
        latency_limit is None
        and float_latency_ms is not None
        and candidate.latency_ms > float_latency_ms * SLOWER_THAN_FLOAT_TOLERANCE
        and candidate.latency_ms > float_latency_ms + SLOWER_THAN_FLOAT_MARGIN_MS
    ):
        misses.append(
            f"latency p50 {candidate.latency_ms:.3f} ms at batch {budget.batch_size} is slower "
            f"than float32 ({float_latency_ms:.3f} ms) and no maxLatencyMs allows that"
        )
        shortfall += candidate.latency_ms / max(float_latency_ms, 1e-9) - 1
    if candidate.accuracy < budget.min_accuracy:
        misses.append(
            f"accuracy {candidate.accuracy:.4f} is below the threshold {budget.min_accuracy:g}"
        )
        shortfall += (budget.min_accuracy - candidate.accuracy) / max(budget.min_accuracy, 1e-9)
    return Verdict(candidate=candidate, misses=tuple(misses), shortfall=shortfall)


def _order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def select(
    candidates: Sequence[Candidate], budget: Budget, *, prefer: str | None = None
) -> Selection:
    """Judges every candidate and chooses the smallest that fits (ties: faster, then the
    order of METHODS). With `prefer`, that method is served as long as it was built, whatever
    it measures: the spec asked for it by name, and the gate still judges it."""
    float_latency = next((c.latency_ms for c in candidates if c.method == FLOAT32), None)
    verdicts = [judge(c, budget, float_latency) for c in candidates]
    if prefer is not None:
        pick = next((v for v in verdicts if v.candidate.method == prefer), None)
        reason_chosen = f"chosen: {prefer} was asked for"
    else:
        fitting = [v for v in verdicts if v.fits]
        pick = min(
            fitting,
            key=lambda v: (
                v.candidate.size_bytes,
                v.candidate.latency_ms,
                _order(v.candidate.method),
            ),
            default=None,
        )
        reason_chosen = "chosen: the smallest within the budget and the gate"
    table: list[Verdict] = []
    for verdict in sorted(verdicts, key=lambda v: _order(v.candidate.method)):
        if verdict is pick:
            reason = reason_chosen
        elif verdict.misses:
            reason = "; ".join(verdict.misses)
        elif pick is not None:
            reason = f"fits, but {pick.candidate.method} was chosen"
        else:
            reason = "fits"
        table.append(
            Verdict(verdict.candidate, verdict.misses, verdict.shortfall, verdict is pick, reason)
        )
    return Selection(budget=budget, verdicts=tuple(table))
