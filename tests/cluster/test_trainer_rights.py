"""A trainer's identity can change the progress annotation of its own pod and nothing else:
the per-namespace Role the operator grants, narrowed by the chart's admission policy, on the
real apiserver with real tokens from the TokenRequest API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from fogline.settings import OperatorSettings
from fogline.training.jobs import build_trainer_rbac
from fogline.workloads.trainer.progress import ANNOTATION, kubernetes_pod_patcher
from tests.cluster.chart_install import CHART, helm
from tests.cluster.test_helm_chart import KUBE_VERSION
from tests.conftest import ClusterHandle, wait_for

pytestmark = pytest.mark.cluster

# A release name of its own, so the policy never collides with a chart installed by
# another test.
RELEASE = "fogline-rights-test"
SETTINGS = OperatorSettings()


@pytest.fixture(scope="module")
def trainer_policy(cluster: ClusterHandle) -> Iterator[list[dict[str, Any]]]:
    """The chart's trainer admission policy and binding, as `helm template` renders them."""
    rendered = helm(
        cluster,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        "fogline-system",
        "--kube-version",
        KUBE_VERSION,
    )
    documents = [
        d
        for d in yaml.safe_load_all(rendered.stdout)
        if d and d["kind"].startswith("ValidatingAdmissionPolicy")
    ]
    assert {d["kind"] for d in documents} == {
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    text = "\n---\n".join(yaml.safe_dump(d) for d in documents)
    cluster.kubectl("apply", "--server-side", "-f", "-", input=text)
    yield documents
    for document in documents:
        cluster.kubectl("delete", document["kind"], document["metadata"]["name"], check=False)


def _pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {"keep": "me"}, "labels": {"app": "trainer"}},
        "spec": {
            "serviceAccountName": SETTINGS.trainer_service_account,
            "containers": [{"name": "trainer", "image": "registry.example/fogline-trainer:test"}],
        },
    }


def _client_with_token(cluster: ClusterHandle, token: str) -> client.ApiClient:
    config = client.Configuration()
    config.host = cluster.api.configuration.host
    config.ssl_ca_cert = cluster.api.configuration.ssl_ca_cert
    config.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(config)


def _token(cluster: ClusterHandle, namespace: str, pod: client.V1Pod | None) -> str:
    spec: dict[str, Any] = {"expirationSeconds": 600}
    if pod is not None:
        spec["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.metadata.name,
            "uid": pod.metadata.uid,
        }
    token: str = (
        client.CoreV1Api(cluster.api)
        .create_namespaced_service_account_token(
            SETTINGS.trainer_service_account, namespace, {"spec": spec}
        )
        .status.token
    )
    return token


@pytest.fixture
def trainer(
    cluster: ClusterHandle, namespace: str, trainer_policy: list[dict[str, Any]]
) -> Iterator[tuple[client.CoreV1Api, str]]:
    """Two pods in a namespace with the operator's trainer RBAC, and a CoreV1Api that acts
    as the trainer of the first one (its token is bound to that pod)."""
    for obj in build_trainer_rbac(namespace, SETTINGS):
        cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))
    core = client.CoreV1Api(cluster.api)
    own = core.create_namespaced_pod(namespace, _pod("trainer-own"))
    core.create_namespaced_pod(namespace, _pod("edge-server"))
    with _client_with_token(cluster, _token(cluster, namespace, own)) as api:
        as_trainer = client.CoreV1Api(api)

        # The policy is compiled asynchronously after it is created: wait until it bites.
        def policy_in_force() -> bool:
            try:
                as_trainer.patch_namespaced_pod(
                    "trainer-own", namespace, {"metadata": {"annotations": {"probe": "x"}}}
                )
            except ApiException as err:
                return err.status == 403
            core.patch_namespaced_pod(
                "trainer-own", namespace, {"metadata": {"annotations": {"probe": None}}}
            )
            return False

        wait_for(policy_in_force, timeout=30, what="the trainer admission policy to apply")
        yield as_trainer, namespace


def _refusal(call: Any) -> str:
    with pytest.raises(ApiException) as refused:
        call()
    assert refused.value.status == 403, refused.value.body
    return str(refused.value.body)


def test_trainer_token_names_its_pod(cluster: ClusterHandle, namespace: str) -> None:
    """The policy relies on the pod name the apiserver binds into a pod's token."""
    for obj in build_trainer_rbac(namespace, SETTINGS):
        cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))
    pod = client.CoreV1Api(cluster.api).create_namespaced_pod(namespace, _pod("p"))
    with _client_with_token(cluster, _token(cluster, namespace, pod)) as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review({})
    extra = review.status.user_info.extra
    assert extra["authentication.kubernetes.io/pod-name"] == ["p"]
    assert extra["authentication.kubernetes.io/pod-uid"] == [pod.metadata.uid]


