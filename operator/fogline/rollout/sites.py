"""Site predicates: what one observed site says about a digest (does it serve it, does a pod
on it fail, which pods move next). Pure functions of one ``SiteObservation``."""

from __future__ import annotations

from datetime import datetime, timedelta

from fogline.rollout.messages import short_digest
from fogline.rollout.observations import SiteObservation

# A wave's start is stamped once all its DaemonSets are written, and those writes may wait
# on a slow API server (up to the client's 30 s read timeout): a refusal of a DaemonSet the
# wave wrote first can predate the stamp by that much (Event times have whole seconds too).
REFUSAL_SLACK = timedelta(seconds=32)


def pod_failure(site: SiteObservation, digest: str) -> str | None:
    """The first pod on ``digest`` (on a Ready node, in node-name order) that reports it will
    not become healthy, as a message; None when no such pod."""
    for node in sorted(site.nodes, key=lambda n: n.name):
        if node.ready and node.pod is not None and node.pod.digest == digest and node.pod.failure:
            return f"node {node.name}: pod {node.pod.failure} on {short_digest(digest)}"
    return None


def converged(site: SiteObservation, digest: str) -> bool:
    """Every Ready, unlocked node serves ``digest`` (vacuously true for a site with none)."""
    return all(node.serves(digest) for node in site.workable_nodes())


def needs_replacement(site: SiteObservation, digest: str) -> bool:
    """A Ready, unlocked node runs a pod on another digest."""
    return any(n.pod is not None and n.pod.digest != digest for n in site.workable_nodes())


def replacements(site: SiteObservation, digest: str) -> tuple[str, ...]:
    """The nodes of ``site`` whose pods move to ``digest`` now.

    Pods that are not Ready serve nothing, so all of them go at once; Ready pods go one at
    a time, and only while no pod of the site is still coming up on ``digest``. With nodes
    n1 (Ready on the old digest), n2 (Ready on the old digest), n3 (old digest, not Ready):

        nothing coming up               -> (n3, n1)
        n1 starting on ``digest``       -> (n3,)   n2 waits until n1 is Ready
    """
    nodes = site.workable_nodes()
    behind = [n for n in nodes if n.pod is not None and n.pod.digest != digest]
    idle = [n.name for n in behind if n.pod is not None and not n.pod.ready]
    serving = [n.name for n in behind if n.pod is not None and n.pod.ready]
    coming_up = any(
        n.pod is None or (n.pod.digest == digest and not n.pod.ready and not n.pod.failure)
        for n in nodes
    )
    if serving and not coming_up:
        return (*idle, serving[0])
    return tuple(idle)


def refused_in_wave(site: SiteObservation, wave_started_at: datetime | None) -> str | None:
    """The workload's refusal to create a pod of the wave that started at
    ``wave_started_at``: it fails the wave at once, with the refusal's words, instead of at
    the progress deadline as "not Ready". A refusal older than the wave (one that was fixed
    before the wave took the site) does not count; REFUSAL_SLACK says how much older a
    refusal of this wave can look::

        wave started 12:00:40, refused at 12:00:10 -> the refusal (within the slack)
        wave started 12:00:40, refused at 12:00:00 -> None (older than the wave)
    """
    blocked = site.blocked
    if blocked is None or wave_started_at is None or site.refused_at is None:
        return blocked
    if site.refused_at < wave_started_at - REFUSAL_SLACK:
        return None
    return blocked
