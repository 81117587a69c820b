"""The Helm chart, the kubectl install manifest and the Argo CD Applications as users meet
them: lint, render, validate against the real apiserver, install, upgrade and uninstall,
and bad values refused by the chart's schema before anything is applied."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from fogline.settings import OperatorSettings
from tests.cluster.chart_install import CHART, REPO, helm
from tests.conftest import ClusterHandle, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KUBE_VERSION = "1.36.3"


def template(
    cluster: ClusterHandle, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return helm(
        cluster,
        "template",
        "hf",
        str(CHART),
        "--namespace",
        "fogline-system",
        "--kube-version",
        KUBE_VERSION,
        *args,
        check=check,
    )


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def test_chart_crds_are_the_canonical_crds_plus_kopf_peerings() -> None:
    canonical = {path.name: path.read_bytes() for path in (REPO / "crds").glob("*.yaml")}
    packaged = {path.name: path.read_bytes() for path in (CHART / "crds").glob("*.yaml")}
    assert {name: packaged.get(name) for name in canonical} == canonical, "run tools/sync_crds.py"
    extra = set(packaged) - set(canonical)
    assert extra == {"clusterkopfpeerings.kopf.dev.yaml", "kopfpeerings.kopf.dev.yaml"}


def test_helm_lint_is_clean(cluster: ClusterHandle) -> None:
    result = helm(cluster, "lint", str(CHART), "--strict")
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_install_manifest_and_argocd_patch_are_fresh_renders() -> None:
    spec = importlib.util.spec_from_file_location(
        "render_manifests", REPO / "tools" / "render_manifests.py"
    )
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--check"]) == 0, "run tools/render_manifests.py"


def test_operator_pod_is_hardened_and_its_settings_parse(cluster: ClusterHandle) -> None:
    docs = documents(
        template(
            cluster,
            "--set",
            "settings.siteLabel=example.com/site",
            "--set",
            "settings.requireModelSignature=true",
            "--set-json",
            'settings.gpuNodeSelector={"pool":"a100"}',
            "--set",
            "settings.edgeCacheKeep=5",
            "--set",
            "settings.edgeCacheMaxBytes=21474836480",
        ).stdout
    )
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert (
        pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    )
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert (
        container["args"][:2] == ["run", "--all-namespaces"]
        and "--peering=fogline" in container["args"]
    )
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = OperatorSettings.from_env(env)  # what the operator itself will parse at start-up
    assert settings.site_label == "example.com/site"
    assert settings.gpu_node_selector == {"fogline.io/pool": "gpu", "pool": "a100"}
    assert settings.trainer_image == "ghcr.io/fogline/trainer:0.1.0"
    assert settings.edge_tolerations[0]["key"] == "node-role.kubernetes.io/edge"
    assert (settings.edge_cache_keep, settings.edge_cache_max_bytes) == (5, 20 << 30)
    # The edge pods' defaults: a per-pod cache (Pod Security restricted), no ingress policy.
    assert settings.edge_cache_mode == "Pod" and settings.edge_ingress_cidrs is None
    assert settings.require_model_signature is True


def test_edge_security_settings_reach_the_operator(cluster: ClusterHandle) -> None:
    args = ["--set", "settings.edgeCacheMode=Node"]
    args += ["--set-json", 'settings.edgeIngressCIDRs=["10.20.0.0/16"]']
    docs = documents(template(cluster, *args).stdout)
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    settings = OperatorSettings.from_env(
        {e["name"]: e["value"] for e in container["env"] if "value" in e}
    )
    assert settings.edge_cache_mode == "Node"
    assert settings.edge_ingress_cidrs == ("10.20.0.0/16",)


def test_analysis_settings_reach_the_operator_with_the_ca_mounted(cluster: ClusterHandle) -> None:
    url = "https://prometheus.monitoring:9090"
    args = ["--set", f"settings.analysis.prometheus.url={url}"]
    args += ["--set-string", "settings.analysis.prometheus.caBundle=-----BEGIN CERTIFICATE-----"]
    docs = documents(template(cluster, *args).stdout)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    settings = OperatorSettings.from_env(
        {e["name"]: e["value"] for e in container["env"] if "value" in e}
    )
    assert settings.analysis_prometheus_url == url
    assert settings.analysis_prometheus_ca_bundle == "/etc/fogline/prometheus-ca/ca.crt"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "prometheus-ca")
    assert mount["mountPath"] == "/etc/fogline/prometheus-ca"
    config = one(docs, "ConfigMap")
    assert config["data"]["ca.crt"] == "-----BEGIN CERTIFICATE-----"
    assert any(
        v.get("configMap", {}).get("name") == config["metadata"]["name"] for v in pod["volumes"]
    )


def test_the_prometheus_token_labels_and_timeout_reach_the_operator(cluster: ClusterHandle) -> None:
    prefix = "settings.analysis.prometheus"
    args = ["--set", f"{prefix}.url=https://prometheus.monitoring:9090"]
    args += ["--set", f"{prefix}.bearerToken.secret=prometheus-reader"]
    args += ["--set", f"{prefix}.podLabel=kubernetes_pod_name"]
    args += ["--set", f"{prefix}.timeoutSeconds=2.5"]
    pod = one(documents(template(cluster, *args).stdout), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    settings = OperatorSettings.from_env(
        {e["name"]: e["value"] for e in container["env"] if "value" in e}
    )
    assert settings.analysis_prometheus_pod_label == "kubernetes_pod_name"
    assert settings.analysis_prometheus_namespace_label == "namespace"
    assert settings.analysis_prometheus_timeout_seconds == 2.5
    mount = next(m for m in container["volumeMounts"] if m["name"] == "prometheus-token")
    assert settings.analysis_prometheus_bearer_token_file == mount["mountPath"] + "/token"
    volume = next(v for v in pod["volumes"] if v["name"] == "prometheus-token")
    assert volume["secret"]["secretName"] == "prometheus-reader"
    # Without a URL nothing of it is rendered: the Prometheus source is not offered.
    defaults = one(documents(template(cluster).stdout), "Deployment")
    assert "PROMETHEUS" not in json.dumps(defaults)


BAD_VALUES = [
    (["--set", "replicaCount=4"], "/replicaCount"),
    (["--set", "peering.priority=first"], "/peering/priority"),
    (["--set-json", 'watchNamespaces=["team-*"]'], "/watchNamespaces/0"),
    (["--set", "settings.siteLabel=not a label"], "/settings/siteLabel"),
    (["--set", "settings.edgeNodeSelector=null"], "edgeNodeSelector"),
    (["--set", "settings.progressIntervalSeconds=0"], "/settings/progressIntervalSeconds"),
    (["--set", "settings.edgeCacheKeep=-1"], "/settings/edgeCacheKeep"),
    (["--set", "settings.edgeCacheMaxBytes=lots"], "/settings/edgeCacheMaxBytes"),
    (["--set", "image.digest=sha256:nothex"], "/image/digest"),
    (["--set", "settings.imagePullPolicy=Sometimes"], "/settings/imagePullPolicy"),
    (
        ["--set-json", 'networkPolicy.apiServerCIDRs=["everywhere"]'],
        "/networkPolicy/apiServerCIDRs/0",
    ),
    (["--set", "settings.edgeCacheMode=Host"], "/settings/edgeCacheMode"),
    (["--set-json", 'settings.edgeIngressCIDRs=["everywhere"]'], "/settings/edgeIngressCIDRs/0"),
    (["--set", "sttings.siteLabel=typo"], "additional properties 'sttings'"),
    (["--set", "settings.requireModelSignature=yes"], "/settings/requireModelSignature"),
    (["--set", "settings.analysis.prometheus.url=ftp://x"], "/settings/analysis/prometheus/url"),
    (
        ["--set", "settings.analysis.prometheus.podLabel=pod-name"],
        "/settings/analysis/prometheus/podLabel",
    ),
    (
        ["--set-json", 'settings.gpuTolerations=[{"key":"a","operator":"Maybe"}]'],
        "/settings/gpuTolerations/0",
    ),
]


@pytest.mark.parametrize(("args", "names"), BAD_VALUES, ids=[a[-1] for a, _ in BAD_VALUES])
def test_bad_values_are_refused_with_the_offending_field(
    cluster: ClusterHandle, args: list[str], names: str
) -> None:
    result = template(cluster, *args, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert names in result.stderr


def wait_established(cluster: ClusterHandle, *names: str) -> None:
    """Polls rather than `kubectl wait`, which fails on a CRD whose status is not written yet."""
    api = client.ApiextensionsV1Api(cluster.api)

    def established(name: str) -> bool:
        conditions = (api.read_custom_resource_definition(name).status.conditions) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(
        lambda: all(established(n) for n in names), timeout=60, what=f"CRDs {names} Established"
    )


def _server_dry_run(cluster: ClusterHandle, text: str) -> str:
    result = cluster.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=fogline-tests",
        "-f",
        "-",
        input=text,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def chart_crds(cluster: ClusterHandle, crds: list[str]) -> None:
    """The chart's CRDs (Fogline's and kopf's peerings) applied, as helm would."""
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=fogline-tests", "-f", str(CHART / "crds")
    )
    wait_established(cluster, "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


def test_every_rendering_validates_against_the_real_apiserver(
    cluster: ClusterHandle, chart_crds: None, namespace: str
) -> None:
    core = client.CoreV1Api(cluster.api)
    if not any(n.metadata.name == "fogline-system" for n in core.list_namespace().items):
        core.create_namespace({"metadata": {"name": "fogline-system"}})
    variants = {
        "defaults": [],
        "namespaced": ["--set-json", f'watchNamespaces=["{namespace}"]'],
        "everything": [
            "--set",
            "podDisruptionBudget.enabled=true",
            "--set",
            "verbose=true",
            "--set",
            "image.digest=sha256:" + "a" * 64,
            "--set-json",
            'extraEnv=[{"name":"X","value":"1"}]',
            "--set",
            "priorityClassName=system-cluster-critical",
            "--set",
            "networkPolicy.enabled=true",
            "--set-json",
            'networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"team":"obs"}}}]',
            "--set",
            "settings.analysis.prometheus.url=https://prometheus.monitoring:9090",
            "--set",
            "settings.analysis.prometheus.bearerToken.secret=prometheus-reader",
        ],
    }
    for name, args in variants.items():
        out = _server_dry_run(cluster, template(cluster, *args).stdout)
        assert "serverside-applied (server dry run)" in out, f"{name}: {out}"
    namespaced = documents(template(cluster, *variants["namespaced"]).stdout)
    role = one(namespaced, "Role")
    assert role["metadata"]["namespace"] == namespace
    assert one(namespaced, "KopfPeering")["metadata"]["namespace"] == namespace
    cluster_rules = one(namespaced, "ClusterRole")["rules"]
    assert all(set(rule["verbs"]) <= {"list", "watch"} for rule in cluster_rules), (
        "cluster scope stays read-only"
    )


def test_network_policy_opens_only_health_metrics_api_and_dns(cluster: ClusterHandle) -> None:
    args = ["--set", "networkPolicy.enabled=true"]
    args += ["--set-json", 'networkPolicy.apiServerCIDRs=["10.43.0.1/32"]']
    args += ["--set-json", "networkPolicy.apiServerPorts=[6443]"]
    docs = documents(template(cluster, *args).stdout)
    policy = one(docs, "NetworkPolicy")
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == (one(docs, "Deployment")["spec"]["selector"]["matchLabels"])
    )
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == ["health", "metrics"]
    to_api, dns = policy["spec"]["egress"]
    assert to_api["to"] == [{"ipBlock": {"cidr": "10.43.0.1/32"}}]
    assert to_api["ports"] == [{"port": 6443, "protocol": "TCP"}]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert "NetworkPolicy" not in template(cluster).stdout


