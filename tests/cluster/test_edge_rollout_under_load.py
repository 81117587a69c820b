"""A rollout of three sites to a new digest under load, end to end on the real control plane:
the operator (`fogline run`) writes the per-site DaemonSets, the DaemonSet controller surges a
new pod beside the old one on each site's node, the dev node agent runs both as real server
processes, and a load generator sends inference requests to every site without pause. It
routes like a Service's endpoints do: a pod is an endpoint while it is Ready and not being
deleted, and the router learns of a change late, as kube-proxy does. Not one request may fail.
What this relies on: the DaemonSet's surge strategy (replaceInPlace: false), the server's
readiness-first drain after SIGTERM, and a termination grace period longer than the drain."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client

from fogline.devcluster.topology import EDGE_ROLE_LABEL, LOCAL_NODE_LABEL
from fogline.edge.daemonsets import DIGEST_ANNOTATION, EDGE_LABEL, SITE_LABEL
from tests.cluster.conftest import delete_namespace, start_local_operator
from tests.conftest import ClusterHandle, wait_for
from tests.operator_process import OperatorProcess
from tests.workloads.served_artifacts import write_artifact

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION = "fogline.io", "v1alpha1"
SITES = ["site-01", "site-02", "site-03"]  # each with one local edge node (LOCAL_TOPOLOGY)
ARTIFACTS = "/var/lib/fogline/rollout-under-load"  # a node folder, as the agent maps hostPath
ROUTER_LAG = 0.5  # seconds between what the router sees and when it acts on it
DRAIN_SECONDS = 3  # longer than the router's lag, as a drain must outlast kube-proxy's
CLIENTS_PER_SITE = 2
MAX_REQUESTS = 50_000  # per client: the load stops by itself
PORT = 8080  # the servers' container port (spec.runtime.port), at each pod's own address


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
def space(local_cluster: ClusterHandle) -> Iterator[str]:
    name = f"rollout-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(local_cluster.api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    # Its pods are real processes: wait until the agent has stopped them all.
    delete_namespace(core, name)


@dataclass
class Endpoint:
    address: str  # the pod's own: status.podIP
    site: str
    digest: str


@dataclass
class Router:
    """Endpoints per site from the pods' readiness, refreshed late; round robin within a site."""

    core: client.CoreV1Api
    namespace: str
    selector: str
    endpoints: dict[str, list[Endpoint]] = field(default_factory=dict)
    seen: dict[str, Endpoint] = field(default_factory=dict)  # every endpoint ever routed to
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    turns: Counter[str] = field(default_factory=Counter)

    def observe(self) -> dict[str, list[Endpoint]]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        ready: dict[str, list[Endpoint]] = {}
        for pod in pods:
            annotations = pod.metadata.annotations or {}
            conditions = (pod.status.conditions if pod.status else None) or []
            if (
                pod.metadata.deletion_timestamp is None
                and pod.status.pod_ip
                and any(c.type == "Ready" and c.status == "True" for c in conditions)
            ):
                site = pod.metadata.labels[SITE_LABEL]
                endpoint = Endpoint(pod.status.pod_ip, site, annotations[DIGEST_ANNOTATION])
                ready.setdefault(site, []).append(endpoint)
        return ready

    def apply(self, ready: dict[str, list[Endpoint]]) -> None:
        with self.lock:
            self.endpoints = ready
            for endpoints in ready.values():
                for endpoint in endpoints:
                    self.seen[endpoint.address] = endpoint

    def follow(self) -> None:
        while not self.stop.is_set():
            ready = self.observe()
            time.sleep(ROUTER_LAG)  # acts on what it saw, late
            self.apply(ready)

    def pick(self, site: str) -> str | None:
        with self.lock:
            endpoints = self.endpoints.get(site) or []
            if not endpoints:
                return None
            self.turns[site] += 1
            return endpoints[self.turns[site] % len(endpoints)].address


