"""The typed view of a ModelTraining: frozen spec and status dataclasses parsed once from
the CR with the CRD's own defaults, plus the checks the CRD schema cannot make."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fogline.api.codec import decode_object, encode, plain
from fogline.api.conditions import Condition
from fogline.api.crds import openapi_schema
from fogline.api.defaults import apply_defaults
from fogline.api.errors import SpecError
from fogline.api.labels import selector_errors
from fogline.api.protection import ArtifactSigning, ModelEncryption
from fogline.api.scheduling import Quantity, Toleration, quantity_errors
from fogline.api.stores import StoreAccess

KIND = "ModelTraining"
PLURAL = "modeltrainings"

#: Datasets the trainer bundles, as builtin:<name>.
BUILTIN_DATASETS = ("digits",)
_DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)")

Architecture = Literal["mlp", "cnn"]
DatasetFormat = Literal["auto", "npz", "csv"]
Optimizer = Literal["adam", "adamw", "sgd"]
Backend = Literal["gloo", "nccl"]
ExportFormat = Literal["onnx", "torchscript"]
Quantization = Literal["none", "int8"]
CompressionMethod = Literal[
    "float32", "int8-dynamic", "int8-static", "float16", "weight-sharing", "structured-pruning"
]
EvaluationMetric = Literal["accuracy"]
TrainingPhase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended"]
DatasetScheme = Literal["builtin", "path", "pvc", "http", "s3"]
OutputScheme = Literal["pvc", "s3", "oci", "file"]


# --- spec ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """spec.model: a built-in architecture or a user entrypoint (exactly one)."""

    architecture: Architecture | None = None
    entrypoint: str | None = None
    hidden_units: int = 128


@dataclass(frozen=True)
class DatasetSpec:
    """spec.dataset: where the data comes from (immutable)."""

    uri: str
    format: DatasetFormat = "auto"
    digest: str | None = None
    validation_split: float = 0.2

    @property
    def scheme(self) -> DatasetScheme:
        """Which kind of location uri is."""
        if self.uri.startswith("builtin:"):
            return "builtin"
        if self.uri.startswith("pvc://"):
            return "pvc"
        if self.uri.startswith(("http://", "https://")):
            return "http"
        if self.uri.startswith("s3://"):
            return "s3"
        return "path"

    @property
    def builtin_name(self) -> str | None:
        """digits for builtin:digits; None for other schemes."""
        return self.uri.removeprefix("builtin:") if self.scheme == "builtin" else None


@dataclass(frozen=True)
class HyperparametersSpec:
    """spec.hyperparameters: the training loop settings."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.001
    optimizer: Optimizer = "adam"
    seed: int = 0


@dataclass(frozen=True)
class TrainingResources:
    """spec.resources: compute for each worker."""

    gpus: int = 1
    cpu: Quantity | None = None
    memory: Quantity | None = None


@dataclass(frozen=True)
class TrainingPlacement:
    """spec.placement: extra scheduling constraints for the training pods."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    affinity: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class DistributedSpec:
    """spec.distributed: torchrun data-parallel settings."""

    workers: int = 1
    procs_per_worker: int = 1
    backend: Backend | None = None

    @property
    def world_size(self) -> int:
        """Training processes in all."""
        return self.workers * self.procs_per_worker

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class PruningSpec:
    """spec.export.pruning: magnitude pruning before export."""

    amount: float = 0.0


@dataclass(frozen=True)
class CompressionSpec:
    """spec.export.compression: the candidates built besides float32, and their settings."""

    methods: tuple[CompressionMethod, ...] = ()
    per_channel: bool = False
    calibration_samples: int = 256
    float16_inputs_outputs: bool = False
    sharing_bits: int = 4
    structured_amount: float = 0.5
    fine_tune_epochs: int = 2

    @property
    def enabled(self) -> bool:
        return bool(self.methods)


@dataclass(frozen=True)
class BudgetSpec:
    """spec.export.budget: the edge device's size and latency limits."""

    max_size_bytes: int | None = None
    max_latency_ms: float | None = None
    batch_size: int | None = None
    threads: int = 1


@dataclass(frozen=True)
class ExportSpec:
    """spec.export: formats, opset, quantization, pruning, compression and the budget."""

    formats: tuple[ExportFormat, ...] = ("onnx",)
    opset: int = 17
    quantization: Quantization = "none"
    pruning: PruningSpec = field(default_factory=PruningSpec)
    compression: CompressionSpec = field(default_factory=CompressionSpec)
    budget: BudgetSpec | None = None

    @property
    def quantized(self) -> bool:
        return self.quantization == "int8"


