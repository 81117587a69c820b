"""A digest change rolled out by the EdgeDeployment controller to 100 sites of 5 kwok nodes,
timed and its API requests counted from the audit log, against the lower bound: a plain
script doing the same child updates in the same waves with the same client.

Run: .venv/bin/python bench/bench_rollout.py [--sites 100] [--nodes-per-site 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kopf
from bench.fleet import (
    GROUP,
    OPERATOR_ENV,
    VERSION,
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
)
from kubernetes import client

from fogline.api.edgedeployment import EdgeDeployment
from fogline.devcluster import Topology
from fogline.edge.daemonsets import (
    DIGEST_ANNOTATION,
    EDGE_LABEL,
    ModelRef,
    build_site_daemonset,
    daemonset_name,
)
from fogline.edge.fleet import pod_ready
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


def site_nodes(core: client.CoreV1Api, sites: int, per_site: int) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for node in core.list_node(label_selector="node-role.kubernetes.io/edge=true").items:
        grouped.setdefault(node.metadata.labels["topology.fogline.io/site"], []).append(
            node.metadata.name
        )
    assert len(grouped) == sites and all(len(n) == per_site for n in grouped.values()), grouped
    return {site: sorted(nodes) for site, nodes in grouped.items()}


def lower_bound(rig: MeasuredCluster, fleet: dict[str, list[str]], namespace: str) -> tuple[float, list[ApiRequest]]:  # fmt: skip
    """The same child updates without the operator (stopped by now), on the same DaemonSets,
    from NEW back to OLD, as directly as the rules allow: per wave, apply its sites'
    DaemonSets; inside each site (sites in parallel) replace one node's pod at a time and
    wait for the new pod to be Ready, as the controller does so that a site keeps serving.
    Returns its time and its requests."""
    core, apps = client.CoreV1Api(rig.api), client.AppsV1Api(rig.api)
    owner = client.CustomObjectsApi(rig.api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "edgedeployments", NAME
    )
    edge = EdgeDeployment.from_body(owner)
    settings = OperatorSettings.from_env(OPERATOR_ENV)
    nodes = [n for site in fleet.values() for n in site]

    def apply(site: str, digest: str) -> None:
        body = build_site_daemonset(edge, site, ModelRef(URI, digest), settings)
        kopf.adopt(body, owner=owner)  # as the operator leaves it: owned by the CR
        apps.patch_namespaced_daemon_set(
            daemonset_name(NAME, site), namespace, body, field_manager=FIELD_MANAGER,
            force=True, _content_type="application/apply-patch+yaml",
        )  # fmt: skip

    def roll_site(pods: PodsByNode, site: str) -> None:
        for node in fleet[site]:
            old = pods.current_pod(node)
            if old is not None:
                core.delete_namespaced_pod(old, namespace)
            pods.wait_until(partial(pods.serving, node, OLD), 120, f"{node} on the old digest")

    with PodsByNode(core, namespace) as pods, ThreadPoolExecutor(32) as pool:
        pods.wait_until(lambda: pods.all_serving(nodes, NEW), 60, "every node on the new digest")
        since, started = audit_now(), time.monotonic()
        for wave in waves(list(fleet)):
            list(pool.map(lambda s: apply(s, OLD), wave))
            list(pool.map(lambda s: roll_site(pods, s), wave))
        elapsed = time.monotonic() - started
        until = audit_now()
    return elapsed, rig.requests(since, until, user="fogline-admin")


def available_on(digest: str) -> Any:
    def accept(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        return bool(status.get("phase") == "Available" and status.get("currentDigest") == digest)

    return accept


def watch_edges(custom: client.CustomObjectsApi, namespace: str, digest: str) -> FirstSeen:
    return FirstSeen(custom.list_namespaced_custom_object, object_name, available_on(digest),
                     group=GROUP, version=VERSION, namespace=namespace, plural="edgedeployments")  # fmt: skip


def operator_rollout(rig: MeasuredCluster, namespace: str) -> tuple[float, float, list[ApiRequest], list[ApiRequest]]:  # fmt: skip
    """First deployment, then the digest change; its time and the operator's requests
    from its start to the change, and during the rollout. Stops the operator at the end."""
    create_namespace(rig.api, namespace)
    custom = client.CustomObjectsApi(rig.api)
    started_operator = audit_now()
    rig.operator.start()
    with watch_edges(custom, namespace, OLD) as seen:
        started = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "edgedeployments",
                                               edge_body(namespace, OLD))  # fmt: skip
        first = seen.wait([NAME], timeout=300)[NAME] - started
    with watch_edges(custom, namespace, NEW) as seen:
        since, started = audit_now(), time.monotonic()
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "edgedeployments", NAME,
                                              {"spec": {"model": {"digest": NEW}}})  # fmt: skip
        elapsed = seen.wait([NAME], timeout=600)[NAME] - started
        until = audit_now()
    rig.operator.stop()
    return first, elapsed, rig.requests(started_operator, since), rig.requests(since, until)


def writes(requests: list[ApiRequest]) -> list[ApiRequest]:
    return [r for r in requests if r.is_write]


def report(
    used: Topology, first: float, direct: tuple[float, list[ApiRequest]],
    operator: tuple[float, list[ApiRequest], list[ApiRequest]],
) -> Iterator[str]:  # fmt: skip
    sites, nodes = used.edge_sites, used.edge_sites * used.nodes_per_site
    direct_time, direct_requests = direct
    op_time, op_start, op_requests = operator
    lists = [r for r in op_requests if r.verb == "list"]
    yield f"fleet: {sites} sites x {used.nodes_per_site} nodes = {nodes} kwok edge nodes; waves {[len(w) for w in waves([f'site-{i:03d}' for i in range(sites)])]}"  # fmt: skip
    yield f"first deployment by the operator (every site at once): {first:.1f} s"
    yield "\nrollout of a new digest        time      requests  writes   writes/node"
    for title, seconds, requests in (("operator", op_time, op_requests),
                                     ("direct script (lower bound)", direct_time, direct_requests)):  # fmt: skip
        w = len(writes(requests))
        yield f"  {title:<28} {seconds:6.1f} s  {len(requests):8d}  {w:6d}   {w / nodes:6.2f}"
    yield (f"  ratio operator / lower bound: time {op_time / direct_time:.2f}x, requests "
           f"{len(op_requests) / len(direct_requests):.2f}x, writes "
           f"{len(writes(op_requests)) / len(writes(direct_requests)):.2f}x")  # fmt: skip
    yield f"\noperator requests during the rollout, by verb: {format_counts(by_verb(op_requests))}"
    yield f"  by verb and resource: {format_counts(by_verb_and_resource(op_requests))}"
    kopf = [r for r in op_requests if r.from_kopf]
    yield (f"  from the controllers' client {len(op_requests) - len(kopf)}, from kopf's machinery "
           f"(watches, Events, its annotations) {len(kopf)}")  # fmt: skip
    yield f"  LIST requests during the rollout: {len(lists)} ({format_counts(by_verb_and_resource(lists)) or 'none'})"  # fmt: skip
    yield f"  operator start-up until the change (watches opened): {format_counts(by_verb(op_start))}"  # fmt: skip
    yield (f"direct script requests: {format_counts(by_verb_and_resource(direct_requests))} "
           "(reads: its own watch cache of the pods)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--nodes-per-site", type=int, default=5)
    args = parser.parse_args()
    os.environ.update(OPERATOR_ENV)
    topology = Topology(gpu_nodes=0, edge_sites=args.sites, nodes_per_site=args.nodes_per_site)
    started = time.monotonic()
    with measured_cluster(topology, start_operator=False) as rig:
        fleet = site_nodes(client.CoreV1Api(rig.api), args.sites, args.nodes_per_site)
        print(f"dev cluster up in {time.monotonic() - started:.0f} s; the operator rolls OLD -> NEW, "
              "then, with the operator stopped, the script rolls the same DaemonSets back")  # fmt: skip
        first, elapsed, at_start, during = operator_rollout(rig, "rollout")
        direct = lower_bound(rig, fleet, "rollout")
        for line in report(topology, first, direct, (elapsed, at_start, during)):
            print(line)
    print(f"\ntotal {time.monotonic() - started:.0f} s, cluster included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
