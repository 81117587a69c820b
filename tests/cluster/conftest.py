"""Fixtures for cluster tests that need Fogline's own API: the CRDs applied once per
session and Established, and a fresh namespace for each test."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from fogline.api.crds import CRD_FILES, GROUP, VERSION
from fogline.devcluster.prometheus import PrometheusServer
from tests.conftest import ClusterHandle, wait_for
from tests.operator_process import OperatorProcess

EDGE_INGRESS_CIDRS = ["10.20.0.0/16", "192.0.2.7/32"]
CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def _established(api: client.ApiextensionsV1Api, name: str) -> bool:
    crd = api.read_custom_resource_definition(name)
    conditions = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


@pytest.fixture(scope="session")
def crds(cluster: ClusterHandle) -> list[str]:
    """Server-side applies crds/ and waits until every CRD is Established; returns names."""
    cluster.kubectl("apply", "--server-side", "--field-manager=fogline-tests", "-f", str(CRD_DIR))
    names = [file_name.removesuffix(".yaml") for file_name in CRD_FILES.values()]
    api = client.ApiextensionsV1Api(cluster.api)
    # `kubectl wait` can race a CRD whose status is not written yet; poll instead.
    wait_for(
        lambda: all(_established(api, name) for name in names),
        timeout=60,
        what=f"CRDs {names} to be Established",
    )
    return names


class DeletedNamespaces:
    """Namespaces deleted by one module's tests, each emptied at once of what acts in it and
    remembered with the test it served and the moment by which it must be gone (60 s after
    its deletion, as when each was awaited in turn)."""

    def __init__(self, cluster: ClusterHandle) -> None:
        self.cluster = cluster
        self.core = client.CoreV1Api(cluster.api)
        self.pending: dict[str, tuple[str, float]] = {}

    def delete(self, name: str, test: str) -> None:
        self.fail_if_overdue()
        empty_namespace(self.cluster, name)
        self.await_later(name, test)

    def await_later(self, name: str, test: str) -> None:
        """A namespace already deleted, which must be gone within 60 s from now."""
        self.pending[name] = (test, time.monotonic() + 60)

    def remaining(self) -> dict[str, str]:
        """The pending namespaces that still exist, by name, with the test each served."""
        existing = {n.metadata.name for n in self.core.list_namespace().items}
        for name in [n for n in self.pending if n not in existing]:
            del self.pending[name]
        return {name: test for name, (test, _) in self.pending.items()}

    def fail_if_overdue(self) -> None:
        now = time.monotonic()
        overdue = {
            name: test for name, test in self.remaining().items() if self.pending[name][1] <= now
        }
        if overdue:
            pytest.fail(f"namespaces not deleted within 60 s (name: test): {overdue}")

    def wait_all(self) -> None:
        while self.remaining():
            self.fail_if_overdue()
            time.sleep(0.2)


@pytest.fixture(scope="module")
def deleted_namespaces(cluster: ClusterHandle) -> Iterator[DeletedNamespaces]:
    """The deleted namespaces of a module's tests, awaited together at its end: the namespace
    controller waits 5 s before it starts on a deleted namespace (a constant in
    kube-controller-manager), so waiting for each in turn costs every test 5 s or more."""
    deleted = DeletedNamespaces(cluster)
    yield deleted
    deleted.wait_all()


@pytest.fixture(scope="module")
def local_deleted_namespaces(local_cluster: ClusterHandle) -> Iterator[DeletedNamespaces]:
    """`deleted_namespaces` on the cluster whose local nodes run real processes."""
    deleted = DeletedNamespaces(local_cluster)
    yield deleted
    deleted.wait_all()


@pytest.fixture
def namespace(
    cluster: ClusterHandle, deleted_namespaces: DeletedNamespaces, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A namespace of its own for one test, deleted afterwards: its workloads and pods are
    gone before the next test starts, so that one test's pods never hold another's GPUs and
    no controller acts on them during another test; the namespace itself is awaited at the
    module's end, so that anything that blocks its deletion (a finalizer nobody removes)
    still fails loudly, naming the test."""
    deleted_namespaces.fail_if_overdue()
    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(cluster.api).create_namespace({"metadata": {"name": name}})
    yield name
    deleted_namespaces.delete(name, request.node.nodeid)