@dataclass(frozen=True)
class TeacherSpec:
    """spec.distillation.teacher: another ModelTraining's artifact, or a uri and digest."""

    from_training: str | None = None
    uri: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class DistillationSpec:
    """spec.distillation: the teacher and how its outputs blend into the student's loss."""

    teacher: TeacherSpec
    temperature: float = 4.0
    weight: float = 0.7


@dataclass(frozen=True)
class EvaluationSpec:
    """spec.evaluation: the gate an artifact must pass to be published."""

    metric: EvaluationMetric = "accuracy"
    threshold: float = 0.0

    def passes(self, value: float) -> bool:
        """True when a measured metric value reaches the threshold."""
        return value >= self.threshold


@dataclass(frozen=True)
class RunPolicySpec:
    """spec.runPolicy: retries, deadlines, clean-up and suspension of the Job."""

    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    suspend: bool = False


@dataclass(frozen=True)
class OutputSpec:
    """spec.output: where the artifact folder is written (pvc://, file://), or published
    (s3://bucket/prefix, oci://registry/repository) with `access` to reach the store."""

    uri: str
    access: StoreAccess | None = None
    signing: ArtifactSigning | None = None
    encryption: ModelEncryption | None = None

    @property
    def scheme(self) -> OutputScheme:
        if self.uri.startswith("pvc://"):
            return "pvc"
        if self.uri.startswith("s3://"):
            return "s3"
        if self.uri.startswith("oci://"):
            return "oci"
        return "file"


