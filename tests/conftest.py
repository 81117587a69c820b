"""Fixtures shared by every test tier. The `cluster` fixture starts the real local control
plane once per test session (only when a test asks for it) and stops it at the end."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fogline.devcluster import DevCluster, Topology
from fogline.devcluster.prometheus import PrometheusServer
from fogline.devcluster.stores import ArtifactStores, StoreEndpoints

# The fleet every cluster test sees: a GPU pool and three K3s edge sites of two nodes.
TEST_TOPOLOGY = Topology(gpu_nodes=2, gpus_per_node=4, edge_sites=3, nodes_per_site=2)


@dataclass
class ClusterHandle:
    """A running dev cluster as tests see it."""

    devcluster: DevCluster
    kubeconfig: Path
    api: Any  # kubernetes.client.ApiClient
    bin_dir: Path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.devcluster.kubectl(*args, input=input, check=check)

    def steer_pod(
        self,
        namespace: str,
        name: str,
        outcome: str,
        termination_message: dict[str, Any] | str | None = None,
        exit_code: int | None = None,
    ) -> None:
        """Tell kwok what becomes of a running pod (see devcluster/stages.yaml)."""
        from kubernetes import client

        annotations = {"sim.fogline.io/outcome": outcome}
        if exit_code is not None:
            annotations["sim.fogline.io/exit-code"] = str(exit_code)
        if termination_message is not None:
            text = (
                termination_message
                if isinstance(termination_message, str)
                else json.dumps(termination_message)
            )
            annotations["sim.fogline.io/termination-message"] = text
        client.CoreV1Api(self.api).patch_namespaced_pod(
            name, namespace, {"metadata": {"annotations": annotations}}
        )


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "condition",
) -> Any:
    """Poll until predicate() is truthy; fail the test naming `what` if it never is."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last value: {last!r})")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    devcluster = DevCluster(tmp_path_factory.mktemp("devcluster"))
    devcluster.up(TEST_TOPOLOGY)
    api = devcluster.api_client()
    try:
        yield ClusterHandle(devcluster, devcluster.kubeconfig, api, devcluster.tools_dir)
    finally:
        api.close()
        devcluster.down()


# A smaller fleet for the opt-in cluster whose local nodes run real processes: a local edge
# node in each of three sites, for a rollout of real servers under load.
LOCAL_TOPOLOGY = Topology(
    gpu_nodes=1, gpus_per_node=1, edge_sites=1, nodes_per_site=1, local_edge_sites=3
)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    """A dev cluster of its own with the node agent: pods bound to local-gpu and local-edge
    run as local processes. Opt-in; the shared `cluster` stays kwok-only."""
    devcluster = DevCluster(tmp_path_factory.mktemp("localcluster"))
    devcluster.up(LOCAL_TOPOLOGY, local_nodes=True)
    api = devcluster.api_client()
    try:
        yield ClusterHandle(devcluster, devcluster.kubeconfig, api, devcluster.tools_dir)
    finally:
        api.close()
        devcluster.down()


@pytest.fixture(scope="session")
def artifact_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreEndpoints]:
    """versitygw (S3) and the distribution registry (OCI) on loopback, as `fogline devcluster
    up` starts them: a bucket, a writer and a read-only user. Started once, on demand."""
    stores = ArtifactStores(tmp_path_factory.mktemp("stores"))
    try:
        yield stores.up()
    finally:
        stores.down()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus (the one `make tools` installs) on a free loopback port with its own
    data folder, scraping every second whatever a test hands `set_targets` (file_sd: it
    notices a new list within about a second). Started once, on demand; stopped by PID."""
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), scrape_interval_seconds=1.0)
    server.up()
    try:
        yield server
    finally:
        server.down()