def empty_namespace(cluster: ClusterHandle, name: str, timeout: float = 60) -> None:
    """Delete a namespace and, without waiting for the namespace controller (which starts 5 s
    later, then waits about half its pods' grace period between passes), what acts in it:
    Fogline's resources, the workloads and their pods; wait until those are gone (a pod is
    gone once its node has stopped it: kwok at once, the node agent its real processes).
    The namespace controller removes the rest (Services, ServiceAccounts, Events...) and
    then the namespace."""
    core = client.CoreV1Api(cluster.api)
    custom = client.CustomObjectsApi(cluster.api)
    batch, apps = client.BatchV1Api(cluster.api), client.AppsV1Api(cluster.api)
    networking = client.NetworkingV1Api(cluster.api)
    core.delete_namespace(name)  # Terminating: nothing new can be created in it from now on
    plurals = [file_name.split(".")[0] for file_name in CRD_FILES.values()]
    for plural in plurals:
        with contextlib.suppress(ApiException):  # 404 where no test installed the CRDs
            custom.delete_collection_namespaced_custom_object(GROUP, VERSION, name, plural)
    # Background: a Job's deletion lets the Job controller drop its pods' tracking
    # finalizers at once, pending pods included (otherwise held until pod GC's 20 s sweep).
    batch.delete_collection_namespaced_job(name, propagation_policy="Background")
    apps.delete_collection_namespaced_daemon_set(name, propagation_policy="Background")
    apps.delete_collection_namespaced_deployment(name, propagation_policy="Background")
    networking.delete_collection_namespaced_network_policy(name)
    core.delete_collection_namespaced_pod(name)

    def left() -> list[str]:
        found = [f"pod/{p.metadata.name}" for p in core.list_namespaced_pod(name).items]
        found += [f"job/{j.metadata.name}" for j in batch.list_namespaced_job(name).items]
        found += [
            f"daemonset/{d.metadata.name}" for d in apps.list_namespaced_daemon_set(name).items
        ]
        for plural in plurals:
            with contextlib.suppress(ApiException):
                items = custom.list_namespaced_custom_object(GROUP, VERSION, name, plural)
                found += [f"{plural}/{i['metadata']['name']}" for i in items["items"]]
        return found

    deadline = time.monotonic() + timeout
    while found := left():
        if time.monotonic() > deadline:
            pytest.fail(f"namespace {name}: not emptied within {timeout:.0f} s, left: {found}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def operator(
    cluster: ClusterHandle,
    crds: list[str],
    prometheus: PrometheusServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """`fogline run` against the session's cluster, one per test module (restartable)."""
    images = {
        # The session's Prometheus: what `analysis.source: Prometheus` reads.
        "FOGLINE_ANALYSIS_PROMETHEUS_URL": prometheus.url,
        "FOGLINE_TRAINER_IMAGE": "registry.example/fogline-trainer:test",
        "FOGLINE_SERVER_IMAGE": "registry.example/fogline-server:test",
        # The node folder the controller tests' trainings publish to, as an administrator
        # would allow it; every other file:// artifact stays refused.
        "FOGLINE_ALLOWED_FILE_ROOTS": '["/var/lib/fogline/artifacts"]',
        # Edge servers reachable from these only: every EdgeDeployment gets its policy.
        "FOGLINE_EDGE_INGRESS_CIDRS": json.dumps(EDGE_INGRESS_CIDRS),
    }
    process = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("operator"), images)
    process.start()
    yield process
    process.stop()


def start_local_operator(
    local_cluster: ClusterHandle, log_dir: Path, allowed_file_roots: list[str]
) -> OperatorProcess:
    """The CRDs and `fogline run` against the cluster whose local nodes run real processes,
    serving Fogline's local server image from the artifact folders named."""
    local_cluster.kubectl(
        "apply", "--server-side", "--field-manager=fogline-tests", "-f", str(CRD_DIR)
    )
    extensions = client.ApiextensionsV1Api(local_cluster.api)
    wait_for(
        lambda: _established(extensions, "edgedeployments.fogline.io"),
        timeout=60,
        what="the EdgeDeployment CRD to be Established",
    )
    env = {
        "FOGLINE_SERVER_IMAGE": "fogline.dev/server:local",
        "FOGLINE_IMAGE_PULL_POLICY": "Never",
        "FOGLINE_ALLOWED_FILE_ROOTS": json.dumps(allowed_file_roots),
    }
    process = OperatorProcess(local_cluster.kubeconfig, log_dir, env)
    process.start()
    return process
