"""The chart as users install it, from tests: helm against the dev cluster, and a
kubeconfig that acts as the chart's ServiceAccount through a token from the TokenRequest API."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import ClusterHandle

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fogline"


def helm(
    cluster: ClusterHandle, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(cluster.bin_dir / "helm"), *args, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def service_account_kubeconfig(
    cluster: ClusterHandle, namespace: str, name: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as ServiceAccount namespace/name."""
    return cluster.devcluster.service_account_kubeconfig(namespace, name, path)
