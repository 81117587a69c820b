"""A rollout of three sites to a new digest under load, end to end on the real control plane:
the operator (`fogline run`) writes the per-site DaemonSets, the DaemonSet controller surges a
new pod beside the old one on each site's node, the dev node agent runs both as real server
processes, and the dev cluster's load generator sends inference requests to every site without
pause. It routes like a Service's endpoints do: per site, to the pods that are Ready and not
being deleted, and it learns of a change late, as kube-proxy does. Not one request may fail,
and no site may be left without a server to route to.
What this relies on: the DaemonSet's surge strategy (replaceInPlace: false), the server's
readiness-first drain after SIGTERM, and a termination grace period longer than the drain."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from fogline.devcluster.loadgen import FollowingLoad, digits_rows
from fogline.devcluster.localpods import pod_endpoint
from fogline.devcluster.topology import EDGE_ROLE_LABEL, LOCAL_NODE_LABEL
from fogline.edge.daemonsets import DIGEST_ANNOTATION, EDGE_LABEL, SITE_LABEL
from tests.cluster.conftest import DeletedNamespaces, start_local_operator
from tests.conftest import ClusterHandle, wait_for
from tests.operator_process import OperatorProcess
from tests.workloads.served_artifacts import write_artifact

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION = "fogline.io", "v1alpha1"
EDGE = "rolling"
MODEL = "digits"
SITES = ["site-01", "site-02", "site-03"]  # each with one local edge node (LOCAL_TOPOLOGY)
ARTIFACTS = "/var/lib/fogline/rollout-under-load"  # a node folder, as the agent maps hostPath
ROUTING_LAG = 1.0  # seconds the load acts on the endpoints it found (one burst)
DRAIN_SECONDS = 3  # longer than the routing lag, as a drain must outlast kube-proxy's
RATE = 40  # inference requests per second to each site
LOAD_SECONDS = 300  # the most the load runs: it stops by itself


@pytest.fixture(scope="module")
def operator(
    local_cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = start_local_operator(
        local_cluster, tmp_path_factory.mktemp("rollout-operator"), [ARTIFACTS]
    )
    yield process
    process.stop()


@pytest.fixture
def space(
    local_cluster: ClusterHandle,
    local_deleted_namespaces: DeletedNamespaces,
    request: pytest.FixtureRequest,
) -> Iterator[str]:
    name = f"rollout-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(local_cluster.api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    # Its pods are real processes: this waits until the agent has stopped them all.
    local_deleted_namespaces.delete(name, request.node.nodeid)


class Endpoints:
    """Each site's endpoints as a Service's would be: its pods that are Ready and not being
    deleted, at podIP:containerPort; and the site and digest of every endpoint ever found."""

    def __init__(self, cluster: ClusterHandle, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.core = client.CoreV1Api(cluster.api)
        self.seen: dict[str, tuple[str, str]] = {}  # endpoint -> (site, digest)

    def pods(self) -> list[Any]:
        selector = f"{EDGE_LABEL}={EDGE}"
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def by_site(self) -> dict[str, list[str]]:
        ready: dict[str, list[str]] = {site: [] for site in SITES}
        for pod in self.pods():
            conditions = (pod.status.conditions if pod.status else None) or []
            if pod.metadata.deletion_timestamp is None and any(
                c.type == "Ready" and c.status == "True" for c in conditions
            ):
                site = pod.metadata.labels[SITE_LABEL]
                endpoint = pod_endpoint(self.cluster.api.sanitize_for_serialization(pod))
                ready[site].append(endpoint)
                self.seen[endpoint] = (site, pod.metadata.annotations[DIGEST_ANNOTATION])
        return ready


def test_rolling_three_sites_to_a_new_digest_under_load_fails_no_request(
    local_cluster: ClusterHandle, operator: OperatorProcess, space: str
) -> None:
    root = local_cluster.devcluster.local_root / "hostpath" / ARTIFACTS.lstrip("/")
    old_digest = write_artifact(root / f"{space}-v1", seed=1)
    new_digest = write_artifact(root / f"{space}-v2", seed=2)
    custom = client.CustomObjectsApi(local_cluster.api)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EdgeDeployment",
        "metadata": {"name": EDGE},
        "spec": {
            "model": {"uri": f"file://{ARTIFACTS}/{space}-v1", "digest": old_digest},
            "modelName": MODEL,
            "runtime": {"drainSeconds": DRAIN_SECONDS},
            "placement": {
                "sites": SITES,
                "nodeSelector": {EDGE_ROLE_LABEL: "true", LOCAL_NODE_LABEL: "true"},
            },
            # One node per site: the new server starts before the old one stops.
            "rollout": {"replaceInPlace": False, "canarySites": 1, "maxUnavailable": 2},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, space, "edgedeployments", body)

    def status() -> dict[str, Any]:
        found = custom.get_namespaced_custom_object(GROUP, VERSION, space, "edgedeployments", EDGE)
        result: dict[str, Any] = found.get("status") or {}
        return result

    def available_on(digest: str) -> bool:
        current = status()
        return (
            current.get("phase") == "Available"
            and current.get("currentDigest") == digest
            and current.get("sitesReady") == f"{len(SITES)}/{len(SITES)}"
        )

    wait_for(
        lambda: available_on(old_digest),
        timeout=120,
        interval=0.5,
        what="the first digest Available on 3 sites",
    )
    endpoints = Endpoints(local_cluster, space)
    assert all(endpoints.by_site().values()), "every site has a Ready endpoint before the load"
    load = FollowingLoad(
        endpoints.by_site,
        MODEL,
        digits_rows(),
        rate=RATE,
        seconds=LOAD_SECONDS,
        burst_seconds=ROUTING_LAG,
    )
    with load:
        # Load on the old servers alone first (a burst answered).
        wait_for(load.snapshot, timeout=30, interval=0.2, what="the first answers")
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            space,
            "edgedeployments",
            EDGE,
            {"spec": {"model": {"uri": f"file://{ARTIFACTS}/{space}-v2", "digest": new_digest}}},
        )
        wait_for(
            lambda: available_on(new_digest),
            timeout=180,
            interval=0.5,
            what="the new digest Available on 3 sites",
        )

        def old_pods_gone() -> bool:
            pods = endpoints.pods()
            digests = {p.metadata.annotations.get(DIGEST_ANNOTATION) for p in pods}
            return digests == {new_digest} and len(pods) == len(SITES)

        wait_for(old_pods_gone, timeout=60, interval=0.5, what="the old servers to stop")

        # Load on the new servers alone: they go on answering.
        def new_answers() -> int:
            return sum(
                result.statuses[200]
                for target, result in load.snapshot().items()
                if endpoints.seen[target][1] == new_digest
            )

        before = new_answers()
        wait_for(lambda: new_answers() > before, timeout=30, interval=0.2, what="new answers")
    results = load.snapshot()

    assert load.problems == []
    assert sum(load.unrouted.values()) == 0, f"sites without a Ready endpoint: {load.unrouted}"
    failures = [f for result in results.values() for f in result.failures]
    assert all(set(r.statuses) == {200} for r in results.values()), failures
    by_site: dict[str, Counter[str]] = {site: Counter() for site in SITES}
    for target, result in results.items():
        site, digest = endpoints.seen[target]
        by_site[site][digest] += result.statuses[200]
    for site in SITES:  # every site answered from both servers, before and after
        assert by_site[site][old_digest] > 0 and by_site[site][new_digest] > 0, by_site
    # The drain was exercised: requests the load still sent to a stopping server were
    # answered (each with `Connection: close`, so clients move on).
    drained = sum(r.closing for t, r in results.items() if endpoints.seen[t][1] == old_digest)
    assert drained > 0
    total = sum(r.sent for r in results.values())
    print(
        f"rollout of {len(SITES)} sites under load: {total} requests, 0 failed, "
        f"{drained} answered while draining"
    )
