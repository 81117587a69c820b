"""The per-site DaemonSet builder: which nodes a site's server runs on, how its pods are
replaced, how the fetch step and the server pin the artifact digest, and when the template
hash moves."""

from __future__ import annotations

import re
from typing import Any

import pytest

from fogline.api.edgedeployment import EdgeDeployment
from fogline.edge.daemonsets import (
    DIGEST_ANNOTATION,
    PVC_ROOT,
    SITE_LABEL,
    TEMPLATE_HASH_ANNOTATION,
    ModelRef,
    build_site_daemonset,
    daemonset_name,
)
from fogline.settings import OperatorSettings, SettingsError

pytestmark = pytest.mark.unit

SETTINGS = OperatorSettings(edge_cache_dir="/srv/fogline-cache")
NODE_CACHE = OperatorSettings(edge_cache_dir="/srv/fogline-cache", edge_cache_mode="Node")
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
MODEL = ModelRef(uri="pvc://models/runs/digits/0123abcd", digest=DIGEST_A)
OCI = ModelRef(uri="oci://registry.example:5000/models/digits", digest="sha256:" + "ab" * 32)


def edge(name: str = "shop", **overrides: Any) -> EdgeDeployment:
    spec: dict[str, Any] = {"model": {"uri": MODEL.uri, "digest": MODEL.digest}, **overrides}
    return EdgeDeployment.from_body({"metadata": {"name": name, "namespace": "edge"}, "spec": spec})


def daemonset(
    e: EdgeDeployment | None = None, site: str = "berlin", model: ModelRef = MODEL
) -> dict[str, Any]:
    return build_site_daemonset(e or edge(), site, model, SETTINGS)


