"""Least privilege, proven on the real apiserver: the operator runs as the chart's
ServiceAccount through whole lifecycles; the audit log shows it was never refused, that
it used every rule the chart grants, and verbs it was not granted are refused."""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.cluster.chart_install import CHART, helm, service_account_kubeconfig
from tests.conftest import ClusterHandle, wait_for
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION = "fogline.io", "v1alpha1"
EDGE_CONTROLLER = importlib.util.find_spec("fogline.controllers.edgedeployment") is not None

# (apiGroup, resource or resource/subresource, verb)
Access = tuple[str, str, str]

# Granted, never used by the operator's own requests, and needed all the same.
JUSTIFIED_UNUSED: dict[Access, str] = {
    (
        "",
        "pods",
        "get",
    ): "granted onward in the trainer Role; RBAC grants only what the granter holds",
    (
        "",
        "pods",
        "patch",
    ): "granted onward in the trainer Role; RBAC grants only what the granter holds",
}
# Rules that only the EdgeDeployment controller exercises: required to be used once it exists.
EDGE_ONLY: set[Access] = {
    *((GROUP, "edgedeployments", verb) for verb in ("list", "watch")),
    (GROUP, "edgedeployments/status", "patch"),
    *(("apps", "daemonsets", verb) for verb in ("list", "watch", "create", "patch", "delete")),
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("", "pods", "delete"),
    *(
        ("networking.k8s.io", "networkpolicies", verb)
        for verb in ("list", "watch", "create", "patch")
    ),
}
# A sample of what the operator must never be able to do.
REFUSED_SAMPLE = [
    ("delete a node", lambda api, ns: client.CoreV1Api(api).delete_node("gpu-01")),
    ("read a secret", lambda api, ns: client.CoreV1Api(api).read_namespaced_secret("x", ns)),
    ("list secrets", lambda api, ns: client.CoreV1Api(api).list_secret_for_all_namespaces()),
    (
        "create a secret",
        lambda api, ns: client.CoreV1Api(api).create_namespaced_secret(
            ns, {"metadata": {"name": "x"}, "stringData": {"k": "v"}}
        ),
    ),
    (
        "create a pod",
        lambda api, ns: client.CoreV1Api(api).create_namespaced_pod(
            ns,
            {
                "metadata": {"name": "x"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        ),
    ),
    (
        "create a Deployment",
        lambda api, ns: client.AppsV1Api(api).create_namespaced_deployment(
            ns,
            {
                "metadata": {"name": "x"},
                "spec": {
                    "selector": {"matchLabels": {"a": "b"}},
                    "template": {
                        "metadata": {"labels": {"a": "b"}},
                        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                    },
                },
            },
        ),
    ),
    (
        "bind cluster-admin",
        lambda api, ns: client.RbacAuthorizationV1Api(api).create_cluster_role_binding(
            {
                "metadata": {"name": "x"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "x", "namespace": ns}],
            }
        ),
    ),
    (
        "delete a CRD",
        lambda api, ns: client.ApiextensionsV1Api(api).delete_custom_resource_definition(
            "modeltrainings.fogline.io"
        ),
    ),
    (
        "update a ModelTraining",
        lambda api, ns: client.CustomObjectsApi(api).replace_namespaced_custom_object(
            GROUP, VERSION, ns, "modeltrainings", "x", {"metadata": {"name": "x"}}
        ),
    ),
    ("delete a namespace", lambda api, ns: client.CoreV1Api(api).delete_namespace(ns)),
]


@dataclass
class Installed:
    """A release of the chart and the operator running as its ServiceAccount."""

    release: str
    namespace: str
    user: str
    sa_api: client.ApiClient
    operator: OperatorProcess
    started_at: str


def audit_accesses(audit_log: Path, user: str, since: str = "") -> dict[Access, set[int]]:
    """Every (group, resource, verb) that `user` asked for, with the status codes it got."""
    seen: dict[Access, set[int]] = {}
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        if event["user"]["username"] != user or event.get("requestReceivedTimestamp", "") < since:
            continue
        ref = event.get("objectRef")
        if not ref or "resource" not in ref:
            continue  # discovery and other non-resource URLs
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        code = (event.get("responseStatus") or {}).get("code", 0)
        group = ref.get("apiGroup", "")
        seen.setdefault((group, resource, event["verb"]), set()).add(code)
        if event["verb"] == "patch" and code == 201:
            # A server-side apply that creates is authorized as create as well as patch.
            seen.setdefault((group, resource, "create"), set()).add(code)
    return seen


def granted(rules: list[Any]) -> set[Access]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.api_groups
        for resource in rule.resources
        for verb in rule.verbs
    }


