"""The EdgeDeployment controller on a fleet of kwok nodes (200 sites x 5 by default): the
first deployment, a digest rollout and a rollback to the previous digest, each timed and
its API requests counted from the audit log, against the lower bound measured in the same
run: a plain script doing the same child updates in the same waves with the same client.
It also samples the operator process (/proc: peak RSS, CPU seconds per phase) and the size
of the EdgeDeployment object; and then rolls 10 EdgeDeployments at once over the fleet (each
on a tenth of the sites) and prints how soon after its spec change each one's first wave
started.

Run: .venv/bin/python bench/bench_rollout.py [--sites 200] [--nodes-per-site 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kopf
from bench.fleet import (
    OPERATOR_ENV,
    ApiRequest,
    FirstSeen,
    Informer,
    MeasuredCluster,
    audit_now,
    by_verb,
    by_verb_and_resource,
    create_namespace,
    format_counts,
    measured_cluster,
    object_name,
    percentile,
)
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from fogline.api.crds import GROUP, VERSION
from fogline.api.edgedeployment import EdgeDeployment
from fogline.devcluster import Topology
from fogline.edge.daemonsets import (
    DIGEST_ANNOTATION,
    EDGE_LABEL,
    ModelRef,
    build_site_daemonset,
    daemonset_name,
)
from fogline.edge.observe import pod_ready
from fogline.kube import FIELD_MANAGER
from fogline.rollout import wave_width
from fogline.settings import OperatorSettings

OLD = "sha256:" + "a1" * 32
NEW = "sha256:" + "b2" * 32
URI = "https://models.example/digits"
ROLLOUT = {
    "canarySites": 1,
    "maxUnavailable": "20%",
    "pauseSeconds": 0,
    "progressDeadlineSeconds": 3600,
}
NAME = "fleet"


def edge_body(namespace: str, digest: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EdgeDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {"model": {"uri": URI, "digest": digest}, "rollout": ROLLOUT},
    }


def waves(sites: list[str]) -> list[list[str]]:
    """The controller's waves for a fleet with a stable digest and every site eligible: the
    canary, then waves of the planner's wave width, in site-name order (its rule 3)."""
    rollout = EdgeDeployment.from_body(edge_body("x", NEW)).spec.rollout
    ordered = sorted(sites)
    canary = min(rollout.canary_sites, len(ordered))
    width = wave_width(rollout.max_unavailable, len(ordered))
    rest = ordered[canary:]
    return [ordered[:canary], *(rest[i : i + width] for i in range(0, len(rest), width))]


