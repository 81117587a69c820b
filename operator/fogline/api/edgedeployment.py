"""The typed view of an EdgeDeployment: frozen spec and status dataclasses parsed once from
the CR with the CRD's own defaults, and checks the CRD cannot make. The wave arithmetic is
the planner's (rollout/policy.py); edge/observe.py hands it spec.rollout."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fogline.api.codec import decode_object, encode, plain
from fogline.api.conditions import Condition
from fogline.api.crds import openapi_schema
from fogline.api.defaults import apply_defaults
from fogline.api.errors import SpecError
from fogline.api.labels import EDGE_ROLE_LABEL, SITE_LABEL, label_key_problem, selector_errors
from fogline.api.protection import ModelEncryption, SignatureRequirement
from fogline.api.scheduling import Quantity, Toleration, quantity_errors
from fogline.api.stores import StoreAccess

KIND = "EdgeDeployment"
PLURAL = "edgedeployments"

DeploymentPhase = Literal[
    "Pending", "Progressing", "Available", "Degraded", "Paused", "RolledBack", "Failed"
]
SiteState = Literal[
    "Pending", "Updating", "Ready", "Failed", "Skipped", "Paused", "Unreachable", "RolledBack"
]
DisconnectedSites = Literal["Skip", "Wait"]
AnalysisSource = Literal["Pods", "Prometheus"]
InconclusivePolicy = Literal["Wait", "Fail"]
AnalysisPhase = Literal["Running", "Passed", "Failed", "Inconclusive"]
FinishedAnalysisPhase = Literal["Passed", "Failed", "Inconclusive"]
Delivery = Literal["Fetch", "ImageVolume"]


# --- spec ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """spec.model: fromTraining, or uri plus digest (exactly one of fromTraining and uri)."""

    from_training: str | None = None
    uri: str | None = None
    digest: str | None = None
    access: StoreAccess | None = None
    delivery: Delivery = "Fetch"
    signature: SignatureRequirement | None = None
    encryption: ModelEncryption | None = None


@dataclass(frozen=True)
class ServerResources:
    """spec.runtime.resources: what each server pod requests."""

    cpu: Quantity | None = None
    memory: Quantity | None = None


@dataclass(frozen=True)
class ServerLimits:
    """spec.runtime.limits: what one server accepts; unset means the server's default."""

    max_body_bytes: int | None = None
    max_connections: int | None = None
    max_body_bytes_in_flight: int | None = None
    max_queue: int | None = None
    request_head_timeout_seconds: int | None = None
    idle_timeout_seconds: int | None = None


@dataclass(frozen=True)
class ServerTls:
    """spec.runtime.tls: serve HTTPS with the certificate of a kubernetes.io/tls Secret."""

    secret_name: str


@dataclass(frozen=True)
class ServerAuth:
    """spec.runtime.auth: a bearer token, from a Secret, for the inference endpoints."""

    token_secret_name: str
    token_key: str = "token"


@dataclass(frozen=True)
class RuntimeSpec:
    """spec.runtime: the inference server on each edge node."""

    image: str | None = None
    port: int = 8080
    threads: int = 1
    resources: ServerResources | None = None
    limits: ServerLimits | None = None
    drain_seconds: int | None = None
    tls: ServerTls | None = None
    auth: ServerAuth | None = None


def _edge_selector() -> dict[str, str]:
    return {EDGE_ROLE_LABEL: "true"}


@dataclass(frozen=True)
class EdgePlacement:
    """spec.placement: which nodes serve and how they group into sites."""

    node_selector: Mapping[str, str] = field(default_factory=_edge_selector)
    site_label: str = SITE_LABEL
    sites: tuple[str, ...] | None = None
    tolerations: tuple[Toleration, ...] = (
        Toleration(key=EDGE_ROLE_LABEL, operator="Exists", effect="NoSchedule"),
    )


@dataclass(frozen=True)
class CustomRatio:
    """spec.rollout.analysis.customRatio: increase of one counter over another's, per site."""

    name: str
    numerator: str
    denominator: str
    max: float


