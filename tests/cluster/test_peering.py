"""Two operator replicas on one kopf peering with `--priority auto`: exactly one acts, the
other stands by, and takes over when the acting one goes away."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.conftest import ClusterHandle, wait_for
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CHART_CRDS = Path(__file__).resolve().parents[2] / "charts" / "fogline" / "crds"


def acted(replica: OperatorProcess) -> bool:
    """Whether the replica reconciled a ModelTraining: one that peering holds back watches
    nothing, so it reconciles nothing."""
    return any(
        line.startswith("fogline_reconciles_total{")
        and 'kind="ModelTraining"' in line
        and float(line.split()[-1]) > 0
        for line in replica.metrics().splitlines()
    )


def training(name: str) -> dict[str, object]:
    return {
        "apiVersion": "fogline.io/v1alpha1",
        "kind": "ModelTraining",
        "metadata": {"name": name},
        "spec": {
            "model": {"architecture": "mlp"},
            "dataset": {"uri": "builtin:digits"},
            "output": {"uri": "file:///var/lib/fogline/artifacts"},
        },
    }


@pytest.fixture
def replicas(
    cluster: ClusterHandle, crds: list[str], tmp_path: Path
) -> Iterator[list[OperatorProcess]]:
    cluster.kubectl(
        "apply", "--server-side", "-f", str(CHART_CRDS / "clusterkopfpeerings.kopf.dev.yaml")
    )
    peering = f"ha-{uuid.uuid4().hex[:6]}"
    cluster.kubectl(
        "create",
        "-f",
        "-",
        input=f"apiVersion: kopf.dev/v1\nkind: ClusterKopfPeering\nmetadata:\n  name: {peering}\n",
    )
    processes = []
    for index in range(2):
        log_dir = tmp_path / f"replica-{index}"
        log_dir.mkdir()
        env = {"POD_NAME": f"fogline-{uuid.uuid4().hex[:8]}", "FOGLINE_PEERING_LIFETIME": "5"}
        processes.append(
            OperatorProcess(
                cluster.kubeconfig, log_dir, env, ("-A", f"--peering={peering}", "--priority=auto")
            )
        )
    for process in processes:
        process.start()
    yield processes
    for process in processes:
        process.stop()
    cluster.kubectl("delete", "clusterkopfpeering", peering)


def test_one_replica_acts_and_the_other_takes_over(
    cluster: ClusterHandle, namespace: str, replicas: list[OperatorProcess]
) -> None:
    custom = client.CustomObjectsApi(cluster.api)
    batch = client.BatchV1Api(cluster.api)
    custom.create_namespaced_custom_object(
        "fogline.io", "v1alpha1", namespace, "modeltrainings", training("first")
    )
    wait_for(
        lambda: (
            batch.list_namespaced_job(
                namespace, label_selector="fogline.io/modeltraining=first"
            ).items
        ),
        timeout=60,
        what="the first Job",
    )
    wait_for(lambda: any(acted(r) for r in replicas), what="a replica to act")
    acting = [r for r in replicas if acted(r)]
    assert len(acting) == 1, "both replicas acted"
    standby = next(r for r in replicas if r is not acting[0])

    acting[0].stop()
    custom.create_namespaced_custom_object(
        "fogline.io", "v1alpha1", namespace, "modeltrainings", training("second")
    )
    wait_for(
        lambda: (
            batch.list_namespaced_job(
                namespace, label_selector="fogline.io/modeltraining=second"
            ).items
        ),
        timeout=90,
        what="the standby to take over and create the second Job",
    )
    assert acted(standby)
    assert (
        len(
            batch.list_namespaced_job(
                namespace, label_selector="fogline.io/modeltraining=first"
            ).items
        )
        == 1
    )


@pytest.mark.parametrize(
    "scope", [("-A",), ("--namespace=somewhere",)], ids=["cluster", "namespaced"]
)
def test_a_missing_peering_object_fails_at_start_naming_the_fix(
    cluster: ClusterHandle, crds: list[str], scope: tuple[str, ...]
) -> None:
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "FOGLINE_TRAINER_IMAGE": "registry.example/fogline-trainer:test",
        "FOGLINE_SERVER_IMAGE": "registry.example/fogline-server:test",
    }
    # Without the check the operator waits for the object for ever: the timeout fails it.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fogline.cli",
            "run",
            *scope,
            f"--peering=absent-{uuid.uuid4().hex[:6]}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "does not exist" in result.stderr
    assert "manifests/install.yaml" in result.stderr and "--standalone" in result.stderr
