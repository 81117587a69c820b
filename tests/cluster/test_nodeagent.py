"""The dev node agent on the real control plane: pods bound to local-gpu and local-edge run
as real local processes. A trainer really trains onto a PVC, a fetch-then-serve pod becomes
Ready through its real probe and answers inference; crashes restart, deletions stop."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from fogline.devcluster.localpods import LOCALHOST, pod_endpoint
from fogline.devcluster.topology import EDGE_TAINT, GPU_TAINT, LOCAL_EDGE_NODE, LOCAL_GPU_NODE
from fogline.settings import OperatorSettings
from fogline.training.jobs import build_trainer_rbac
from tests.conftest import ClusterHandle, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CLAIM = "art"


def _toleration(taint: dict[str, str]) -> dict[str, str]:
    return {"key": taint["key"], "operator": "Exists", "effect": taint["effect"]}


def _pod(name: str, node: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    taint = GPU_TAINT if node == LOCAL_GPU_NODE else EDGE_TAINT
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [_toleration(taint)],
            "terminationGracePeriodSeconds": 10,
            "containers": containers,
            **spec,
        },
    }


@pytest.fixture(scope="module")
def space(local_cluster: ClusterHandle) -> Iterator[str]:
    """A namespace with the trainer's RBAC and a Bound claim `art`."""
    name = f"agent-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(local_cluster.api)
    core.create_namespace({"metadata": {"name": name}})
    rbac = build_trainer_rbac(name, OperatorSettings())
    local_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    core.create_persistent_volume(
        {
            "metadata": {"name": f"pv-{name}"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "manual",
                "hostPath": {"path": "/unused"},
                "claimRef": {"namespace": name, "name": CLAIM},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        name,
        {
            "metadata": {"name": CLAIM},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "manual",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_for(
        lambda: core.read_namespaced_persistent_volume_claim(CLAIM, name).status.phase == "Bound",
        timeout=60,
        what="the claim to bind",
    )
    wait_for(lambda: core.read_namespaced_service_account("fogline-trainer", name), what="SA")
    yield name
    core.delete_namespace(name)
    core.delete_persistent_volume(f"pv-{name}")


def _read(cluster: ClusterHandle, namespace: str, name: str) -> dict[str, Any]:
    pod = client.CoreV1Api(cluster.api).read_namespaced_pod(name, namespace)
    result: dict[str, Any] = cluster.api.sanitize_for_serialization(pod)
    return result


def _condition(pod: dict[str, Any], kind: str) -> bool:
    return any(
        c["type"] == kind and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def _pid(pod: dict[str, Any]) -> int:
    return int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def trained(local_cluster: ClusterHandle, space: str) -> dict[str, Any]:
    """A trainer pod on local-gpu, run to completion; returns the finished pod."""
    trainer = {
        "name": "trainer",
        "image": "fogline.dev/trainer:local",
        "command": ["python", "-m", "fogline.workloads.trainer"],
        "args": [
            "--model=mlp",
            "--dataset=builtin:digits",
            "--epochs=2",
            "--threads=1",
            "--output=/mnt/pvc/art/digits",
            f"--artifact-uri=pvc://{CLAIM}/digits",
            "--termination-log=/dev/termination-log",
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "FOGLINE_PVC_ROOT", "value": "/mnt/pvc"},
            {"name": "FOGLINE_PROGRESS_INTERVAL", "value": "0"},
        ],
        "volumeMounts": [
            {"name": "art", "mountPath": f"/mnt/pvc/{CLAIM}"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod = _pod(
        "trainer",
        LOCAL_GPU_NODE,
        [trainer],
        restartPolicy="Never",
        serviceAccountName="fogline-trainer",
        volumes=[
            {"name": "art", "persistentVolumeClaim": {"claimName": CLAIM}},
            {"name": "tmp", "emptyDir": {}},
        ],
    )
    client.CoreV1Api(local_cluster.api).create_namespaced_pod(space, pod)
    finished: dict[str, Any] = wait_for(
        lambda: (
            (p := _read(local_cluster, space, "trainer"))["status"].get("phase")
            in ("Succeeded", "Failed")
            and p
        ),
        timeout=240,
        interval=0.5,
        what="the trainer pod to finish",
    )
    return finished


def test_trainer_pod_really_trains_onto_the_claim(
    local_cluster: ClusterHandle, space: str, trained: dict[str, Any]
) -> None:
    status = trained["status"]["containerStatuses"][0]
    assert trained["status"]["phase"] == "Succeeded", status
    assert trained["spec"]["nodeName"] == LOCAL_GPU_NODE
    terminated = status["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    summary = json.loads(terminated["message"])
    assert summary["phase"] == "Succeeded" and summary["epochs"] == 2
    assert summary["artifact"]["uri"] == f"pvc://{CLAIM}/digits"
    folder = local_cluster.devcluster.local_root / "pvc" / space / CLAIM / "digits"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["serving"]["file"] in manifest["files"]
    manifest_bytes = (folder / "manifest.json").read_bytes()
    assert summary["artifact"]["digest"] == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    # The pod's own token reached the API: the trainer annotated its pod with progress.
    progress = json.loads(trained["metadata"]["annotations"]["fogline.io/progress"])
    assert progress["epochs"] == 2 and progress["epoch"] >= 1
    assert _condition(trained, "Initialized") and not _condition(trained, "Ready")


@pytest.fixture(scope="module")
def server(local_cluster: ClusterHandle, space: str, trained: dict[str, Any]) -> str:
    """A fetch-then-serve pod on local-edge for the trained artifact; returns its name."""
    digest = json.loads(
        trained["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    )["artifact"]["digest"]
    fetch = {
        "name": "fetch",
        "image": "fogline.dev/server:local",
        "command": ["fogline", "fetch"],
        "args": [
            f"--uri=pvc://{CLAIM}/digits",
            f"--digest={digest}",
            "--cache-dir=/var/lib/fogline/cache",
            "--dest=/models/current",
        ],
        "volumeMounts": [
            {"name": "art", "mountPath": f"/mnt/pvc/{CLAIM}", "readOnly": True},
            {"name": "cache", "mountPath": "/var/lib/fogline/cache"},
            {"name": "models", "mountPath": "/models"},
        ],
    }
    serve = {
        "name": "server",
        "image": "fogline.dev/server:local",
        "command": ["fogline", "serve"],
        "args": [
            "--model-dir=/models/current",
            "--name=digits",
            "--port",
            "8080",
            f"--expected-digest={digest}",
            "--shutdown-timeout=2",
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 1,
        },
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
    }
    volumes = [
        {"name": "art", "persistentVolumeClaim": {"claimName": CLAIM, "readOnly": True}},
        {
            "name": "cache",
            "hostPath": {"path": "/var/lib/fogline/cache", "type": "DirectoryOrCreate"},
        },
        {"name": "models", "emptyDir": {}},
    ]
    pod = _pod("server", LOCAL_EDGE_NODE, [serve], initContainers=[fetch], volumes=volumes)
    client.CoreV1Api(local_cluster.api).create_namespaced_pod(space, pod)
    wait_for(
        lambda: _condition(_read(local_cluster, space, "server"), "Ready"),
        timeout=90,
        interval=0.5,
        what="the server pod to become Ready",
    )
    return "server"


def _infer(endpoint: str) -> float:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = digits.data[:64].astype("float32")
    body = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": rows.ravel().tolist(),
            }
        ]
    }
    request = urllib.request.Request(
        f"{endpoint}/v2/models/digits/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        logits = json.loads(reply.read())["outputs"][0]["data"]
    predicted = [max(range(10), key=lambda k, i=i: logits[i * 10 + k]) for i in range(64)]
    return sum(p == t for p, t in zip(predicted, digits.target[:64], strict=True)) / 64


def test_server_pod_fetches_becomes_ready_and_answers_at_its_own_address_and_port(
    local_cluster: ClusterHandle, space: str, server: str
) -> None:
    pod = _read(local_cluster, space, server)
    assert pod["status"]["phase"] == "Running"
    init = pod["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["exitCode"] == 0
    # An address of its own on loopback, its container's own port, as in a cluster.
    assert pod["status"]["podIP"].startswith("127.") and pod["status"]["podIP"] != LOCALHOST
    assert pod["status"]["podIPs"] == [{"ip": pod["status"]["podIP"]}]
    assert _infer(pod_endpoint(pod)) > 0.5  # the artifact trained for two epochs, really served


def test_crashed_server_restarts_and_becomes_ready_again(
    local_cluster: ClusterHandle, space: str, server: str
) -> None:
    before = _read(local_cluster, space, server)
    pod_ip = before["status"]["podIP"]
    os.kill(_pid(before), signal.SIGKILL)
    restarted = wait_for(
        lambda: (
            (p := _read(local_cluster, space, server))["status"]["containerStatuses"][0][
                "restartCount"
            ]
            >= 1
            and _condition(p, "Ready")
            and p
        ),
        timeout=60,
        interval=0.5,
        what="the server to restart and be Ready",
    )
    last = restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 128 + signal.SIGKILL
    assert restarted["status"]["podIP"] == pod_ip  # a restarted container keeps the pod's address
    assert _infer(pod_endpoint(restarted)) > 0.5


def test_deleting_a_running_pod_stops_its_process_and_removes_it(
    local_cluster: ClusterHandle, space: str, server: str
) -> None:
    core = client.CoreV1Api(local_cluster.api)
    pid = _pid(_read(local_cluster, space, server))
    core.delete_namespaced_pod(server, space)

    def gone() -> bool:
        try:
            core.read_namespaced_pod(server, space)
        except ApiException as err:
            return err.status == 404
        return False

    wait_for(gone, timeout=30, what="the pod to be removed")
    wait_for(lambda: not _alive(pid), timeout=10, what="the server process to stop")


def test_unknown_image_fails_with_a_clear_reason(local_cluster: ClusterHandle, space: str) -> None:
    pod = _pod(
        "stranger", LOCAL_EDGE_NODE, [{"name": "web", "image": "nginx:1.27"}], restartPolicy="Never"
    )
    client.CoreV1Api(local_cluster.api).create_namespaced_pod(space, pod)
    failed = wait_for(
        lambda: (
            (p := _read(local_cluster, space, "stranger"))["status"].get("phase") == "Failed" and p
        ),
        timeout=30,
        what="the pod of an unknown image to fail",
    )
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "UnknownImage"
    assert "nginx:1.27" in terminated["message"] and "trainer" in terminated["message"]