@dataclass(frozen=True)
class ModelTrainingSpec:
    """spec of a ModelTraining, every default applied."""

    model: ModelSpec
    dataset: DatasetSpec
    output: OutputSpec
    image: str | None = None
    hyperparameters: HyperparametersSpec = field(default_factory=HyperparametersSpec)
    resources: TrainingResources = field(default_factory=TrainingResources)
    placement: TrainingPlacement = field(default_factory=TrainingPlacement)
    distributed: DistributedSpec = field(default_factory=DistributedSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    distillation: DistillationSpec | None = None
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    run_policy: RunPolicySpec = field(default_factory=RunPolicySpec)
    queue_name: str | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> ModelTrainingSpec:
        """Parse spec with the CRD's defaults applied; SpecError names a wrong field."""
        schema = openapi_schema(KIND)["properties"]["spec"]
        return decode_object(cls, apply_defaults(schema, plain(spec)), "spec")

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = encode(self)
        return result


# --- status -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricValue:
    """A named metric value, such as accuracy 0.97."""

    name: str | None = None
    value: float | None = None


@dataclass(frozen=True)
class TrainingProgress:
    """status.progress: what the trainer last reported, with an ETA."""

    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    metric: MetricValue | None = None
    samples_per_second: float | None = None
    eta: str | None = None
    updated_at: str | None = None


@dataclass(frozen=True)
class ArtifactStatus:
    """status.artifact: the newest artifact that passed the gate."""

    uri: str | None = None
    digest: str | None = None
    format: str | None = None
    size_bytes: int | None = None
    quantized: bool | None = None
    metric: MetricValue | None = None
    generation: int | None = None


@dataclass(frozen=True)
class LastRunStatus:
    """status.lastRun: the last run that finished with an artifact and a metric, passed or
    not, so that the gate can be judged again without the run's Job."""

    job_name: str | None = None
    artifact: ArtifactStatus | None = None


@dataclass(frozen=True)
class CompressionBudgetStatus:
    """status.compression.budget: the limits the candidates were judged against."""

    max_size_bytes: int | None = None
    max_latency_ms: float | None = None
    batch_size: int | None = None
    threads: int | None = None
    min_accuracy: float | None = None


@dataclass(frozen=True)
class CompressionCandidateStatus:
    """One row of status.compression.candidates."""

    method: str | None = None
    file: str | None = None
    size_bytes: int | None = None
    accuracy: float | None = None
    latency_ms: float | None = None
    chosen: bool | None = None
    reason: str | None = None


@dataclass(frozen=True)
class CompressionStatus:
    """status.compression: the candidates of the last successful compressed run."""

    chosen: str | None = None
    budget: CompressionBudgetStatus | None = None
    candidates: tuple[CompressionCandidateStatus, ...] | None = None


@dataclass(frozen=True)
class ModelTrainingStatus:
    """status of a ModelTraining. None fields are left out of to_dict(), so a merge patch
    built from it changes only what was set."""

    phase: TrainingPhase | None = None
    observed_generation: int | None = None
    conditions: tuple[Condition, ...] | None = None
    start_time: str | None = None
    completion_time: str | None = None
    attempts: int | None = None
    job_name: str | None = None
    progress: TrainingProgress | None = None
    metrics: Mapping[str, float] | None = None
    artifact: ArtifactStatus | None = None
    last_run: LastRunStatus | None = None
    artifact_digest_short: str | None = None
    compression: CompressionStatus | None = None

    @classmethod
    def from_dict(cls, status: Mapping[str, Any] | None) -> ModelTrainingStatus:
        return decode_object(cls, plain(status or {}), "status")

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = encode(self)
        return result


# --- the resource -------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelTraining:
    """A ModelTraining as a handler sees it: identity, parsed spec, parsed status."""

    name: str
    namespace: str
    generation: int
    uid: str
    spec: ModelTrainingSpec
    status: ModelTrainingStatus

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ModelTraining:
        """Parse a whole CR (a kopf body or an API dict); SpecError names a wrong field."""
        metadata: Mapping[str, Any] = body.get("metadata") or {}
        return cls(
            name=str(metadata.get("name", "")),
            namespace=str(metadata.get("namespace", "")),
            generation=int(metadata.get("generation") or 0),
            uid=str(metadata.get("uid", "")),
            spec=ModelTrainingSpec.from_dict(body.get("spec") or {}),
            status=ModelTrainingStatus.from_dict(body.get("status")),
        )


def parse_modeltraining(body: Mapping[str, Any]) -> ModelTraining:
    """Same as ModelTraining.from_body."""
    return ModelTraining.from_body(body)


def validate_modeltraining(spec: ModelTrainingSpec) -> list[SpecError]:
    """What the CRD cannot check (or that predates a rule): label syntax, quantities above
    zero, known built-in datasets. An empty list means the spec is usable."""
    errors: list[SpecError] = []
    policy = spec.run_policy
    name = spec.dataset.builtin_name
    if name is not None and name not in BUILTIN_DATASETS:
        known = ", ".join(f"builtin:{known}" for known in BUILTIN_DATASETS)
        errors.append(
            SpecError(
                "spec.dataset.uri",
                f"unknown built-in dataset {spec.dataset.uri!r}; use one of {known}, "
                "or a pvc://, http(s):// or s3:// location",
            )
        )
    if spec.dataset.scheme == "s3":
        errors.append(
            SpecError(
                "spec.dataset.uri",
                "s3:// datasets are reserved in the API but the built-in trainer cannot read "
                "them yet; use a pvc://<claim>/<path> or http(s):// location with a digest",
            )
        )
    if spec.output.scheme == "s3" and (
        spec.output.access is None or not spec.output.access.credentials_secret
    ):
        errors.append(
            SpecError(
                "spec.output.access.credentialsSecret",
                "s3:// outputs need write credentials: name a Secret in this namespace holding "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            )
        )
    for path, uri in (("spec.dataset.uri", spec.dataset.uri), ("spec.output.uri", spec.output.uri)):
        if _DOT_SEGMENT.search(uri):
            errors.append(
                SpecError(path, f"{uri!r} holds a . or .. segment; a path cannot leave its claim")
            )
    if "onnx" not in spec.export.formats:
        errors.append(
            SpecError(
                "spec.export.formats",
                "must include onnx: edge servers load ONNX only; add onnx to formats",
            )
        )
    # The Job's fields: int32 for ttlSecondsAfterFinished, and a deadline the Job
    # controller's time arithmetic cannot overflow.
    for path, seconds, high in (
        ("spec.runPolicy.ttlSecondsAfterFinished", policy.ttl_seconds_after_finished, 2**31 - 1),
        ("spec.runPolicy.activeDeadlineSeconds", policy.active_deadline_seconds, 31536000),
    ):
        if seconds is not None and not 0 <= seconds <= high:
            errors.append(SpecError(path, f"{seconds} is outside 0..{high}"))
    for key, value in spec.placement.node_selector.items():
        errors += selector_errors("spec.placement.nodeSelector", key, value)
    for what, amount in (("cpu", spec.resources.cpu), ("memory", spec.resources.memory)):
        errors += quantity_errors(f"spec.resources.{what}", amount)
    return errors
