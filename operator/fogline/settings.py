"""Operator settings: the defaults a cluster administrator chooses once (images, the GPU
pool, the edge fleet) and every CR may override. Read from the environment, which the Helm
chart and the install manifest set; parsed once at start-up."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fogline import __version__

DEFAULT_GPU_NODE_SELECTOR = {"fogline.io/pool": "gpu"}
DEFAULT_GPU_TOLERATIONS = ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)
DEFAULT_EDGE_NODE_SELECTOR = {"node-role.kubernetes.io/edge": "true"}
DEFAULT_EDGE_TOLERATIONS = (
    {"key": "node-role.kubernetes.io/edge", "operator": "Exists", "effect": "NoSchedule"},
)


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class OperatorSettings:
    trainer_image: str = f"ghcr.io/fogline/trainer:{__version__}"
    server_image: str = f"ghcr.io/fogline/server:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    gpu_node_selector: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_GPU_NODE_SELECTOR)
    )
    gpu_tolerations: tuple[Mapping[str, Any], ...] = DEFAULT_GPU_TOLERATIONS
    edge_node_selector: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_EDGE_NODE_SELECTOR)
    )
    edge_tolerations: tuple[Mapping[str, Any], ...] = DEFAULT_EDGE_TOLERATIONS
    site_label: str = "topology.fogline.io/site"
    # Where the fetch step keeps artifacts by digest (edge autonomy). `Pod`: an emptyDir of
    # the pod, which outlives container restarts and node reboots but not the pod, and
    # passes Pod Security `restricted`. `Node`: the hostPath edge_cache_dir, which also
    # outlives pod replacement but needs a `privileged` namespace.
    edge_cache_mode: str = "Pod"
    # Node-local folder of the `Node` cache mode.
    edge_cache_dir: str = "/var/lib/fogline/cache"
    # Digests the node cache keeps besides the one served (what a rollback may need), and its
    # bound in bytes (0: none); the rest is evicted after each fetch.
    edge_cache_keep: int = 3
    edge_cache_max_bytes: int = 0
    # ServiceAccount the trainer runs as; the operator creates it with a Role that may patch
    # pods, and the chart's admission policy narrows that to the progress annotation of the
    # pod the trainer's token is bound to.
    trainer_service_account: str = "fogline-trainer"
    progress_interval_seconds: int = 5
    # Node folders a file:// artifact of an EdgeDeployment may be read from (a hostPath
    # mount on every edge node): none unless the administrator names them.
    allowed_file_roots: tuple[str, ...] = ()
    # Image prefixes an EdgeDeployment's runtime.image may use; empty: the repository of
    # server_image only.
    allowed_image_prefixes: tuple[str, ...] = ()
    # CIDRs that may reach edge servers' inference port, enforced by a NetworkPolicy the
    # operator keeps per EdgeDeployment; None: no policy (an empty tuple admits nobody).
    edge_ingress_cidrs: tuple[str, ...] | None = None
    # Every EdgeDeployment must name the key its artifacts are signed with
    # (spec.model.signature): the administrator's way to make unsigned models unservable.
    require_model_signature: bool = False
    # The Prometheus query API that `spec.rollout.analysis.source: Prometheus` reads (an
    # http(s) base URL such as https://prometheus.monitoring:9090), and the PEM file of the
    # CAs its certificate is checked against (None: the system's). Only the administrator
    # names it: a URL from a CR would let anyone who may create one make the operator fetch
    # any address. None: the Prometheus source is refused with a condition.
    analysis_prometheus_url: str | None = None
    analysis_prometheus_ca_bundle: str | None = None
    # A file holding the bearer token sent to that API (a mounted Secret or a projected
    # ServiceAccount token), read again at each query so that a rotated token is used.
    analysis_prometheus_bearer_token_file: str | None = None
    # The target labels that name a sampled pod and its namespace in Prometheus (what the
    # scrape config's kubernetes_sd relabeling writes; `pod` and `namespace` usually).
    analysis_prometheus_pod_label: str = "pod"
    analysis_prometheus_namespace_label: str = "namespace"
    # How long one query may take, the operator's wait and Prometheus' own evaluation.
    analysis_prometheus_timeout_seconds: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        defaults = cls()

        def text(name: str, default: str) -> str:
            return env.get(name) or default

        def parsed(name: str, default: Any, kind: type) -> Any:
            raw = env.get(name)
            if not raw:
                return default
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as err:
                raise SettingsError(
                    f"{name}: not valid JSON ({err.msg}); e.g. {json.dumps(default)}"
                ) from err
            if not isinstance(value, kind):
                raise SettingsError(
                    f"{name}: expected a JSON {kind.__name__}, e.g. {json.dumps(default)}"
                )
            return value

        return cls(
            trainer_image=text("FOGLINE_TRAINER_IMAGE", defaults.trainer_image),
            server_image=text("FOGLINE_SERVER_IMAGE", defaults.server_image),
            image_pull_policy=text("FOGLINE_IMAGE_PULL_POLICY", defaults.image_pull_policy),
            gpu_node_selector=parsed(
                "FOGLINE_GPU_NODE_SELECTOR", dict(defaults.gpu_node_selector), dict
            ),
            gpu_tolerations=tuple(
                parsed("FOGLINE_GPU_TOLERATIONS", list(defaults.gpu_tolerations), list)
            ),
            edge_node_selector=parsed(
                "FOGLINE_EDGE_NODE_SELECTOR", dict(defaults.edge_node_selector), dict
            ),
            edge_tolerations=tuple(
                parsed("FOGLINE_EDGE_TOLERATIONS", list(defaults.edge_tolerations), list)
            ),
            site_label=text("FOGLINE_SITE_LABEL", defaults.site_label),
            edge_cache_mode=_cache_mode(text("FOGLINE_EDGE_CACHE_MODE", defaults.edge_cache_mode)),
            edge_cache_dir=text("FOGLINE_EDGE_CACHE_DIR", defaults.edge_cache_dir),
            edge_cache_keep=_count(
                "FOGLINE_EDGE_CACHE_KEEP", text("FOGLINE_EDGE_CACHE_KEEP", "3"), "3"
            ),
            edge_cache_max_bytes=_count(
                "FOGLINE_EDGE_CACHE_MAX_BYTES",
                text("FOGLINE_EDGE_CACHE_MAX_BYTES", "0"),
                "10737418240 (10 GiB), or 0 for no bound",
            ),
            trainer_service_account=text(
                "FOGLINE_TRAINER_SERVICE_ACCOUNT", defaults.trainer_service_account
            ),
            progress_interval_seconds=int(
                text("FOGLINE_PROGRESS_INTERVAL", str(defaults.progress_interval_seconds))
            ),
            allowed_file_roots=_absolute_paths(
                "FOGLINE_ALLOWED_FILE_ROOTS", parsed("FOGLINE_ALLOWED_FILE_ROOTS", [], list)
            ),
            allowed_image_prefixes=_strings(
                "FOGLINE_ALLOWED_IMAGE_PREFIXES",
                parsed("FOGLINE_ALLOWED_IMAGE_PREFIXES", [], list),
            ),
            # Unset or `null`: no policy; a list, even an empty one, makes the policies.
            edge_ingress_cidrs=None
            if env.get("FOGLINE_EDGE_INGRESS_CIDRS", "null").strip() in ("", "null")
            else _cidrs(
                "FOGLINE_EDGE_INGRESS_CIDRS",
                parsed("FOGLINE_EDGE_INGRESS_CIDRS", ["10.20.0.0/16"], list),
            ),
            require_model_signature=_flag(
                "FOGLINE_REQUIRE_MODEL_SIGNATURE", env.get("FOGLINE_REQUIRE_MODEL_SIGNATURE")
            ),
            analysis_prometheus_url=_http_url(
                "FOGLINE_ANALYSIS_PROMETHEUS_URL", env.get("FOGLINE_ANALYSIS_PROMETHEUS_URL")
            ),
            analysis_prometheus_ca_bundle=env.get("FOGLINE_ANALYSIS_PROMETHEUS_CA_BUNDLE") or None,
            analysis_prometheus_bearer_token_file=env.get(
                "FOGLINE_ANALYSIS_PROMETHEUS_BEARER_TOKEN_FILE"
            )
            or None,
            analysis_prometheus_pod_label=_label_name(
                "FOGLINE_ANALYSIS_PROMETHEUS_POD_LABEL",
                text(
                    "FOGLINE_ANALYSIS_PROMETHEUS_POD_LABEL", defaults.analysis_prometheus_pod_label
                ),
            ),
            analysis_prometheus_namespace_label=_label_name(
                "FOGLINE_ANALYSIS_PROMETHEUS_NAMESPACE_LABEL",
                text(
                    "FOGLINE_ANALYSIS_PROMETHEUS_NAMESPACE_LABEL",
                    defaults.analysis_prometheus_namespace_label,
                ),
            ),
            analysis_prometheus_timeout_seconds=_seconds(
                "FOGLINE_ANALYSIS_PROMETHEUS_TIMEOUT_SECONDS",
                text("FOGLINE_ANALYSIS_PROMETHEUS_TIMEOUT_SECONDS", "5"),
            ),
        )


EDGE_CACHE_MODES = ("Pod", "Node")


def _cache_mode(value: str) -> str:
    if value not in EDGE_CACHE_MODES:
        raise SettingsError(
            f"FOGLINE_EDGE_CACHE_MODE: {value!r} is not one of {', '.join(EDGE_CACHE_MODES)} "
            "(Pod: a cache per pod, Pod Security restricted; Node: a hostPath cache per node, "
            "Pod Security privileged)"
        )
    return value


def _cidrs(name: str, values: list[Any]) -> tuple[str, ...]:
    for value in _strings(name, values):
        try:
            ipaddress.ip_network(value)
        except ValueError as err:
            raise SettingsError(
                f"{name}: {value!r} is not a CIDR ({err}); e.g. 10.20.0.0/16 or 192.0.2.7/32"
            ) from None
    return tuple(values)


def _http_url(name: str, raw: str | None) -> str | None:
    if not raw:
        return None
    scheme, _, rest = raw.partition("://")
    if scheme not in ("http", "https") or not rest or rest.startswith("/"):
        raise SettingsError(
            f"{name}: {raw!r} is not an http(s) URL; e.g. https://prometheus.monitoring:9090"
        )
    return raw.rstrip("/")


# Prometheus' label name syntax; a label whose name starts with __ is dropped after relabeling.
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _label_name(name: str, value: str) -> str:
    if not _LABEL_NAME.fullmatch(value) or value.startswith("__"):
        raise SettingsError(
            f"{name}: {value!r} is not a Prometheus target label name (letters, digits and _, "
            "not starting with a digit or __); e.g. pod, or kubernetes_pod_name"
        )
    return value


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name}: expected a number of seconds above 0, not {raw!r}; e.g. 5")
    return value


def _flag(name: str, raw: str | None) -> bool:
    if raw in (None, "", "false"):
        return False
    if raw == "true":
        return True
    raise SettingsError(f"{name}: expected true or false, not {raw!r}")


def _count(name: str, raw: str, example: str) -> int:
    """A whole number >= 0: the edge fetch step refuses anything else at every pod start."""
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise SettingsError(f"{name}: {raw!r} is not a whole number >= 0; e.g. {example}")
    return value


def _strings(name: str, values: list[Any]) -> tuple[str, ...]:
    if not all(isinstance(v, str) and v for v in values):
        raise SettingsError(f"{name}: expected a JSON list of non-empty strings")
    return tuple(values)


def _absolute_paths(name: str, values: list[Any]) -> tuple[str, ...]:
    paths = _strings(name, values)
    for path in paths:
        if not path.startswith("/") or ".." in path.split("/"):
            raise SettingsError(f"{name}: {path!r} is not an absolute path without '..'")
    return paths
