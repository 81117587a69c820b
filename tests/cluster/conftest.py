"""Fixtures for cluster tests that need Fogline's own API: the CRDs applied once per
session and Established, and a fresh namespace for each test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from fogline.api.crds import CRD_FILES
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


@pytest.fixture
def namespace(cluster: ClusterHandle) -> Iterator[str]:
    """A namespace of its own for one test, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    # Wait until it is gone, so that one test's pods never hold another's GPUs, and so that
    # anything that blocks deletion (a finalizer nobody removes) fails loudly here.
    delete_namespace(core, name, timeout=60)


def delete_namespace(core: client.CoreV1Api, name: str, timeout: float = 90) -> None:
    """Delete a namespace and wait until it is gone (its pods with it)."""
    core.delete_namespace(name)
    wait_for(
        lambda: not core.list_namespace(field_selector=f"metadata.name={name}").items,
        timeout=timeout,
        what=f"namespace {name} to be deleted",
    )


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
