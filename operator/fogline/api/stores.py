"""How a pod reaches an artifact store (spec.output.access of a ModelTraining, spec.model.access
of an EdgeDeployment): the endpoint, region and CA bundle of an S3-compatible store or an OCI
registry, and the Secret whose keys become the pod's credentials. The typed view, and the pod
fragment (env, volumes) that both the trainer's Job and the edge DaemonSets carry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CA_MOUNT = "/etc/fogline/ca"
CA_KEY = "ca.crt"


@dataclass(frozen=True)
class StoreAccess:
    """spec.*.access: all optional; without it a store is reached with the pod's defaults."""

    endpoint: str | None = None
    region: str | None = None
    credentials_secret: str | None = None
    ca_bundle_config_map: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class PodAccess:
    """What a container needs to reach the store: env, envFrom, volumes and mounts."""

    env: list[dict[str, Any]] = field(default_factory=list)
    env_from: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)


def pod_access(access: StoreAccess | None, uri: str) -> PodAccess:
    """The pod fragment for a store URI. The Secret's keys become environment variables
    (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://, FOGLINE_OCI_USERNAME and
    FOGLINE_OCI_PASSWORD for oci://), so a rotated Secret reaches the next pod without a new
    template; the CA bundle is a ConfigMap key `ca.crt` mounted read-only."""
    if access is None or not (uri.startswith("s3://") or uri.startswith("oci://")):
        return PodAccess()
    env: list[dict[str, Any]] = []
    if access.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": access.endpoint})
    if access.region:
        env.append({"name": "AWS_REGION", "value": access.region})
    if access.insecure:
        env.append({"name": "FOGLINE_OCI_PLAIN_HTTP", "value": "1"})
    env_from = (
        [{"secretRef": {"name": access.credentials_secret}}] if access.credentials_secret else []
    )
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if access.ca_bundle_config_map:
        bundle = f"{CA_MOUNT}/{CA_KEY}"
        env += [
            {"name": "AWS_CA_BUNDLE", "value": bundle},
            {"name": "FOGLINE_CA_BUNDLE", "value": bundle},
        ]
        volumes.append(
            {
                "name": "store-ca",
                "configMap": {
                    "name": access.ca_bundle_config_map,
                    "items": [{"key": CA_KEY, "path": CA_KEY}],
                },
            }
        )
        mounts.append({"name": "store-ca", "mountPath": CA_MOUNT, "readOnly": True})
    return PodAccess(env, env_from, volumes, mounts)