def test_trainer_reports_progress_on_its_own_pod(
    cluster: ClusterHandle, trainer: tuple[client.CoreV1Api, str], tmp_path: Path
) -> None:
    """Through the trainer's own reporting code, with a token bound to its pod."""
    _, namespace = trainer
    core = client.CoreV1Api(cluster.api)
    own = core.read_namespaced_pod("trainer-own", namespace)
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig = tmp_path / "trainer.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
                "users": [{"name": "t", "user": {"token": _token(cluster, namespace, own)}}],
                "contexts": [{"name": "t", "context": {"cluster": "c", "user": "t"}}],
                "current-context": "t",
            }
        )
    )
    progress = json.dumps({"epoch": 1, "epochs": 2})
    kubernetes_pod_patcher("trainer-own", namespace, str(kubeconfig))({ANNOTATION: progress})
    pod = client.CoreV1Api(cluster.api).read_namespaced_pod("trainer-own", namespace)
    assert pod.metadata.annotations[ANNOTATION] == progress
    assert pod.metadata.annotations["keep"] == "me"


@pytest.mark.parametrize(
    ("pod", "patch", "says"),
    [
        ("edge-server", {"metadata": {"annotations": {ANNOTATION: "{}"}}}, "its token is bound to"),
        (
            "trainer-own",
            {"metadata": {"annotations": {"other": "x"}}},
            "only the fogline.io/progress",
        ),
        (
            "trainer-own",
            {"metadata": {"annotations": {"keep": None}}},
            "only the fogline.io/progress",
        ),
        (
            "trainer-own",
            {"metadata": {"labels": {"app": "server"}}},
            "only the fogline.io/progress",
        ),
        (
            "trainer-own",
            {"metadata": {"finalizers": ["x.io/hold"]}},
            "only the fogline.io/progress",
        ),
        (
            "trainer-own",
            {"spec": {"containers": [{"name": "trainer", "image": "evil:1"}]}},
            "only the fogline.io/progress",
        ),
        ("trainer-own", {"metadata": {"annotations": {ANNOTATION: "x" * 5000}}}, "4096 bytes"),
    ],
    ids=[
        "other-pod",
        "other-annotation",
        "removed-annotation",
        "label",
        "finalizer",
        "image",
        "oversized-progress",
    ],
)
def test_trainer_is_refused_anything_but_its_progress(
    cluster: ClusterHandle,
    trainer: tuple[client.CoreV1Api, str],
    pod: str,
    patch: dict[str, Any],
    says: str,
) -> None:
    as_trainer, namespace = trainer
    before = client.CoreV1Api(cluster.api).read_namespaced_pod(pod, namespace)
    body = _refusal(lambda: as_trainer.patch_namespaced_pod(pod, namespace, patch))
    assert says in body
    after = client.CoreV1Api(cluster.api).read_namespaced_pod(pod, namespace)
    assert after.metadata.resource_version == before.metadata.resource_version


def test_trainer_cannot_delete_create_or_write_status(
    trainer: tuple[client.CoreV1Api, str],
) -> None:
    as_trainer, namespace = trainer
    _refusal(lambda: as_trainer.delete_namespaced_pod("edge-server", namespace))
    _refusal(lambda: as_trainer.create_namespaced_pod(namespace, _pod("intruder")))
    _refusal(
        lambda: as_trainer.patch_namespaced_pod_status(
            "trainer-own", namespace, {"status": {"message": "x"}}
        )
    )


def test_token_bound_to_no_pod_changes_nothing(
    cluster: ClusterHandle, trainer: tuple[client.CoreV1Api, str]
) -> None:
    _, namespace = trainer
    with _client_with_token(cluster, _token(cluster, namespace, None)) as api:
        body = _refusal(
            lambda: client.CoreV1Api(api).patch_namespaced_pod(
                "trainer-own", namespace, {"metadata": {"annotations": {ANNOTATION: "{}"}}}
            )
        )
    assert "its token is bound to" in body


def test_operator_identity_is_not_narrowed(
    cluster: ClusterHandle, trainer: tuple[client.CoreV1Api, str]
) -> None:
    _, namespace = trainer
    client.CoreV1Api(cluster.api).patch_namespaced_pod(
        "edge-server", namespace, {"metadata": {"labels": {"app": "edge"}}}
    )


def test_policy_is_rendered_into_the_install_manifest() -> None:
    from tests.cluster.chart_install import REPO

    installed = [
        d
        for d in yaml.safe_load_all((REPO / "manifests" / "install.yaml").read_text())
        if d and d["kind"].startswith("ValidatingAdmissionPolicy")
    ]
    assert sorted(d["kind"] for d in installed) == [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]


def test_policy_can_be_turned_off(cluster: ClusterHandle) -> None:
    rendered = helm(
        cluster,
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "rbac.trainerAdmissionPolicy=false",
    )
    assert "ValidatingAdmissionPolicy" not in rendered.stdout
