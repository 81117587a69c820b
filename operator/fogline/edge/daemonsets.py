"""Builders for what an EdgeDeployment becomes: one DaemonSet per site, whose pods fetch
and verify the artifact into a cache keyed by digest (init step), then serve it with ONNX
Runtime behind the Open Inference Protocol. Typed spec in, plain dicts out.

One DaemonSet a site, not one Deployment: an edge node serves its own shop, plant or tower,
so the unit is one server per node; a per-site object lets each site carry its own model
digest while a wave is under way; OnDelete lets the operator choose which node's pod is
replaced and when (update locks, one serving pod at a time, no surge on small nodes)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from fogline.api.digests import oci_tag
from fogline.api.edgedeployment import EdgeDeployment
from fogline.api.stores import pod_access
from fogline.settings import OperatorSettings

MANAGED_BY = {"app.kubernetes.io/managed-by": "fogline"}
COMPONENT_LABEL = "app.kubernetes.io/component"
EDGE_LABEL = "fogline.io/edgedeployment"
SITE_LABEL = "fogline.io/site"
DIGEST_ANNOTATION = "fogline.io/model-digest"
TEMPLATE_HASH_ANNOTATION = "fogline.io/template-hash"
MODEL_DIR = "/models/current"
CACHE_MOUNT = "/var/lib/fogline/cache"
PVC_ROOT = "/mnt/pvc"
TLS_MOUNT = "/etc/fogline/tls"
AUTH_MOUNT = "/etc/fogline/auth"
SIGNER_MOUNT, SIGNER_KEY_FILE = "/etc/fogline/signer", "public.pem"
MODEL_KEY_MOUNT, MODEL_KEY_FILE = "/etc/fogline/model-key", "key"
# The server's defaults for what follows SIGTERM: a drain period during which it still serves
# while readiness says 503 (endpoints move away), then a deadline for requests under way.
DEFAULT_DRAIN_SECONDS = 5
SERVER_SHUTDOWN_SECONDS = 20
GRACE_MARGIN_SECONDS = 5
# The user and group of Fogline's images (images/*.Dockerfile), named in the pod so that the
# kubelet can prove runAsNonRoot for any server image, even one with a user given by name.
POD_USER = 65532


@dataclass(frozen=True)
class ModelRef:
    """The artifact a site serves: where it is fetched from and the digest it must have."""

    uri: str
    digest: str
    # Digests status.history could roll back to: the node cache keeps them (fetch --keep-digest).
    rollback: tuple[str, ...] = ()


def daemonset_name(edge_name: str, site: str) -> str:
    """A DNS-1123 name for a site's DaemonSet, distinct for every (EdgeDeployment, site):
    `{edge}-{site}` alone is ambiguous (ED `e` on site `s-x` and ED `e-s` on site `x`), and a
    site label value may hold characters a name cannot (`Berlin_1`, which become '-'), so a
    hash of the pair always ends the name."""
    clean = re.sub(r"[^a-z0-9-]+", "-", site.lower()).strip("-") or "site"
    suffix = hashlib.sha256(f"{edge_name}/{site}".encode()).hexdigest()[:8]
    return f"{f'{edge_name}-{clean}'[:54].rstrip('-')}-{suffix}"


def edge_labels(edge: EdgeDeployment, site: str) -> dict[str, str]:
    return {
        **MANAGED_BY,
        COMPONENT_LABEL: "edge-server",
        EDGE_LABEL: edge.name,
        SITE_LABEL: site[:63],
    }


def _source_volume(
    model: ModelRef,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """Volumes that make a pvc:// or file:// artifact readable by the fetch step."""
    if model.uri.startswith("pvc://"):
        claim = model.uri.removeprefix("pvc://").split("/", 1)[0]
        return (
            [
                {
                    "name": "artifact-source",
                    "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
                }
            ],
            [{"name": "artifact-source", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}],
            {"FOGLINE_PVC_ROOT": PVC_ROOT},
        )
    if model.uri.startswith("file://"):
        folder = model.uri.removeprefix("file://")
        return (
            [{"name": "artifact-source", "hostPath": {"path": folder, "type": "Directory"}}],
            [{"name": "artifact-source", "mountPath": folder, "readOnly": True}],
            {},
        )
    return [], [], {}