def test_servicemonitor_renders_for_the_prometheus_operator(cluster: ClusterHandle) -> None:
    docs = documents(template(cluster, "--set", "serviceMonitor.enabled=true").stdout)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    ports = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert ports["metrics"]["targetPort"] == "metrics" and ports["http"]["targetPort"] == "health"
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port=9090" in container["args"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]


def test_helm_install_upgrade_and_uninstall(cluster: ClusterHandle, chart_crds: None) -> None:
    release, namespace = "hf", f"fogline-{uuid.uuid4().hex[:6]}"
    peering = f"hf-{uuid.uuid4().hex[:6]}"
    apps = client.AppsV1Api(cluster.api)
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
    )
    try:
        names = {
            r.name
            for r in client.CustomObjectsApi(cluster.api)
            .get_api_resources("fogline.io", "v1alpha1")
            .resources
        }
        assert {
            "modeltrainings",
            "modeltrainings/status",
            "edgedeployments",
            "edgedeployments/status",
        } <= names
        deployment = apps.read_namespaced_deployment(f"{release}-fogline", namespace)
        assert deployment.spec.template.spec.service_account_name == f"{release}-fogline"
        client.CustomObjectsApi(cluster.api).get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", peering
        )

        helm(
            cluster,
            "upgrade",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--reuse-values",
            "--set",
            "settings.siteLabel=example.com/site",
        )

        def site_label() -> str:
            d = apps.read_namespaced_deployment(f"{release}-fogline", namespace)
            env = {e.name: e.value for e in d.spec.template.spec.containers[0].env}
            return str(env["FOGLINE_SITE_LABEL"])

        assert site_label() == "example.com/site"
        refused = helm(
            cluster,
            "upgrade",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--reuse-values",
            "--set",
            "replicaCount=5",
            check=False,
        )
        assert refused.returncode != 0 and "/replicaCount" in refused.stderr
        assert "deployed" in helm(cluster, "status", release, "--namespace", namespace).stdout
    finally:
        helm(cluster, "uninstall", release, "--namespace", namespace, "--wait")
    assert not apps.list_namespaced_deployment(namespace).items
    assert (
        not client.RbacAuthorizationV1Api(cluster.api)
        .list_cluster_role(label_selector=f"app.kubernetes.io/instance={release}")
        .items
    )
    # Helm never deletes CRDs: the users' ModelTrainings survive an uninstall.
    client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(
        "modeltrainings.fogline.io"
    )
    client.CoreV1Api(cluster.api).delete_namespace(namespace)


