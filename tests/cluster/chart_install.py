"""The chart as users install it, from tests: helm against the dev cluster, and a
kubeconfig that acts as the chart's ServiceAccount through a token from the TokenRequest API."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.conftest import ClusterHandle

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fogline"


def helm(
    cluster: ClusterHandle, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(cluster.bin_dir / "helm"), *args, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True, text=True, check=False, timeout=180,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def service_account_kubeconfig(
    cluster: ClusterHandle, namespace: str, name: str, path: Path
) -> Path:
    """Writes a kubeconfig that authenticates as ServiceAccount namespace/name with a
    bound token minted by the apiserver, trusting the cluster's own CA."""
    request = {"spec": {"expirationSeconds": 3600}}
    token = client.CoreV1Api(cluster.api).create_namespaced_service_account_token(
        name, namespace, request
    )
    admin: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    user = f"system:serviceaccount:{namespace}:{name}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fogline-dev", "cluster": server}],
        "users": [{"name": user, "user": {"token": token.status.token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "fogline-dev", "user": user}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path