class PodsByNode(Informer):
    """The edge pods of one namespace, grouped by node."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        super().__init__(
            core.list_namespaced_pod, namespace=namespace, label_selector=f"{EDGE_LABEL}={NAME}"
        )
        self.on_node: dict[str, dict[str, dict[str, Any]]] = {}

    def changed(self, kind: str, obj: dict[str, Any]) -> None:
        node = (obj.get("spec") or {}).get("nodeName")
        if not node:
            return
        pods = self.on_node.setdefault(node, {})
        if kind == "DELETED":
            pods.pop(obj["metadata"]["name"], None)
        else:
            pods[obj["metadata"]["name"]] = obj

    def serving(self, node: str, digest: str) -> bool:
        return any(
            not p["metadata"].get("deletionTimestamp")
            and (p["metadata"].get("annotations") or {}).get(DIGEST_ANNOTATION) == digest
            and pod_ready(p)
            for p in self.on_node.get(node, {}).values()
        )

    def current_pod(self, node: str) -> str | None:
        for name, pod in self.on_node.get(node, {}).items():
            if not pod["metadata"].get("deletionTimestamp"):
                return name
        return None

    def all_serving(self, nodes: list[str], digest: str) -> bool:
        return all(self.serving(n, digest) for n in nodes)


class Reactions(Informer):
    """How long a controller takes to act on a pod that became Ready: a site replaces its
    nodes' pods one at a time, so each delete of a site's next pod follows the Ready of its
    last new one. Both are seen by this one watch (which delivers them in order), for the
    operator and the script alike; the first delete of a site in a wave follows no Ready
    and is not counted. The operator's extra time over the script is mostly this, summed
    over a wave's steps."""

    def __init__(
        self, core: client.CoreV1Api, namespace: str, fleet: dict[str, list[str]], digest: str
    ) -> None:
        super().__init__(
            core.list_namespaced_pod, namespace=namespace, label_selector=f"{EDGE_LABEL}={NAME}"
        )
        self.site_of = {node: site for site, nodes in fleet.items() for node in nodes}
        self.digest = digest
        self.seconds: list[float] = []
        self._seen_ready: set[str] = set()
        self._going: set[str] = set()
        self._ready_at: dict[str, float] = {}  # by site: its newest pod's Ready, not yet acted on

    def changed(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        meta = obj["metadata"]
        site = self.site_of.get((obj.get("spec") or {}).get("nodeName") or "")
        if site is None:
            return
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            if meta["name"] not in self._going:
                self._going.add(meta["name"])
                ready_at = self._ready_at.pop(site, None)
                if ready_at is not None:
                    self.seconds.append(now - ready_at)
        elif (
            meta["name"] not in self._seen_ready
            and (meta.get("annotations") or {}).get(DIGEST_ANNOTATION) == self.digest
            and pod_ready(obj)
        ):
            self._seen_ready.add(meta["name"])
            self._ready_at[site] = now

    def summary(self) -> str:
        if not self.seconds:
            return "no step seen"
        return (
            f"p50 {percentile(self.seconds, 50) * 1000:.0f} ms, p95 "
            f"{percentile(self.seconds, 95) * 1000:.0f} ms over {len(self.seconds)} steps"
        )


def site_nodes(core: client.CoreV1Api, sites: int, per_site: int) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for node in core.list_node(label_selector="node-role.kubernetes.io/edge=true").items:
        grouped.setdefault(node.metadata.labels["topology.fogline.io/site"], []).append(
            node.metadata.name
        )
    assert len(grouped) == sites and all(len(n) == per_site for n in grouped.values()), grouped
    return {site: sorted(nodes) for site, nodes in grouped.items()}


def lower_bound(
    rig: MeasuredCluster, fleet: dict[str, list[str]], namespace: str, source: str, target: str
) -> Phase:
    """The same child updates without the operator (stopped by now), on the same DaemonSets,
    from `source` to `target`, as directly as the rules allow: per wave, apply its sites'
    DaemonSets; inside each site (sites in parallel) replace one node's pod at a time and
    wait for the new pod to be Ready, as the controller does so that a site keeps serving."""
    core, apps = client.CoreV1Api(rig.api), client.AppsV1Api(rig.api)
    owner = client.CustomObjectsApi(rig.api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "edgedeployments", NAME
    )
    edge = EdgeDeployment.from_body(owner)
    settings = OperatorSettings.from_env(OPERATOR_ENV)
    nodes = [n for site in fleet.values() for n in site]

    def apply(site: str) -> None:
        body = build_site_daemonset(edge, site, ModelRef(URI, target), settings)
        kopf.adopt(body, owner=owner)  # as the operator leaves it: owned by the CR
        apps.patch_namespaced_daemon_set(
            daemonset_name(NAME, site),
            namespace,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    def roll_site(pods: PodsByNode, site: str) -> None:
        for node in fleet[site]:
            old = pods.current_pod(node)
            if old is not None:
                core.delete_namespaced_pod(old, namespace)
            pods.wait_until(partial(pods.serving, node, target), 300, f"{node} on the target")

    with (
        PodsByNode(core, namespace) as pods,
        Reactions(core, namespace, fleet, target) as reactions,
        ThreadPoolExecutor(32) as pool,
    ):
        pods.wait_until(lambda: pods.all_serving(nodes, source), 600, "every node on the source")
        since, started = audit_now(), time.monotonic()
        for wave in waves(list(fleet)):
            list(pool.map(apply, wave))
            list(pool.map(lambda s: roll_site(pods, s), wave))
        elapsed = time.monotonic() - started
        until = audit_now()
    return Phase(
        "direct script (lower bound)",
        elapsed,
        rig.requests(since, until, user="fogline-admin"),
        reactions=reactions,
    )


MIB = 1024 * 1024


class ProcessSampler:
    """Samples one process's resident memory from /proc every `interval` seconds in a thread
    (the peak), and reads its CPU seconds (user + system) on demand."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def rss(self) -> int:
        """Resident set size in bytes, 0 once the process is gone."""
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
        return 0

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as stat:
            # Fields after the command name, which is in parentheses and may hold spaces.
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, self.rss())


class Phase:
    """One measured stretch: its time, the requests of whoever did the work, and (for the
    operator) its CPU seconds, its RSS at the end and the EdgeDeployment's size then."""

    def __init__(
        self,
        title: str,
        seconds: float,
        requests: list[ApiRequest],
        cpu: float | None = None,
        rss: int | None = None,
        object_bytes: int | None = None,
        reactions: Reactions | None = None,
    ) -> None:
        self.title, self.seconds, self.requests = title, seconds, requests
        self.cpu, self.rss, self.object_bytes = cpu, rss, object_bytes
        self.reactions = reactions

    @property
    def writes(self) -> list[ApiRequest]:
        return [r for r in self.requests if r.is_write]

    @property
    def status_patches(self) -> int:
        return sum(1 for r in self.writes if r.resource == "edgedeployments/status")


def available_on(digest: str) -> Any:
    """Done: the digest is the stable one. Degraded counts too: on a loaded machine kwok's
    heartbeats lag and a few nodes may be NotReady when the last wave completes."""

    def accept(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        done = status.get("phase") in ("Available", "Degraded")
        return bool(done and status.get("currentDigest") == digest)

    return accept


def watch_edges(custom: client.CustomObjectsApi, namespace: str, digest: str) -> FirstSeen:
    return FirstSeen(
        custom.list_namespaced_custom_object,
        object_name,
        available_on(digest),
        group=GROUP,
        version=VERSION,
        namespace=namespace,
        plural="edgedeployments",
    )


def object_size(custom: client.CustomObjectsApi, namespace: str) -> int:
    """Bytes of the EdgeDeployment as JSON, as etcd's object size limit counts it (near
    enough: etcd stores protobuf-free JSON for custom resources)."""
    got = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "edgedeployments", NAME, _preload_content=False
    )
    return len(json.dumps(json.loads(got.data), separators=(",", ":")))


def reconcile_totals(rig: MeasuredCluster) -> tuple[float, float]:
    """EdgeDeployment reconciles run so far and the seconds they took, from the operator's
    own metrics."""
    count = seconds = 0.0
    for family in text_string_to_metric_families(rig.operator.metrics()):
        for sample in family.samples:
            if sample.labels.get("kind") != "EdgeDeployment":
                continue
            if sample.name == "fogline_reconcile_duration_seconds_count":
                count += sample.value
            elif sample.name == "fogline_reconcile_duration_seconds_sum":
                seconds += sample.value
    return count, seconds


def operator_phases(
    rig: MeasuredCluster, namespace: str, fleet: dict[str, list[str]], at_once: int
) -> tuple[list[Phase], int, int]:
    """The operator's first deployment (OLD), the rollout to NEW and the rollback to OLD,
    each until the CR is Available on its digest; the operator's requests (opened watches
    included in the first), CPU seconds and RSS per phase. Returns the phases, the peak RSS
    and the RSS after a quiet spell at the end; then, with `at_once`, many_at_once. Stops
    the operator at the end."""
    create_namespace(rig.api, namespace)
    custom = client.CustomObjectsApi(rig.api)
    rig.operator.start()
    assert rig.operator.process is not None
    phases: list[Phase] = []
    with ProcessSampler(rig.operator.process.pid) as sampler:
        # Started and its watches listed: the fleet's nodes are in its index, no CR yet.
        time.sleep(10)
        print(f"operator RSS with the fleet indexed, before any CR: {sampler.rss() / MIB:.0f} MiB")
        for title, digest in (("first deployment", OLD), ("rollout", NEW), ("rollback", OLD)):
            reconciles, reconcile_seconds = reconcile_totals(rig)
            with (
                watch_edges(custom, namespace, digest) as seen,
                Reactions(client.CoreV1Api(rig.api), namespace, fleet, digest) as reactions,
            ):
                since, started, cpu = audit_now(), time.monotonic(), sampler.cpu_seconds()
                if title == "first deployment":
                    custom.create_namespaced_custom_object(
                        GROUP, VERSION, namespace, "edgedeployments", edge_body(namespace, OLD)
                    )
                else:
                    custom.patch_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        namespace,
                        "edgedeployments",
                        NAME,
                        {"spec": {"model": {"digest": digest}}},
                    )
                elapsed = seen.wait([NAME], timeout=900)[NAME] - started
                until = audit_now()
            count, seconds = reconcile_totals(rig)
            requests = rig.requests(since, until)
            done = Phase(
                f"operator {title}",
                elapsed,
                requests,
                cpu=sampler.cpu_seconds() - cpu,
                rss=sampler.rss(),
                object_bytes=object_size(custom, namespace),
                reactions=reactions,
            )
            phases.append(done)
            print(
                f"operator {title}: {elapsed:.1f} s, {len(requests)} requests, "
                f"{len(done.writes)} writes ({format_counts(by_verb_and_resource(done.writes))}), "
                f"CPU {done.cpu:.1f} s, RSS {sampler.rss() / MIB:.0f} MiB, object "
                f"{done.object_bytes} B; {count - reconciles:.0f} reconciles, "
                f"{(seconds - reconcile_seconds) / max(1, count - reconciles) * 1000:.1f} ms each",
                flush=True,
            )
        # A quiet spell: a settled fleet must not grow the operator (a leak shows here).
        cpu = sampler.cpu_seconds()
        time.sleep(20)
        settled = sampler.rss()
        print(
            f"operator CPU in a 20 s quiet spell: {sampler.cpu_seconds() - cpu:.2f} s", flush=True
        )
        if at_once:
            many_at_once(rig, sorted(fleet), at_once)
        peak = max(sampler.peak_rss, settled)
    rig.operator.stop()
    return phases, peak, settled


def many_at_once(rig: MeasuredCluster, sites: list[str], count: int) -> None:
    """`count` EdgeDeployments in one namespace, each over its own share of the sites
    (together the whole fleet once more), deployed at once, then changed to a new digest at
    once: how long after its spec change each starts its first wave (seen in its status),
    and the spread, so that a starved rollout shows."""
    namespace = "many"
    create_namespace(rig.api, namespace)
    custom = client.CustomObjectsApi(rig.api)
    share = -(-len(sites) // count)
    names = [f"fleet-{i}" for i in range(count)]

    def body(i: int) -> dict[str, Any]:
        spec = edge_body(namespace, OLD)
        spec["metadata"]["name"] = names[i]
        spec["spec"]["placement"] = {"sites": sites[i * share : (i + 1) * share]}
        return spec

    def started_on(digest: str) -> Any:
        def accept(obj: dict[str, Any]) -> bool:
            status = obj.get("status") or {}
            rollout = status.get("rollout") or {}
            return bool(rollout.get("targetDigest") == digest and rollout.get("waveStartedAt"))

        return accept

    def watch(accept: Any) -> FirstSeen:
        return FirstSeen(
            custom.list_namespaced_custom_object,
            object_name,
            accept,
            group=GROUP,
            version=VERSION,
            namespace=namespace,
            plural="edgedeployments",
        )

    with watch(available_on(OLD)) as available, watch(started_on(OLD)) as first_wave:
        started = time.monotonic()
        for i in range(count):
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "edgedeployments", body(i)
            )
        waves_at = first_wave.wait(names, timeout=600)
        report_waves("first deployment", started, waves_at)
        done = available.wait(names, timeout=900)
    report_done("first deployment", started, done)
    with watch(available_on(NEW)) as available, watch(started_on(NEW)) as first_wave:
        changed: dict[str, float] = {}
        for name in names:
            changed[name] = time.monotonic()
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                "edgedeployments",
                name,
                {"spec": {"model": {"digest": NEW}}},
            )
        waves_at = first_wave.wait(names, timeout=600)
        report_waves("rollout", changed, waves_at)
        done = available.wait(names, timeout=900)
    report_done("rollout", changed, done)