def _operator_for(
    cluster: ClusterHandle, tmp: Path, namespace: str, release: str, args: tuple[str, ...]
) -> Installed:
    sa = f"{release}-fogline"
    kubeconfig = service_account_kubeconfig(cluster, namespace, sa, tmp / "sa-kubeconfig")
    started_at = _now()
    settings = {
        "FOGLINE_TRAINER_IMAGE": "registry.example/trainer:test",
        # The edge servers' ingress policy, so that its rules are exercised too.
        "FOGLINE_EDGE_INGRESS_CIDRS": '["10.20.0.0/16"]',
    }
    operator = OperatorProcess(kubeconfig, tmp, settings, args)
    operator.start()
    sa_api = config.new_client_from_config(str(kubeconfig))
    return Installed(
        release, namespace, f"system:serviceaccount:{namespace}:{sa}", sa_api, operator, started_at
    )


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture(scope="module")
def cluster_wide(
    cluster: ClusterHandle, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """The chart in cluster-wide mode; the operator joins its ClusterKopfPeering."""
    namespace, release = f"fogline-{uuid.uuid4().hex[:6]}", "lp"
    peering = f"lp-{uuid.uuid4().hex[:6]}"
    helm(
        cluster,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--set",
        f"peering.name={peering}",
        "--set",
        "replicaCount=0",
    )
    installed = _operator_for(
        cluster,
        tmp_path_factory.mktemp("lp-operator"),
        namespace,
        release,
        ("--all-namespaces", f"--peering={peering}"),
    )
    yield installed
    installed.operator.stop()
    installed.sa_api.close()
    helm(cluster, "uninstall", release, "--namespace", namespace, "--wait")
    client.CoreV1Api(cluster.api).delete_namespace(namespace)


def training(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "model": {"architecture": "mlp"},
        "dataset": {"uri": "builtin:digits"},
        "output": {"uri": "file:///var/lib/fogline/artifacts"},
        **spec,
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelTraining",
        "metadata": {"name": name},
        "spec": body,
    }


def run_training_lifecycle(cluster: ClusterHandle, namespace: str) -> None:
    """Create, progress, succeed, supersede, suspend, distribute and delete: every path of
    the ModelTraining controller that touches the API."""
    custom, core = client.CustomObjectsApi(cluster.api), client.CoreV1Api(cluster.api)

    def status(name: str) -> dict[str, Any]:
        body = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "modeltrainings", name
        )
        return body.get("status") or {}

    def running_pods(name: str) -> list[Any]:
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"fogline.io/modeltraining={name}"
        ).items
        return [p for p in pods if p.status.phase == "Running"]

    def create(body: dict[str, Any]) -> None:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeltrainings", body)

    create(training("single", runPolicy={"backoffLimit": 0}))
    create(
        training(
            "ddp",
            resources={"gpus": 2},
            distributed={"workers": 2, "procsPerWorker": 2, "backend": "nccl"},
        )
    )
    pod = wait_for(lambda: next(iter(running_pods("single")), None), what="the trainer pod")
    progress = {"epoch": 1, "epochs": 2, "loss": 0.3, "updatedAt": "2030-01-01T00:00:00Z"}
    core.patch_namespaced_pod(
        pod.metadata.name,
        namespace,
        {"metadata": {"annotations": {"fogline.io/progress": json.dumps(progress)}}},
    )
    wait_for(lambda: status("single").get("progress"), what="progress in status")
    cluster.steer_pod(namespace, pod.metadata.name, "succeed", {"phase": "Succeeded", "epochs": 2})
    wait_for(
        lambda: status("single").get("phase") in ("Succeeded", "Failed"), what="single finished"
    )

    wait_for(lambda: len(running_pods("ddp")) == 2, what="two ddp workers")

    def patch(body: dict[str, Any]) -> None:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "modeltrainings", "ddp", body
        )

    patch({"spec": {"runPolicy": {"suspend": True}}})  # the Job is patched
    wait_for(lambda: status("ddp").get("phase") == "Suspended", what="ddp suspended")
    patch({"spec": {"hyperparameters": {"epochs": 3}}})  # a new run supersedes the old Job
    wait_for(lambda: status("ddp").get("observedGeneration") == 3, what="ddp new run")

    for name in ("single", "ddp"):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "modeltrainings", name)
    wait_for(
        lambda: (
            not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "modeltrainings")[
                "items"
            ]
        ),
        what="finalizers released",
    )