def pod_security_context() -> dict[str, Any]:
    """Pod Security `restricted` for every pod: non-root, the runtime's seccomp profile, and
    volumes (emptyDir, claims) group-owned by the pod's group."""
    return {
        "runAsNonRoot": True,
        "runAsUser": POD_USER,
        "runAsGroup": POD_USER,
        "fsGroup": POD_USER,
        # A claim already owned by the group is not walked again at every pod start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def cache_volume(settings: OperatorSettings) -> dict[str, Any]:
    """The fetch step's cache keyed by digest, which lets a site restart its server with no
    network (edge autonomy). `Pod`: an emptyDir, kept through container restarts and node
    reboots while the pod stays, gone with the pod (a replaced pod fetches again). `Node`:
    a hostPath, kept across pods too (a rollback to a digest the node held needs no
    network), which Pod Security admits only at `privileged`."""
    if settings.edge_cache_mode == "Node":
        return {
            "name": "cache",
            "hostPath": {"path": settings.edge_cache_dir, "type": "DirectoryOrCreate"},
        }
    return {"name": "cache", "emptyDir": {}}


def image_volume_reference(model: ModelRef) -> str | None:
    """`registry/repository:sha256-<hex>` for an oci:// artifact (the tag the trainer pushes
    it under); None for other locations, which the init step fetches instead."""
    if not model.uri.startswith("oci://"):
        return None
    return f"{model.uri.removeprefix('oci://').rstrip('/')}:{oci_tag(model.digest)}"


def _protection(
    edge: EdgeDeployment,
) -> tuple[list[str], list[str], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """spec.model.signature and spec.model.encryption as (fetch flags, server flags, volumes,
    fetch mounts, server mounts). The public key reaches only the fetch step; the model key
    both, since the fetch step checks it opens the model and the server opens it in memory.
    Both sources are optional: a key missing from them becomes the fetch step's reason
    (SignerKeyMissing, ModelKeyMissing) on the site row instead of a pod stuck mounting."""
    model = edge.spec.model
    fetch_args: list[str] = []
    server_args: list[str] = []
    volumes: list[dict[str, Any]] = []
    fetch_mounts: list[dict[str, Any]] = []
    server_mounts: list[dict[str, Any]] = []
    if (signature := model.signature) is not None:
        fetch_args.append(f"--signature-public-key={SIGNER_MOUNT}/{SIGNER_KEY_FILE}")
        volumes.append(
            {
                "name": "signer",
                "configMap": {
                    "name": signature.public_key_config_map,
                    "items": [{"key": signature.key, "path": SIGNER_KEY_FILE}],
                    "optional": True,
                },
            }
        )
        fetch_mounts.append({"name": "signer", "mountPath": SIGNER_MOUNT, "readOnly": True})
    if (sealing := model.encryption) is not None:
        flag = f"--model-key-file={MODEL_KEY_MOUNT}/{MODEL_KEY_FILE}"
        fetch_args.append(flag)
        server_args.append(flag)
        volumes.append(
            {
                "name": "model-key",
                "secret": {
                    "secretName": sealing.key_secret,
                    "items": [{"key": sealing.key, "path": MODEL_KEY_FILE}],
                    "optional": True,
                },
            }
        )
        mount = {"name": "model-key", "mountPath": MODEL_KEY_MOUNT, "readOnly": True}
        fetch_mounts.append(mount)
        server_mounts.append(dict(mount))
    return fetch_args, server_args, volumes, fetch_mounts, server_mounts


def _cache_pins(edge: EdgeDeployment, model: ModelRef) -> list[str]:
    """The fetch step's flags that pin this EdgeDeployment's digests in the shared node cache:
    other EdgeDeployments' fetches on the node keep them, and its own evicts the rest."""
    return [
        f"--cache-owner={edge.namespace}/{edge.name}",
        *(f"--keep-digest={digest}" for digest in model.rollback),
    ]


def _drain_seconds(edge: EdgeDeployment) -> int:
    drain = edge.spec.runtime.drain_seconds
    return DEFAULT_DRAIN_SECONDS if drain is None else drain


def _server_options(
    edge: EdgeDeployment,
) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """The server's flags for spec.runtime's limits, drain, TLS and token, with the Secret
    volumes they read. Only what the spec sets becomes a flag, so a DaemonSet whose spec sets
    none keeps the template (and hash) it had."""
    runtime = edge.spec.runtime
    args: list[str] = []
    limits = runtime.limits
    if limits is not None:
        for flag, value in (
            ("--max-body-bytes", limits.max_body_bytes),
            ("--max-connections", limits.max_connections),
            ("--max-body-bytes-in-flight", limits.max_body_bytes_in_flight),
            ("--max-queue", limits.max_queue),
            ("--request-head-timeout", limits.request_head_timeout_seconds),
            ("--idle-timeout", limits.idle_timeout_seconds),
        ):
            if value is not None:
                args.append(f"{flag}={value}")
    if runtime.drain_seconds is not None:
        args.append(f"--drain-seconds={runtime.drain_seconds}")
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    if runtime.tls is not None:
        args += [f"--tls-cert-file={TLS_MOUNT}/tls.crt", f"--tls-key-file={TLS_MOUNT}/tls.key"]
        volumes.append({"name": "tls", "secret": {"secretName": runtime.tls.secret_name}})
        mounts.append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
    if runtime.auth is not None:
        args.append(f"--auth-token-file={AUTH_MOUNT}/token")
        volumes.append(
            {
                "name": "auth",
                "secret": {
                    "secretName": runtime.auth.token_secret_name,
                    "items": [{"key": runtime.auth.token_key, "path": "token"}],
                },
            }
        )
        mounts.append({"name": "auth", "mountPath": AUTH_MOUNT, "readOnly": True})
    return args, mounts, volumes


def build_site_daemonset(
    edge: EdgeDeployment, site: str, model: ModelRef, settings: OperatorSettings
) -> dict[str, Any]:
    """The DaemonSet of one site serving `model`. The caller adds the ownerReference."""
    spec = edge.spec
    labels = edge_labels(edge, site)
    port = spec.runtime.port
    source_volumes, source_mounts, source_env = _source_volume(model)
    access = pod_access(spec.model.access, model.uri)
    fetch_checks, server_checks, key_volumes, fetch_key_mounts, server_key_mounts = _protection(
        edge
    )
    security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    fetch = {
        "name": "fetch",
        "image": spec.runtime.image or settings.server_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["fogline", "fetch"],
        "args": [
            f"--uri={model.uri}",
            f"--digest={model.digest}",
            f"--cache-dir={CACHE_MOUNT}",
            f"--dest={MODEL_DIR}",
            f"--cache-keep={settings.edge_cache_keep}",
            f"--cache-max-bytes={settings.edge_cache_max_bytes}",
            *fetch_checks,
            *_cache_pins(edge, model),
        ],
        "env": [{"name": k, "value": v} for k, v in source_env.items()] + access.env,
        "volumeMounts": [
            {"name": "cache", "mountPath": CACHE_MOUNT},
            {"name": "model", "mountPath": "/models"},
            *source_mounts,
            *access.mounts,
            *fetch_key_mounts,
        ],
        # A failed fetch writes its reason (ArtifactUnreachable, AccessDenied, DigestMismatch,
        # SignatureInvalid, ModelKeyInvalid, ...) here; the fleet observer shows it on the site
        # row and the condition.
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "securityContext": security,
    }
    if settings.edge_cache_mode == "Node":
        # The hostPath cache belongs to root on the node: the fetch step writes it as UID 0
        # but with every capability dropped, so it can write only what root owns.
        fetch["securityContext"] = {**security, "runAsNonRoot": False, "runAsUser": 0}
    runtime = spec.runtime
    scheme = {"scheme": "HTTPS"} if runtime.tls is not None else {}
    probe = {
        "httpGet": {"path": "/v2/health/ready", "port": "http", **scheme},
        "periodSeconds": 5,
        "failureThreshold": 3,
    }
    server_args, server_mounts, server_volumes = _server_options(edge)
    server: dict[str, Any] = {
        "name": "server",
        "image": spec.runtime.image or settings.server_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["fogline", "serve"],
        "args": [
            f"--model-dir={MODEL_DIR}",
            f"--name={edge.served_name}",
            f"--port={port}",
            f"--threads={spec.runtime.threads}",
            f"--expected-digest={model.digest}",
            *server_args,
            *server_checks,
        ],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": probe,
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http", **scheme},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http", **scheme},
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "volumeMounts": [
            {"name": "model", "mountPath": "/models", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *server_mounts,
            *server_key_mounts,
        ],
        "securityContext": security,
    }
    resources = spec.runtime.resources
    if resources is not None and (resources.cpu is not None or resources.memory is not None):
        requests = {
            k: str(v)
            for k, v in (("cpu", resources.cpu), ("memory", resources.memory))
            if v is not None
        }
        server["resources"] = {"requests": requests}
        if resources.memory is not None:
            server["resources"]["limits"] = {"memory": str(resources.memory)}
    node_selector = {**spec.placement.node_selector, spec.placement.site_label: site}
    reference = image_volume_reference(model) if spec.model.delivery == "ImageVolume" else None
    pod_spec: dict[str, Any] = {
        "nodeSelector": node_selector,
        "tolerations": [t.to_dict() for t in spec.placement.tolerations],
        "initContainers": [fetch],
        "containers": [server],
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        # SIGTERM comes with the pod's removal from its endpoints; the server drains, then
        # finishes what is under way; the kubelet's SIGKILL must come after both.
        "terminationGracePeriodSeconds": _drain_seconds(edge)
        + SERVER_SHUTDOWN_SECONDS
        + GRACE_MARGIN_SECONDS,
        "volumes": [
            cache_volume(settings),
            {"name": "model", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            *source_volumes,
            *access.volumes,
            *server_volumes,
            *key_volumes,
        ],
    }
    if access.env_from:
        # Only the fetch step sees the (read-only) store credentials; the server never does.
        fetch["envFrom"] = access.env_from
    if reference is not None:
        # The kubelet pulls, caches and mounts the artifact read-only: no init step and no
        # cache of ours, whatever the cache mode, so the pod meets Pod Security `restricted`.
        # The server still checks every file against the manifest and the digest.
        del pod_spec["initContainers"]
        pod_spec["volumes"] = [
            {"name": "model", "image": {"reference": reference, "pullPolicy": "IfNotPresent"}},
            {"name": "tmp", "emptyDir": {}},
        ]
        server["volumeMounts"] = [
            {"name": "model", "mountPath": MODEL_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ]
        if spec.model.access is not None and spec.model.access.credentials_secret:
            # The kubelet pulls the artifact: the Secret is a kubernetes.io/dockerconfigjson one.
            pod_spec["imagePullSecrets"] = [{"name": spec.model.access.credentials_secret}]
    if spec.rollout.replace_in_place:
        strategy: dict[str, Any] = {"type": "OnDelete"}
    else:
        # Nodes with room for two copies: the DaemonSet controller surges one node at a time.
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    template = {
        "metadata": {"labels": labels, "annotations": {DIGEST_ANNOTATION: model.digest}},
        "spec": pod_spec,
    }
    body_spec = {
        "selector": {"matchLabels": {EDGE_LABEL: edge.name, SITE_LABEL: site[:63]}},
        "updateStrategy": strategy,
        "template": template,
    }
    template_hash = hashlib.sha256(json.dumps(body_spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": daemonset_name(edge.name, site),
            "namespace": edge.namespace,
            "labels": labels,
            "annotations": {
                DIGEST_ANNOTATION: model.digest,
                TEMPLATE_HASH_ANNOTATION: template_hash,
            },
        },
        "spec": body_spec,
    }