def pod_spec(ds: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = ds["spec"]["template"]["spec"]
    return result


def container(ds: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod_spec(ds)
    (found,) = [c for c in spec["initContainers"] + spec["containers"] if c["name"] == name]
    result: dict[str, Any] = found
    return result


# --- placement ------------------------------------------------------------------------------


def test_site_daemonset_runs_only_on_the_nodes_of_its_site() -> None:
    e = edge(placement={"nodeSelector": {"fogline.io/edge": "yes"}, "siteLabel": "example/site"})
    ds = daemonset(e, site="hamburg")
    assert pod_spec(ds)["nodeSelector"] == {"fogline.io/edge": "yes", "example/site": "hamburg"}
    assert ds["spec"]["selector"]["matchLabels"] == {
        "fogline.io/edgedeployment": "shop",
        SITE_LABEL: "hamburg",
    }
    assert ds["spec"]["selector"]["matchLabels"].items() <= (
        ds["spec"]["template"]["metadata"]["labels"].items()
    )


def test_tolerations_come_from_the_spec() -> None:
    toleration = {"key": "shop-floor", "operator": "Exists", "effect": "NoExecute"}
    assert pod_spec(daemonset(edge(placement={"tolerations": [toleration]})))["tolerations"] == [
        toleration
    ]
    default = pod_spec(daemonset())["tolerations"]
    assert default == [
        {"key": "node-role.kubernetes.io/edge", "operator": "Exists", "effect": "NoSchedule"}
    ]


@pytest.mark.parametrize(
    ("replace_in_place", "want"),
    [
        pytest.param(True, {"type": "OnDelete"}, id="operator-replaces-pods"),
        pytest.param(
            False,
            {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            id="surge-one-node-at-a-time",
        ),
    ],
)
def test_update_strategy_follows_replace_in_place(
    replace_in_place: bool, want: dict[str, Any]
) -> None:
    ds = daemonset(edge(rollout={"replaceInPlace": replace_in_place}))
    assert ds["spec"]["updateStrategy"] == want


# --- the fetch step and the server ----------------------------------------------------------


def test_fetch_step_is_told_the_uri_and_the_digest() -> None:
    fetch = container(daemonset(), "fetch")
    assert f"--uri={MODEL.uri}" in fetch["args"]
    assert f"--digest={DIGEST_A}" in fetch["args"]
    assert fetch["command"] == ["fogline", "fetch"]


def test_fetch_step_pins_its_digests_and_keeps_the_rollback_targets_within_the_settings() -> None:
    settings = OperatorSettings(edge_cache_keep=2, edge_cache_max_bytes=5 << 30)
    model = ModelRef(MODEL.uri, DIGEST_A, rollback=(DIGEST_B,))
    args = container(build_site_daemonset(edge(), "berlin", model, settings), "fetch")["args"]
    assert args[-4:] == [
        "--cache-keep=2",
        f"--cache-max-bytes={5 << 30}",
        "--cache-owner=edge/shop",
        f"--keep-digest={DIGEST_B}",
    ]


def test_cache_settings_come_from_the_environment_the_chart_sets() -> None:
    env = {"FOGLINE_EDGE_CACHE_KEEP": "5", "FOGLINE_EDGE_CACHE_MAX_BYTES": str(10 << 30)}
    settings = OperatorSettings.from_env(env)
    assert (settings.edge_cache_keep, settings.edge_cache_max_bytes) == (5, 10 << 30)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FOGLINE_EDGE_CACHE_KEEP", "-1"),
        ("FOGLINE_EDGE_CACHE_KEEP", "three"),
        ("FOGLINE_EDGE_CACHE_MAX_BYTES", "10GiB"),
    ],
)
def test_bad_cache_settings_are_refused_at_start_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        OperatorSettings.from_env({name: value})


def test_server_refuses_any_other_digest_and_serves_the_named_model() -> None:
    server = container(daemonset(edge(modelName="detector", runtime={"port": 9000})), "server")
    assert f"--expected-digest={DIGEST_A}" in server["args"]
    assert "--name=detector" in server["args"]
    assert "--port=9000" in server["args"]
    assert server["ports"] == [{"name": "http", "containerPort": 9000}]


def test_readiness_probe_asks_the_server_on_its_named_port() -> None:
    probe = container(daemonset(), "server")["readinessProbe"]
    assert probe["httpGet"] == {"path": "/v2/health/ready", "port": "http"}


def test_runtime_image_overrides_the_operator_default() -> None:
    assert container(daemonset(), "server")["image"] == SETTINGS.server_image
    custom = daemonset(edge(runtime={"image": "example.com/server:2"}))
    assert {c["image"] for c in (container(custom, "fetch"), container(custom, "server"))} == {
        "example.com/server:2"
    }


def test_server_resources_request_cpu_and_limit_memory() -> None:
    server = container(
        daemonset(edge(runtime={"resources": {"cpu": "250m", "memory": "256Mi"}})), "server"
    )
    assert server["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"memory": "256Mi"},
    }
    assert "resources" not in container(daemonset(), "server")


# --- volumes --------------------------------------------------------------------------------


def volumes(ds: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(ds)["volumes"]}


def test_cache_is_a_volume_of_the_pod_by_default() -> None:
    ds = daemonset()
    assert volumes(ds)["cache"] == {"name": "cache", "emptyDir": {}}
    assert not any("hostPath" in v for v in pod_spec(ds)["volumes"])


def test_node_cache_mode_keeps_the_cache_in_the_node_folder_from_the_settings() -> None:
    ds = build_site_daemonset(edge(), "berlin", MODEL, NODE_CACHE)
    assert volumes(ds)["cache"]["hostPath"] == {
        "path": "/srv/fogline-cache",
        "type": "DirectoryOrCreate",
    }
    # The node folder belongs to root: only the fetch step writes it, as UID 0 with every
    # capability dropped; the server stays non-root.
    fetch = container(ds, "fetch")["securityContext"]
    assert fetch["runAsUser"] == 0 and fetch["capabilities"] == {"drop": ["ALL"]}
    assert fetch["allowPrivilegeEscalation"] is False
    assert "runAsUser" not in container(ds, "server")["securityContext"]


# Pod Security `restricted`, field by field, for the pod and each container (the apiserver's
# own enforcement is proven in tests/cluster/test_edge_from_s3.py).
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


@pytest.mark.parametrize(
    "model",
    [
        pytest.param({"uri": "s3://bucket/m/1", "digest": DIGEST_A}, id="fetch-s3"),
        pytest.param({"uri": MODEL.uri, "digest": DIGEST_A}, id="fetch-pvc"),
        pytest.param({"uri": OCI.uri, "digest": OCI.digest}, id="fetch-oci"),
        pytest.param(
            {"uri": OCI.uri, "digest": OCI.digest, "delivery": "ImageVolume"}, id="image-volume"
        ),
    ],
)
def test_every_container_runs_non_root_without_privileges_on_a_read_only_root(
    model: dict[str, str],
) -> None:
    pod = daemonset(edge(model=model), model=ModelRef(model["uri"], model["digest"]))["spec"][
        "template"
    ]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for c in pod.get("initContainers", []) + pod["containers"]:
        assert c["securityContext"] == RESTRICTED_CONTAINER, c["name"]
    assert not any("hostPath" in v for v in pod["volumes"])


def test_pvc_source_is_mounted_read_only_for_the_fetch_step() -> None:
    ds = daemonset()
    assert volumes(ds)["artifact-source"]["persistentVolumeClaim"] == {
        "claimName": "models",
        "readOnly": True,
    }
    fetch = container(ds, "fetch")
    mounts = {m["name"]: m for m in fetch["volumeMounts"]}
    assert mounts["artifact-source"] == {
        "name": "artifact-source",
        "mountPath": f"{PVC_ROOT}/models",
        "readOnly": True,
    }
    assert {"name": "FOGLINE_PVC_ROOT", "value": PVC_ROOT} in fetch["env"]
    server_mounts = {m["name"] for m in container(ds, "server")["volumeMounts"]}
    assert "artifact-source" not in server_mounts


@pytest.mark.parametrize(
    ("uri", "want_source"),
    [
        pytest.param(
            "file:///srv/models/digits",
            {"hostPath": {"path": "/srv/models/digits", "type": "Directory"}},
            id="file-is-a-host-folder",
        ),
        pytest.param("https://example.com/model.onnx", None, id="http-needs-no-volume"),
    ],
)
def test_other_sources_mount_what_they_need(uri: str, want_source: dict[str, Any] | None) -> None:
    ds = daemonset(model=ModelRef(uri=uri, digest=DIGEST_A))
    source = volumes(ds).get("artifact-source")
    if want_source is None:
        assert source is None
    else:
        assert source == {"name": "artifact-source", **want_source}


# --- digest and template hash ---------------------------------------------------------------


def test_digest_is_annotated_on_the_daemonset_and_its_pods() -> None:
    ds = daemonset()
    assert ds["metadata"]["annotations"][DIGEST_ANNOTATION] == DIGEST_A
    assert ds["spec"]["template"]["metadata"]["annotations"][DIGEST_ANNOTATION] == DIGEST_A


def template_hash(ds: dict[str, Any]) -> str:
    return str(ds["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION])


def test_template_hash_moves_with_the_digest_not_with_rollout_pacing() -> None:
    before = template_hash(daemonset())
    assert template_hash(daemonset()) == before
    assert template_hash(daemonset(model=ModelRef(MODEL.uri, DIGEST_B))) != before
    # The status and anything outside the pod template leave it alone.
    same = edge(revisionHistoryLimit=3, rollout={"canarySites": 2, "pauseSeconds": 30})
    assert template_hash(daemonset(same)) == before


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edge_name", "site"),
    [
        pytest.param("shop", "berlin", id="short"),
        pytest.param("e" * 30, "s" * 32, id="exactly-63"),
        pytest.param("e" * 30, "s" * 33, id="one-over"),
        pytest.param("e" * 253, "s" * 63, id="longest"),
    ],
)
def test_daemonset_name_is_a_label_sized_name(edge_name: str, site: str) -> None:
    name = daemonset_name(edge_name, site)
    assert len(name) <= 63
    assert name.startswith(f"{edge_name}-{site}"[:50])


def test_long_names_that_share_a_prefix_stay_apart() -> None:
    assert daemonset_name("e" * 60, "site-a") != daemonset_name("e" * 60, "site-b")
    assert daemonset_name("shop", "berlin").startswith("shop-berlin-")


def test_daemonset_names_of_different_deployments_never_collide() -> None:
    # `e` + `s-x` and `e-s` + `x` both read `e-s-x`; the hash of the pair tells them apart.
    assert daemonset_name("e", "s-x") != daemonset_name("e-s", "x")


@pytest.mark.parametrize("site", ["Berlin_1", "Shop 12", "UPPER", "a" * 80])
def test_site_labels_that_are_not_names_still_give_valid_distinct_daemonset_names(
    site: str,
) -> None:
    name = daemonset_name("digits", site)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    assert name != daemonset_name("digits", site + "x")


# --- stores and image volumes ---------------------------------------------------------------


def test_image_volume_delivery_mounts_the_artifact_with_no_init_step_or_host_path() -> None:
    e = edge(model={"uri": OCI.uri, "digest": OCI.digest, "delivery": "ImageVolume"})
    pod = daemonset(e, model=OCI)["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert not any("hostPath" in volume for volume in pod["volumes"])
    (model,) = [v for v in pod["volumes"] if v["name"] == "model"]
    assert model["image"]["reference"] == f"registry.example:5000/models/digits:sha256-{'ab' * 32}"
    server = pod["containers"][0]
    assert {"name": "model", "mountPath": "/models/current", "readOnly": True} in server[
        "volumeMounts"
    ]
    assert f"--expected-digest={OCI.digest}" in server["args"]  # the server still verifies
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_image_volume_delivery_pulls_with_the_named_secret_as_image_pull_secret() -> None:
    access = {"credentialsSecret": "registry-pull"}
    e = edge(
        model={"uri": OCI.uri, "digest": OCI.digest, "delivery": "ImageVolume", "access": access}
    )
    pod = daemonset(e, model=OCI)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-pull"}]
    plain = edge(model={"uri": OCI.uri, "digest": OCI.digest, "delivery": "ImageVolume"})
    assert "imagePullSecrets" not in daemonset(plain, model=OCI)["spec"]["template"]["spec"]


def test_fetch_delivery_of_an_oci_artifact_keeps_the_init_step() -> None:
    e = edge(model={"uri": OCI.uri, "digest": OCI.digest})
    pod = daemonset(e, model=OCI)["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"][0] == f"--uri={OCI.uri}"


def test_read_only_secret_reaches_the_fetch_step_only() -> None:
    access = {"endpoint": "https://s3.example", "credentialsSecret": "reader"}
    model = ModelRef(uri="s3://bucket/models/run-1", digest=OCI.digest)
    e = edge(model={"uri": model.uri, "digest": model.digest, "access": access})
    pod = daemonset(e, model=model)["spec"]["template"]["spec"]
    fetch, server = pod["initContainers"][0], pod["containers"][0]
    assert fetch["envFrom"] == [{"secretRef": {"name": "reader"}}]
    assert {"name": "AWS_ENDPOINT_URL", "value": "https://s3.example"} in fetch["env"]
    assert "envFrom" not in server
    assert "--cache-keep=3" in fetch["args"]


# --- server options: limits, drain, TLS, token ------------------------------------------------


def test_a_spec_without_server_options_keeps_the_template_it_had() -> None:
    ds = daemonset()
    server = container(ds, "server")
    assert not [arg for arg in server["args"] if arg.startswith(("--max-", "--drain", "--tls"))]
    assert pod_spec(ds)["terminationGracePeriodSeconds"] == 30


def test_limits_and_drain_become_server_flags_and_the_grace_period_covers_the_drain() -> None:
    e = edge(
        runtime={
            "limits": {
                "maxBodyBytes": 1048576,
                "maxBodyBytesInFlight": 8388608,
                "maxQueue": 32,
                "requestHeadTimeoutSeconds": 5,
            },
            "drainSeconds": 15,
        }
    )
    ds = daemonset(e)
    args = container(ds, "server")["args"]
    for flag in (
        "--max-body-bytes=1048576",
        "--max-body-bytes-in-flight=8388608",
        "--max-queue=32",
        "--request-head-timeout=5",
        "--drain-seconds=15",
    ):
        assert flag in args
    assert not [arg for arg in args if arg.startswith("--max-connections")]
    assert pod_spec(ds)["terminationGracePeriodSeconds"] == 15 + 20 + 5


def test_tls_and_token_come_from_secrets_and_probes_speak_https() -> None:
    e = edge(runtime={"tls": {"secretName": "shop-tls"}, "auth": {"tokenSecretName": "shop-token"}})
    ds = daemonset(e)
    server = container(ds, "server")
    assert "--tls-cert-file=/etc/fogline/tls/tls.crt" in server["args"]
    assert "--tls-key-file=/etc/fogline/tls/tls.key" in server["args"]
    assert "--auth-token-file=/etc/fogline/auth/token" in server["args"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert server[probe]["httpGet"]["scheme"] == "HTTPS"
    volumes = {v["name"]: v for v in pod_spec(ds)["volumes"]}
    assert volumes["tls"]["secret"] == {"secretName": "shop-tls"}
    assert volumes["auth"]["secret"] == {
        "secretName": "shop-token",
        "items": [{"key": "token", "path": "token"}],
    }
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["tls"]["readOnly"] and mounts["auth"]["readOnly"]


def test_image_volume_pods_have_no_host_path_even_with_the_node_cache() -> None:
    e = edge(model={"uri": OCI.uri, "digest": OCI.digest, "delivery": "ImageVolume"})
    pod = build_site_daemonset(e, "berlin", OCI, NODE_CACHE)["spec"]["template"]["spec"]
    assert not any("hostPath" in volume for volume in pod["volumes"])
    assert all(c["securityContext"] == RESTRICTED_CONTAINER for c in pod["containers"])


def test_a_file_artifact_is_a_host_folder_whatever_the_cache_mode() -> None:
    model = ModelRef(uri="file:///srv/models/digits", digest=DIGEST_A)
    for settings in (SETTINGS, NODE_CACHE):
        source = volumes(build_site_daemonset(edge(), "berlin", model, settings))["artifact-source"]
        assert source["hostPath"]["path"] == "/srv/models/digits"


# --- signature and encryption -----------------------------------------------------------


def test_required_signer_reaches_only_the_fetch_step_and_the_model_key_both() -> None:
    e = edge(
        model={
            "uri": MODEL.uri,
            "digest": MODEL.digest,
            "signature": {"publicKeyConfigMap": "signer"},
            "encryption": {"keySecret": "model-key", "key": "aes"},
        }
    )
    ds = daemonset(e)
    volumes = {v["name"]: v for v in pod_spec(ds)["volumes"]}
    assert volumes["signer"]["configMap"] == {
        "name": "signer",
        "items": [{"key": "public.pem", "path": "public.pem"}],
        "optional": True,
    }
    assert volumes["model-key"]["secret"]["items"] == [{"key": "aes", "path": "key"}]
    fetch, server = container(ds, "fetch"), container(ds, "server")
    assert "--signature-public-key=/etc/fogline/signer/public.pem" in fetch["args"]
    assert "--model-key-file=/etc/fogline/model-key/key" in fetch["args"]
    assert "--model-key-file=/etc/fogline/model-key/key" in server["args"]
    assert not any(a.startswith("--signature-public-key") for a in server["args"])
    assert {m["name"] for m in server["volumeMounts"]} >= {"model-key"}
    assert "signer" not in {m["name"] for m in server["volumeMounts"]}
    assert all(m["readOnly"] for m in fetch["volumeMounts"] if m["name"] in ("signer", "model-key"))


def test_unprotected_model_keeps_the_template_it_had() -> None:
    ds = daemonset()
    assert {v["name"] for v in pod_spec(ds)["volumes"]}.isdisjoint({"signer", "model-key"})
    assert not any("--model-key-file" in a for a in container(ds, "server")["args"])
