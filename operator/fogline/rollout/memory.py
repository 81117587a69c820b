"""What the planner remembers between reconciles. The controller persists it under the CR's
status (camelCase keys) and hands it back unchanged; the operator keeps no state elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

from fogline.api.edgedeployment import DeploymentPhase
from fogline.api.timestamps import parse_time

Phase = DeploymentPhase  # the CRD's status.phase, as the planner decides it

# Where the planner stands, independent of how it is shown: "Rollout" covers the first
# deploy and every wave; "Complete" converges to the stable digest; "RolledBack" converges
# back to it after a failure; "Failed" holds.
Stage = Literal["Rollout", "Complete", "RolledBack", "Failed"]


@dataclass(frozen=True)
class RolloutMemory:
    """Planner state between reconciles.

    ``wave_index`` is the index of the wave in progress, or of the next one when
    ``wave_sites`` is empty (wave 0 is the canary). ``site_digests`` is the digest each
    site's workload template carries. ``converging_sites`` are the sites whose pods are
    being replaced outside a wave (after completion or during a rollback).
    ``wave_stopped_seconds`` and ``clock_stopped_at`` keep the progress-deadline clock still
    while the rollout is paused or waits for a disconnected site.
    """

    target_digest: str | None = None
    stable_digest: str | None = None
    phase: Phase = "Pending"
    stage: Stage = "Rollout"
    wave_index: int = 0
    wave_sites: tuple[str, ...] = ()
    wave_started_at: datetime | None = None
    wave_stopped_seconds: float = 0.0
    clock_stopped_at: datetime | None = None
    next_wave_not_before: datetime | None = None
    completed_sites: tuple[str, ...] = ()
    skipped_sites: tuple[str, ...] = ()
    converging_sites: tuple[str, ...] = ()
    rolled_back_sites: tuple[str, ...] = ()
    site_digests: dict[str, str] = field(default_factory=dict)
    failed_site: str | None = None
    failure_message: str | None = None
    retry_observed: int = 0
    paused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "targetDigest": self.target_digest,
            "stableDigest": self.stable_digest,
            "phase": self.phase,
            "stage": self.stage,
            "waveIndex": self.wave_index,
            "waveSites": list(self.wave_sites),
            "waveStartedAt": _format_time(self.wave_started_at),
            "waveStoppedSeconds": self.wave_stopped_seconds,
            "clockStoppedAt": _format_time(self.clock_stopped_at),
            "nextWaveNotBefore": _format_time(self.next_wave_not_before),
            "completedSites": list(self.completed_sites),
            "skippedSites": list(self.skipped_sites),
            "convergingSites": list(self.converging_sites),
            "rolledBackSites": list(self.rolled_back_sites),
            "siteDigests": dict(sorted(self.site_digests.items())),
            "failedSite": self.failed_site,
            "failureMessage": self.failure_message,
            "retryObserved": self.retry_observed,
            "paused": self.paused,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RolloutMemory:
        """Read what ``to_dict`` wrote; missing keys (an older or empty status) take defaults."""
        if not data:
            return cls()
        phase = data.get("phase") or "Pending"
        stage = data.get("stage") or "Rollout"
        if phase not in get_args(Phase):
            raise ValueError(f"status.rollout.phase: unknown phase {phase!r}")
        if stage not in get_args(Stage):
            raise ValueError(f"status.rollout.stage: unknown stage {stage!r}")
        return cls(
            target_digest=data.get("targetDigest"),
            stable_digest=data.get("stableDigest"),
            phase=cast(Phase, phase),
            stage=cast(Stage, stage),
            wave_index=int(data.get("waveIndex", 0)),
            wave_sites=tuple(data.get("waveSites") or ()),
            wave_started_at=_parse_time(data.get("waveStartedAt")),
            wave_stopped_seconds=float(data.get("waveStoppedSeconds", 0.0)),
            clock_stopped_at=_parse_time(data.get("clockStoppedAt")),
            next_wave_not_before=_parse_time(data.get("nextWaveNotBefore")),
            completed_sites=tuple(data.get("completedSites") or ()),
            skipped_sites=tuple(data.get("skippedSites") or ()),
            converging_sites=tuple(data.get("convergingSites") or ()),
            rolled_back_sites=tuple(data.get("rolledBackSites") or ()),
            site_digests=dict(data.get("siteDigests") or {}),
            failed_site=data.get("failedSite"),
            failure_message=data.get("failureMessage"),
            retry_observed=int(data.get("retryObserved", 0)),
            paused=bool(data.get("paused", False)),
        )


def _format_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: str | None) -> datetime | None:
    """Strict, unlike parse_time: an unreadable time in the memory is a corrupt memory (which
    the controller reports), never a time that was not stamped."""
    parsed = parse_time(value)
    if value and parsed is None:
        raise ValueError(f"{value!r} is not an RFC 3339 time")
    return parsed