def _since(started: float | dict[str, float], name: str) -> float:
    return started[name] if isinstance(started, dict) else started


def report_waves(title: str, started: float | dict[str, float], waves_at: dict[str, float]) -> None:
    first = sorted(at - _since(started, name) for name, at in waves_at.items())
    print(
        f"{len(first)} EdgeDeployments at once, {title}: first wave started after "
        f"{first[0]:.1f} .. {first[-1]:.1f} s (spread {first[-1] - first[0]:.1f} s)",
        flush=True,
    )


def report_done(title: str, started: float | dict[str, float], done: dict[str, float]) -> None:
    finished = sorted(at - _since(started, name) for name, at in done.items())
    print(f"  {title}: Available after {finished[0]:.1f} .. {finished[-1]:.1f} s", flush=True)


def report(
    used: Topology, phases: list[Phase], direct: Phase, peak: int, settled: int
) -> Iterator[str]:
    sites, nodes = used.edge_sites, used.edge_sites * used.nodes_per_site
    site_names = [f"site-{i:03d}" for i in range(sites)]
    yield (
        f"fleet: {sites} sites x {used.nodes_per_site} nodes = {nodes} kwok edge nodes; "
        f"waves {[len(w) for w in waves(site_names)]}"
    )
    yield (
        "\nphase                          time      requests  writes  writes/node  "
        "status patches (/site)  CPU s   RSS MiB  object KiB"
    )
    for phase in [*phases, direct]:
        w = len(phase.writes)
        cpu = f"{phase.cpu:6.1f}" if phase.cpu is not None else "     -"
        rss = f"{phase.rss / MIB:7.0f}" if phase.rss is not None else "      -"
        size = (
            f"{phase.object_bytes / 1024:9.1f}" if phase.object_bytes is not None else "        -"
        )
        yield (
            f"  {phase.title:<28} {phase.seconds:6.1f} s  {len(phase.requests):8d}  {w:6d}  "
            f"{w / nodes:10.2f}  {phase.status_patches:8d} ({phase.status_patches / sites:5.2f})"
            f"     {cpu}  {rss}  {size}"
        )
    for phase in phases[1:]:
        yield (
            f"  ratio {phase.title} / lower bound: time {phase.seconds / direct.seconds:.2f}x, "
            f"requests {len(phase.requests) / len(direct.requests):.2f}x, writes "
            f"{len(phase.writes) / len(direct.writes):.2f}x"
        )
    yield "from a site's new pod Ready to the delete of its next node's pod:"
    script = direct.reactions.seconds if direct.reactions is not None else []
    for phase in [*phases[1:], direct]:
        if phase.reactions is None:
            continue
        line = f"  {phase.title:<28} {phase.reactions.summary()}"
        if phase is not direct and phase.reactions.seconds and script:
            p50 = percentile(phase.reactions.seconds, 50) / percentile(script, 50)
            line += f" ({p50:.1f}x the script's p50)"
        yield line
    yield f"operator peak RSS {peak / MIB:.0f} MiB; after a 20 s quiet spell {settled / MIB:.0f} MiB"
    last = phases[-1]
    if last.object_bytes is not None:
        per_site = last.object_bytes / sites
        yield (
            f"EdgeDeployment object: {last.object_bytes / 1024:.1f} KiB at {sites} sites "
            f"({per_site:.0f} B/site; at 1,000 sites about {per_site * 1000 / MIB:.2f} MiB if it "
            "grew per site; etcd refuses objects over 1.5 MiB)"
        )
    for phase in phases:
        yield f"\n{phase.title}: by verb {format_counts(by_verb(phase.requests))}"
        yield f"  writes by resource: {format_counts(by_verb_and_resource(phase.writes))}"
        kopf_requests = [r for r in phase.requests if r.from_kopf]
        lists = [r for r in phase.requests if r.verb in ("list", "get")]
        yield (
            f"  from the controllers' client {len(phase.requests) - len(kopf_requests)}, from "
            f"kopf's machinery (watches, Events) {len(kopf_requests)}; reads: "
            f"{format_counts(by_verb_and_resource(lists)) or 'none'}"
        )
    yield (
        f"\ndirect script requests: {format_counts(by_verb_and_resource(direct.requests))} "
        "(reads: its own watch cache of the pods)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--nodes-per-site", type=int, default=5)
    parser.add_argument(
        "--at-once",
        type=int,
        default=10,
        help="EdgeDeployments rolled at once over the fleet after the rest (0: none)",
    )
    args = parser.parse_args()
    os.environ.update(OPERATOR_ENV)
    topology = Topology(gpu_nodes=0, edge_sites=args.sites, nodes_per_site=args.nodes_per_site)
    started = time.monotonic()
    with measured_cluster(topology, start_operator=False) as rig:
        fleet = site_nodes(client.CoreV1Api(rig.api), args.sites, args.nodes_per_site)
        print(
            f"dev cluster up in {time.monotonic() - started:.0f} s; the operator deploys OLD, "
            "rolls to NEW and back to OLD; then, with the operator stopped, the script rolls "
            "the same DaemonSets OLD -> NEW",
            flush=True,
        )
        phases, peak, settled = operator_phases(rig, "rollout", fleet, args.at_once)
        direct = lower_bound(rig, fleet, "rollout", OLD, NEW)
        print(
            f"lower bound: {direct.seconds:.1f} s, {len(direct.requests)} requests, "
            f"{len(direct.writes)} writes",
            flush=True,
        )
        for line in report(topology, phases, direct, peak, settled):
            print(line)
    print(f"\ntotal {time.monotonic() - started:.0f} s, cluster included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