@dataclass(frozen=True)
class AnalysisSpec:
    """spec.rollout.analysis: the metrics each wave is judged on once its pods are Ready."""

    window_seconds: int = 30
    min_requests: int = 20
    max_error_ratio: float | None = None
    max_p99_latency_ms: float | None = None
    max_p99_latency_ratio: float | None = None
    custom_ratio: CustomRatio | None = None
    source: AnalysisSource = "Pods"
    max_pods: int = 5
    inconclusive: InconclusivePolicy = "Wait"

    def counters(self) -> tuple[str, ...]:
        """The counter sample names a source must read besides requests and latency."""
        if self.custom_ratio is None:
            return ()
        return (self.custom_ratio.numerator, self.custom_ratio.denominator)


@dataclass(frozen=True)
class RolloutSpec:
    """spec.rollout: canary, waves, pauses, deadline, rollback, analysis."""

    canary_sites: int = 1
    max_unavailable: int | str = 1
    pause_seconds: int = 0
    progress_deadline_seconds: int = 600
    auto_rollback: bool = True
    paused: bool = False
    paused_sites: tuple[str, ...] | None = None
    disconnected_sites: DisconnectedSites = "Skip"
    replace_in_place: bool = True
    retry: int = 0
    analysis: AnalysisSpec | None = None


@dataclass(frozen=True)
class EdgeDeploymentSpec:
    """spec of an EdgeDeployment, every default applied."""

    model: ModelSource
    model_name: str | None = None
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    placement: EdgePlacement = field(default_factory=EdgePlacement)
    rollout: RolloutSpec = field(default_factory=RolloutSpec)
    revision_history_limit: int = 10

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> EdgeDeploymentSpec:
        """Parse spec with the CRD's defaults applied; SpecError names a wrong field."""
        schema = openapi_schema(KIND)["properties"]["spec"]
        return decode_object(cls, apply_defaults(schema, plain(spec)), "spec")

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = encode(self)
        return result


# --- status -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteCounts:
    """status.counts: totals over the selected sites and nodes."""

    sites: int | None = None
    sites_updated: int | None = None
    sites_ready: int | None = None
    nodes: int | None = None
    nodes_updated: int | None = None
    nodes_ready: int | None = None


@dataclass(frozen=True)
class SiteStatus:
    """One entry of status.sites (a list keyed by name)."""

    name: str
    digest: str | None = None
    state: SiteState | None = None
    desired: int | None = None
    updated: int | None = None
    ready: int | None = None
    reachable: bool | None = None
    message: str | None = None


@dataclass(frozen=True)
class WaveStatus:
    """status.wave: the wave being rolled out."""

    index: int | None = None
    site_count: int | None = None
    sites: tuple[str, ...] | None = None
    started_at: str | None = None


@dataclass(frozen=True)
class AnalysisResultStatus:
    """One entry of status.analysis.results: a threshold and what was measured."""

    metric: str
    value: float | None = None
    threshold: float | None = None
    baseline: float | None = None
    site: str | None = None
    passed: bool | None = None
    message: str | None = None


@dataclass(frozen=True)
class AnalysisFailureStatus:
    """status.analysis.failure: the threshold that failed the wave."""

    site: str | None = None
    metric: str | None = None
    value: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class AnalysisWaveStatus:
    """One entry of status.analysis.waves: a finished analysis."""

    wave: int | None = None
    digest: str | None = None
    phase: FinishedAnalysisPhase | None = None
    finished_at: str | None = None
    requests: int | None = None
    message: str | None = None
    results: tuple[AnalysisResultStatus, ...] | None = None