def run_edge_lifecycle(cluster: ClusterHandle, namespace: str) -> None:
    """Roll a pinned model out to every site, roll a second one out, narrow it to one site
    (the other sites' DaemonSets are deleted), then delete it."""
    custom = client.CustomObjectsApi(cluster.api)
    plural = "edgedeployments"

    def status() -> dict[str, Any]:
        return (
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, "edge").get(
                "status"
            )
            or {}
        )

    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EdgeDeployment",
        "metadata": {"name": "edge"},
        "spec": {
            "model": {"uri": "https://models.example/m/1/", "digest": "sha256:" + "1" * 64},
            "rollout": {"canarySites": 1, "maxUnavailable": 2},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    wait_for(
        lambda: status().get("phase") == "Available", timeout=180, what="first model Available"
    )
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        plural,
        "edge",
        {"spec": {"model": {"digest": "sha256:" + "2" * 64}}},
    )
    wait_for(
        lambda: (s := status()).get("observedGeneration") == 2 and s.get("phase") == "Available",
        timeout=180,
        what="second model Available",
    )
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, "edge", {"spec": {"placement": {"sites": ["site-01"]}}}
    )
    wait_for(
        lambda: (
            (s := status()).get("observedGeneration") == 3
            and (s.get("counts") or {}).get("sites") == 1
        ),
        timeout=120,
        what="the EdgeDeployment narrowed to one site",
    )
    apps = client.AppsV1Api(cluster.api)
    wait_for(
        lambda: len(apps.list_namespaced_daemon_set(namespace).items) == 1,
        what="other sites' DaemonSets deleted",
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, "edge")
    wait_for(
        lambda: (
            not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]
        ),
        what="EdgeDeployment finalizer released",
    )


def test_operator_as_the_chart_service_account_uses_exactly_what_it_is_granted(
    cluster: ClusterHandle, cluster_wide: Installed, namespace: str
) -> None:
    run_training_lifecycle(cluster, namespace)
    if EDGE_CONTROLLER:
        run_edge_lifecycle(cluster, namespace)
    seen = audit_accesses(cluster.devcluster.audit_log, cluster_wide.user, cluster_wide.started_at)

    refused = sorted(access for access, codes in seen.items() if 403 in codes)
    assert not refused, f"the operator was refused {refused}; see {cluster_wide.operator.log_path}"

    role = client.RbacAuthorizationV1Api(cluster.api).read_cluster_role(
        f"{cluster_wide.release}-fogline"
    )
    grants = granted(role.rules)
    used = set(seen)
    assert used <= grants  # with no 403 this holds; it names any rule the chart misses
    excused = set(JUSTIFIED_UNUSED) | (set() if EDGE_CONTROLLER else EDGE_ONLY)
    unused = sorted(grants - used - excused)
    assert not unused, f"the chart grants rules the operator never used: {unused}"
    assert set(JUSTIFIED_UNUSED) <= grants and not set(JUSTIFIED_UNUSED) & used, (
        "stale JUSTIFIED_UNUSED"
    )


@pytest.mark.parametrize(("what", "call"), REFUSED_SAMPLE, ids=[what for what, _ in REFUSED_SAMPLE])
def test_the_chart_service_account_is_refused_what_it_was_not_granted(
    cluster_wide: Installed, namespace: str, what: str, call: Any
) -> None:
    with pytest.raises(ApiException) as refused:
        call(cluster_wide.sa_api, namespace)
    assert refused.value.status == 403, f"{what}: expected 403, got {refused.value.status}"


def test_namespaced_mode_serves_a_training_with_a_role_only_in_its_namespaces(
    cluster: ClusterHandle, crds: list[str], namespace: str, tmp_path: Path
) -> None:
    home, release = f"fogline-{uuid.uuid4().hex[:6]}", "lpns"
    helm(
        cluster,
        "install",
        release,
        str(CHART),
        "--namespace",
        home,
        "--create-namespace",
        "--set",
        "replicaCount=0",
        "--set-json",
        f'watchNamespaces=["{namespace}"]',
    )
    installed = _operator_for(
        cluster, tmp_path, home, release, (f"--namespace={namespace}", "--peering=fogline")
    )
    try:
        custom = client.CustomObjectsApi(cluster.api)
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "modeltrainings", training("scoped")
        )
        wait_for(
            lambda: (
                (
                    custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, "modeltrainings", "scoped"
                    ).get("status")
                    or {}
                ).get("phase")
                == "Running"
            ),
            what="scoped Running",
        )
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "modeltrainings", "scoped"
        )
        wait_for(
            lambda: (
                not custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, "modeltrainings"
                )["items"]
            ),
            what="finalizer released",
        )
        seen = audit_accesses(cluster.devcluster.audit_log, installed.user, installed.started_at)
        refused = sorted(access for access, codes in seen.items() if 403 in codes)
        assert not refused, f"the operator was refused {refused}; see {installed.operator.log_path}"
        # The rule only namespaced mode adds is one kopf uses there.
        assert {("", "namespaces", "list"), ("", "namespaces", "watch")} <= set(seen)
        # Outside its namespaces it holds nothing: no Role there, and the ClusterRole is read-only.
        with pytest.raises(ApiException) as other:
            client.BatchV1Api(installed.sa_api).list_namespaced_job(home)
        assert other.value.status == 403
    finally:
        installed.operator.stop()
        installed.sa_api.close()
        helm(cluster, "uninstall", release, "--namespace", home, "--wait")
        client.CoreV1Api(cluster.api).delete_namespace(home)