def test_kubectl_apply_of_the_install_manifest_installs_the_same_objects(
    cluster: ClusterHandle, chart_crds: None, namespace: str
) -> None:
    manifest = (REPO / "manifests" / "install.yaml").read_text()
    docs = documents(manifest)
    rendered = documents(
        helm(
            cluster,
            "template",
            "fogline",
            str(CHART),
            "--namespace",
            "fogline-system",
            "--include-crds",
            "--kube-version",
            KUBE_VERSION,
        ).stdout
    )
    assert [d for d in docs if d["kind"] != "Namespace"] == rendered
    out = cluster.kubectl(
        "apply", "--server-side", "--field-manager=fogline-tests", "-f", "-", input=manifest
    ).stdout
    try:
        for doc in docs:
            assert f"{doc['kind'].lower()}" in out.lower()
        wait_for(
            lambda: client.AppsV1Api(cluster.api).read_namespaced_deployment(
                "fogline", "fogline-system"
            ),
            what="the operator Deployment",
        )
        samples = cluster.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", str(REPO / "manifests" / "samples")
        )
        assert samples.stdout.count("(server dry run)") == len(
            list((REPO / "manifests" / "samples").glob("*.yaml"))
        )
    finally:
        # Everything but the CRDs and the namespace-wide objects other tests share.
        kept = {"CustomResourceDefinition", "Namespace"}
        rest = [d for d in docs if d["kind"] not in kept]
        cluster.kubectl(
            "delete",
            "--ignore-not-found",
            "--wait=false",
            "-f",
            "-",
            input=yaml.safe_dump_all(rest),
        )