@dataclass
class Load:
    """What the load generator saw: answers per endpoint address, and every failure."""

    answered: Counter[str] = field(default_factory=Counter)
    draining: Counter[str] = field(default_factory=Counter)  # answers with Connection: close
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def send_continuously(router: Router, site: str, model: str, load: Load) -> None:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.25] * 64}
    body = json.dumps({"inputs": [tensor]}).encode()
    connections: dict[str, http.client.HTTPConnection] = {}
    for _ in range(MAX_REQUESTS):
        if router.stop.is_set():
            break
        address = router.pick(site)
        if address is None:
            with load.lock:
                load.failures.append(f"{site}: no Ready endpoint")
            time.sleep(0.05)
            continue
        connection = connections.get(address) or http.client.HTTPConnection(
            address, PORT, timeout=10
        )
        connections[address] = connection
        try:
            connection.request("POST", f"/v2/models/{model}/infer", body=body)
            response = connection.getresponse()
            payload = response.read()
            closing = response.getheader("Connection", "").lower() == "close"
            ok = response.status == 200 and b'"shape":[1,10]' in payload
            if closing:
                connection.close()
                del connections[address]
        except (OSError, http.client.HTTPException) as err:
            ok, closing, payload = False, False, repr(err).encode()
            connection.close()
            connections.pop(address, None)
        with load.lock:
            if ok:
                load.answered[address] += 1
                load.draining[address] += closing
            else:
                load.failures.append(f"{site} {address}:{PORT}: {payload[:200]!r}")
    for connection in connections.values():
        connection.close()


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
        "metadata": {"name": "rolling"},
        "spec": {
            "model": {"uri": f"file://{ARTIFACTS}/{space}-v1", "digest": old_digest},
            "modelName": "digits",
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
        found = custom.get_namespaced_custom_object(
            GROUP, VERSION, space, "edgedeployments", "rolling"
        )
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
    router = Router(client.CoreV1Api(local_cluster.api), space, f"{EDGE_LABEL}=rolling")
    router.apply(router.observe())
    assert sorted(router.endpoints) == SITES
    load = Load()
    threads = [threading.Thread(target=router.follow)]
    threads += [
        threading.Thread(target=send_continuously, args=(router, site, "digits", load))
        for site in SITES
        for _ in range(CLIENTS_PER_SITE)
    ]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # load on the old servers alone
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            space,
            "edgedeployments",
            "rolling",
            {
                "spec": {"model": {"uri": f"file://{ARTIFACTS}/{space}-v2", "digest": new_digest}},
            },
        )
        wait_for(
            lambda: available_on(new_digest),
            timeout=180,
            interval=0.5,
            what="the new digest Available on 3 sites",
        )

        def old_pods_gone() -> bool:
            pods = router.core.list_namespaced_pod(space, label_selector=router.selector).items
            digests = {p.metadata.annotations.get(DIGEST_ANNOTATION) for p in pods}
            return digests == {new_digest} and len(pods) == len(SITES)

        wait_for(old_pods_gone, timeout=60, interval=0.5, what="the old servers to stop")
        time.sleep(1.0)  # load on the new servers alone
    finally:
        router.stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert load.failures == []
    by_site: dict[str, Counter[str]] = {site: Counter() for site in SITES}
    for address, count in load.answered.items():
        endpoint = router.seen[address]
        by_site[endpoint.site][endpoint.digest] += count
    for site in SITES:  # every site answered from both servers, before and after
        assert by_site[site][old_digest] > 0 and by_site[site][new_digest] > 0, by_site
    # The drain was exercised: requests the router still sent to a stopping server were
    # answered (each with `Connection: close`, so clients move on).
    drained = sum(load.draining[p] for p, e in router.seen.items() if e.digest == old_digest)
    assert drained > 0
    total = sum(load.answered.values())
    print(
        f"rollout of {len(SITES)} sites under load: {total} requests, 0 failed, "
        f"{drained} answered while draining"
    )