@dataclass(frozen=True)
class AnalysisStatus:
    """status.analysis: the current or last wave's analysis, and earlier waves' verdicts."""

    wave: int | None = None
    digest: str | None = None
    phase: AnalysisPhase | None = None
    started_at: str | None = None
    requests: int | None = None
    pods: int | None = None
    baseline_pods: int | None = None
    results: tuple[AnalysisResultStatus, ...] | None = None
    failure: AnalysisFailureStatus | None = None
    message: str | None = None
    waves: tuple[AnalysisWaveStatus, ...] | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One entry of status.history: a model that was rolled out."""

    revision: int | None = None
    digest: str | None = None
    uri: str | None = None
    deployed_at: str | None = None


@dataclass(frozen=True)
class EdgeDeploymentStatus:
    """status of an EdgeDeployment. None fields are left out of to_dict(), so a merge patch
    built from it changes only what was set."""

    phase: DeploymentPhase | None = None
    observed_generation: int | None = None
    conditions: tuple[Condition, ...] | None = None
    current_digest: str | None = None
    current_digest_short: str | None = None
    target_digest: str | None = None
    target_uri: str | None = None
    sites_ready: str | None = None
    counts: SiteCounts | None = None
    sites: tuple[SiteStatus, ...] | None = None
    sites_omitted: int | None = None
    wave: WaveStatus | None = None
    failed_site: str | None = None
    message: str | None = None
    analysis: AnalysisStatus | None = None
    history: tuple[HistoryEntry, ...] | None = None
    rollout: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, status: Mapping[str, Any] | None) -> EdgeDeploymentStatus:
        return decode_object(cls, plain(status or {}), "status")

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = encode(self)
        return result


def sites_ready_text(ready: int, total: int) -> str:
    """status.sitesReady as the Sites printer column shows it: ready/total."""
    return f"{ready}/{total}"


# --- the resource -------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeDeployment:
    """An EdgeDeployment as a handler sees it: identity, parsed spec, parsed status."""

    name: str
    namespace: str
    generation: int
    uid: str
    spec: EdgeDeploymentSpec
    status: EdgeDeploymentStatus

    @property
    def served_name(self) -> str:
        """The name clients use in /v2/models/<name>: spec.modelName, else metadata.name."""
        return self.spec.model_name or self.name

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> EdgeDeployment:
        """Parse a whole CR (a kopf body or an API dict); SpecError names a wrong field."""
        metadata: Mapping[str, Any] = body.get("metadata") or {}
        return cls(
            name=str(metadata.get("name", "")),
            namespace=str(metadata.get("namespace", "")),
            generation=int(metadata.get("generation") or 0),
            uid=str(metadata.get("uid", "")),
            spec=EdgeDeploymentSpec.from_dict(body.get("spec") or {}),
            status=EdgeDeploymentStatus.from_dict(body.get("status")),
        )


def parse_edgedeployment(body: Mapping[str, Any]) -> EdgeDeployment:
    """Same as EdgeDeployment.from_body."""
    return EdgeDeployment.from_body(body)


def validate_edgedeployment(spec: EdgeDeploymentSpec) -> list[SpecError]:
    """What the CRD cannot check (or that predates a rule): label syntax and length limits,
    paused sites outside the chosen sites, quantities above zero. Empty means usable."""
    errors: list[SpecError] = []
    problem = label_key_problem(spec.placement.site_label)
    if problem:
        errors.append(
            SpecError(
                "spec.placement.siteLabel",
                f"{problem}; use a label key such as {SITE_LABEL}",
            )
        )
    for key, value in spec.placement.node_selector.items():
        errors += selector_errors("spec.placement.nodeSelector", key, value)
    if spec.placement.sites is not None:
        chosen = set(spec.placement.sites)
        for index, site in enumerate(spec.rollout.paused_sites or ()):
            if site not in chosen:
                errors.append(
                    SpecError(
                        f"spec.rollout.pausedSites[{index}]",
                        f"site {site!r} is not in placement.sites, so pausing it does nothing; "
                        "remove it or add it to placement.sites",
                    )
                )
    resources = spec.runtime.resources or ServerResources()
    for what, amount in (("cpu", resources.cpu), ("memory", resources.memory)):
        errors += quantity_errors(f"spec.runtime.resources.{what}", amount)
    return errors
