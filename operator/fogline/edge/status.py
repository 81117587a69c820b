"""The EdgeDeployment's status from the planner's plan: conditions, counts, the bounded
list of sites, the wave, and the revision history (with the rollback digests it gives each
site's DaemonSet), and the analysis verdicts of the waves. Pure: `now` is passed in; edge/observe.py reads the fleet for the plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fogline.api.conditions import set_condition
from fogline.api.digests import short_digest
from fogline.api.edgedeployment import EdgeDeployment, sites_ready_text
from fogline.api.timestamps import rfc3339
from fogline.rollout import RolloutPlan
from fogline.rollout.analysis import MetricResult, WaveAnalysis

# status.analysis.waves keeps this many finished analyses, newest first.
MAX_ANALYSED_WAVES = 20


def _result_dict(result: MetricResult) -> dict[str, Any]:
    row: dict[str, Any] = {"metric": result.metric, "threshold": result.threshold}
    if result.value is not None:
        row["value"] = round(result.value, 6)
    if result.baseline is not None:
        row["baseline"] = round(result.baseline, 6)
    if result.site:
        row["site"] = result.site
    row["passed"] = result.passed
    if result.message:
        row["message"] = result.message[:256]
    return row


def _verdict_dict(analysis: WaveAnalysis, ended: bool) -> dict[str, Any]:
    verdict = analysis.verdict
    phase, message = verdict.phase, verdict.message
    if ended and phase == "Running":
        # The wave ended (its deadline passed, a pod failed, a new rollout began) with the
        # window still open: no answer came.
        phase, message = "Inconclusive", f"the wave ended before its window did ({message})"
    shown: dict[str, Any] = {
        "wave": analysis.wave,
        "digest": analysis.digest,
        "phase": phase,
        "startedAt": rfc3339(verdict.started_at),
        "requests": verdict.requests,
        "pods": verdict.pods,
        "baselinePods": verdict.baseline_pods,
        "results": [_result_dict(r) for r in verdict.results],
        "message": message[:1024],
    }
    if verdict.failure is not None:
        failure = verdict.failure
        shown["failure"] = {
            "site": failure.site,
            "metric": failure.metric,
            "value": round(failure.value, 6),
            "threshold": failure.threshold,
        }
    return shown


def analysis_status(
    previous: Mapping[str, Any] | None,
    ended: WaveAnalysis | None,
    current: WaveAnalysis | None,
    now: datetime,
) -> dict[str, Any] | None:
    """status.analysis: the verdict of the wave under analysis (``current``), else of the
    one that just ended, else as it was; an ``ended`` analysis (the planner no longer asks
    for it) goes first into ``waves``, which keeps MAX_ANALYSED_WAVES."""
    if ended is None and current is None:
        return dict(previous) if previous else None
    waves = [dict(w) for w in (previous or {}).get("waves") or []]
    if ended is not None:
        done = _verdict_dict(ended, ended=True)
        entry = {key: done[key] for key in ("wave", "digest", "phase", "requests", "message")}
        entry["finishedAt"] = rfc3339(now)
        entry["results"] = done["results"]
        waves = [entry, *waves][:MAX_ANALYSED_WAVES]
    shown = _verdict_dict(current, ended=False) if current is not None else done
    if waves:
        shown["waves"] = waves
    return shown


def build_status(
    edge: EdgeDeployment,
    plan: RolloutPlan,
    target_uri: str,
    history: Sequence[Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """The status merge patch for a plan."""
    memory = plan.memory
    counts = plan.counts
    previous = [c.to_dict() for c in edge.status.conditions or ()]
    generation = edge.generation
    available = plan.phase in ("Available", "Degraded")
    conditions = set_condition(
        previous,
        "ModelResolved",
        True,
        "ArtifactResolved",
        f"serving {short_digest(memory.target_digest)} from {target_uri}",
        generation,
        now,
    )
    conditions = set_condition(
        conditions, "Available", available, plan.phase, plan.message or plan.phase, generation, now
    )
    progressing = plan.phase in ("Progressing", "Pending")
    conditions = set_condition(
        conditions,
        "Progressing",
        progressing,
        plan.phase,
        plan.message or plan.phase,
        generation,
        now,
    )
    degraded = plan.phase in ("Degraded", "RolledBack", "Failed")
    conditions = set_condition(
        conditions, "Degraded", degraded, plan.phase, plan.message or plan.phase, generation, now
    )
    rows, omitted = bounded_site_rows([site.to_dict() for site in plan.sites])
    status: dict[str, Any] = {
        "phase": plan.phase,
        "observedGeneration": generation,
        "conditions": conditions,
        "currentDigest": memory.stable_digest,
        "currentDigestShort": short_digest(memory.stable_digest) if memory.stable_digest else None,
        "targetDigest": memory.target_digest,
        "targetUri": target_uri,
        "sitesReady": sites_ready_text(counts.sites_ready, counts.sites),
        "counts": counts.to_dict(),
        "sites": rows,
        "sitesOmitted": omitted or None,
        "wave": {
            "index": memory.wave_index,
            # The first deployment's wave is every site: the list is bounded like status.sites.
            "sites": list(memory.wave_sites[:MAX_SITE_ROWS]),
            "siteCount": len(memory.wave_sites),
            "startedAt": rfc3339(memory.wave_started_at) if memory.wave_started_at else None,
        },
        "failedSite": memory.failed_site,
        "message": plan.message,
        "history": list(history),
        "rollout": memory.to_dict(),
    }
    return status


# Status keys that move with every pod transition (a node's pod goes, its new one becomes
# Ready) or every analysis sample, and that nothing reads back: the planner's memory lives
# in status.rollout. A change confined to these may wait a little, so that one patch
# carries many transitions; what an analysis decides moves the memory and goes at once.
PROGRESS_KEYS = frozenset({"counts", "sitesReady", "sites", "sitesOmitted", "analysis"})


def progress_only(patch: Mapping[str, Any]) -> bool:
    """Whether a status patch changes only progress figures (PROGRESS_KEYS): such a patch
    may be coalesced with the next ones; any other change (phase, wave, conditions, the
    planner's memory, history) is written at once, carrying the progress with it."""
    return bool(patch) and patch.keys() <= PROGRESS_KEYS


# status.sites lists at most this many sites (the CRD allows 1,024 items): the ones that
# need a look first (failing, updating, unreachable, pending, ...), then Ready ones by name.
# status.counts covers every site and status.sitesOmitted says how many were left out, so
# the object stays small at any fleet size.
MAX_SITE_ROWS = 100


_ROW_ORDER = {
    state: rank
    for rank, state in enumerate(
        ("Failed", "Unreachable", "Updating", "RolledBack", "Skipped", "Paused", "Pending", "Ready")
    )
}


def bounded_site_rows(
    rows: Sequence[Mapping[str, Any]], limit: int = MAX_SITE_ROWS
) -> tuple[list[dict[str, Any]], int]:
    """At most `limit` site rows, the ones that need attention first, listed by name; and
    how many were left out."""
    if len(rows) <= limit:
        return [dict(r) for r in rows], 0
    ranked = sorted(rows, key=lambda r: (_ROW_ORDER.get(str(r.get("state")), 8), str(r["name"])))
    kept = sorted(ranked[:limit], key=lambda r: str(r["name"]))
    return [dict(r) for r in kept], len(rows) - limit


def next_history(
    history: Sequence[Mapping[str, Any]],
    stable_digest: str | None,
    uri: str,
    limit: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """Revision history: a new entry when a digest becomes the stable one, newest first,
    at most `limit` entries."""
    entries = [dict(h) for h in history]
    if not stable_digest or (entries and entries[0].get("digest") == stable_digest):
        return entries[:limit]
    revision = max((int(h.get("revision") or 0) for h in entries), default=0) + 1
    entry = {"revision": revision, "digest": stable_digest, "uri": uri, "deployedAt": rfc3339(now)}
    return [entry, *entries][:limit]


def rollback_targets(
    history: Sequence[Mapping[str, Any]], digest: str, limit: int
) -> tuple[str, ...]:
    """The digests a site serving `digest` could roll back to, most recent first, at most
    `limit`: what status.history lists as deployed before `digest` first was. Counting from its
    oldest entry keeps the answer the same when `digest` becomes stable (a new entry on top), so
    the DaemonSet's template, which carries the answer, does not change then."""
    digests = [h.get("digest") for h in history]
    if digest in digests:
        digests = digests[len(digests) - digests[::-1].index(digest) :]
    older = [d for d in digests if isinstance(d, str) and d != digest]
    return tuple(dict.fromkeys(older))[:limit]