def _argocd_application_crd(tmp_path: Path) -> Path:
    """Argo CD's own Application CRD, from its Go module at the pinned version."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs Go to fetch Argo CD's Application CRD from the Go module proxy")
    version = (REPO / "tools" / "argocd-version").read_text().strip()
    result = subprocess.run(
        [go, "mod", "download", "-json", f"github.com/argoproj/argo-cd/v3@{version}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    crd = Path(json.loads(result.stdout)["Dir"]) / "manifests" / "crds" / "application-crd.yaml"
    assert crd.is_file(), f"no Application CRD in Argo CD {version}"
    return crd


def test_argocd_applications_validate_against_argocds_own_crd(
    cluster: ClusterHandle, tmp_path: Path
) -> None:
    crd = _argocd_application_crd(tmp_path)
    cluster.kubectl("apply", "--server-side", "--field-manager=fogline-tests", "-f", str(crd))
    wait_established(cluster, "applications.argoproj.io")
    core = client.CoreV1Api(cluster.api)
    if not any(n.metadata.name == "argocd" for n in core.list_namespace().items):
        core.create_namespace({"metadata": {"name": "argocd"}})
    argocd = REPO / "manifests" / "argocd"
    files = [
        argocd / "root.yaml",
        *sorted((argocd / "apps").glob("*.yaml")),
        argocd / "argocd-cm-patch.yaml",
    ]
    for path in files:
        out = _server_dry_run(cluster, path.read_text())
        assert "(server dry run)" in out, f"{path.name}: {out}"
    waves = {
        doc["metadata"]["name"]: int(doc["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
        for path in (argocd / "apps").glob("*.yaml")
        for doc in documents(path.read_text())
    }
    assert waves["fogline"] < waves["fogline-samples"], (
        "the CRDs' Application syncs before the samples"
    )
