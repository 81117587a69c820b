"""Parsing CRs into the typed models: the CRD's defaults are applied, wrong fields raise a
SpecError naming the path, statuses round-trip, and the extra checks name field and fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fogline.api import (
    EdgeDeployment,
    EdgeDeploymentSpec,
    EdgeDeploymentStatus,
    ModelTraining,
    ModelTrainingSpec,
    ModelTrainingStatus,
    SpecError,
    parse_edgedeployment,
    parse_modeltraining,
    validate_edgedeployment,
    validate_modeltraining,
)
from fogline.api.digests import short_digest
from fogline.api.edgedeployment import ModelSource, sites_ready_text
from fogline.api.modeltraining import DatasetSpec, ModelSpec, OutputSpec
from fogline.api.scheduling import Toleration, quantity_value

pytestmark = pytest.mark.unit

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "manifests" / "samples"
DIGEST = "sha256:" + "0123456789abcdef" * 4
MINIMAL_MT = {
    "model": {"architecture": "mlp"},
    "dataset": {"uri": "builtin:digits"},
    "output": {"uri": "pvc://artifacts/digits"},
}


def test_minimal_modeltraining_gets_the_crd_defaults() -> None:
    parsed = ModelTrainingSpec.from_dict(MINIMAL_MT)
    assert parsed == ModelTrainingSpec(
        model=ModelSpec(architecture="mlp"),
        dataset=DatasetSpec(uri="builtin:digits"),
        output=OutputSpec(uri="pvc://artifacts/digits"),
    )
    assert (parsed.hyperparameters.epochs, parsed.hyperparameters.batch_size) == (10, 64)
    assert parsed.hyperparameters.learning_rate == 0.001
    assert parsed.resources.gpus == 1
    assert parsed.export.formats == ("onnx",) and parsed.export.opset == 17
    assert parsed.export.quantization == "none" and not parsed.export.quantized
    assert parsed.evaluation.threshold == 0.0 and parsed.run_policy.backoff_limit == 3
    assert parsed.dataset.validation_split == 0.2 and parsed.dataset.format == "auto"


def test_minimal_edgedeployment_gets_the_crd_defaults() -> None:
    parsed = EdgeDeploymentSpec.from_dict({"model": {"fromTraining": "digits-mlp"}})
    assert parsed == EdgeDeploymentSpec(model=ModelSource(from_training="digits-mlp"))
    assert parsed.placement.node_selector == {"node-role.kubernetes.io/edge": "true"}
    assert parsed.placement.site_label == "topology.fogline.io/site"
    assert parsed.placement.tolerations == (
        Toleration(key="node-role.kubernetes.io/edge", operator="Exists", effect="NoSchedule"),
    )
    assert parsed.rollout.max_unavailable == 1 and parsed.rollout.canary_sites == 1
    assert parsed.rollout.progress_deadline_seconds == 600
    assert parsed.runtime.port == 8080 and parsed.revision_history_limit == 10


@pytest.mark.parametrize("path", sorted(SAMPLE_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sample_parses_and_passes_the_extra_checks(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    if body["kind"] == "ModelTraining":
        assert validate_modeltraining(parse_modeltraining(body).spec) == []
    else:
        assert validate_edgedeployment(parse_edgedeployment(body).spec) == []


def test_from_body_reads_identity_and_status() -> None:
    body = {
        "metadata": {"name": "digits-edge", "namespace": "ml", "generation": 4, "uid": "u-1"},
        "spec": {"model": {"uri": "/models/digits", "digest": DIGEST}},
        "status": {
            "phase": "Progressing",
            "sites": [{"name": "site-a", "state": "Ready", "reachable": True}],
            "conditions": [
                {
                    "type": "Available",
                    "status": "False",
                    "reason": "Rolling",
                    "message": "",
                    "lastTransitionTime": "2026-11-24T08:00:00Z",
                }
            ],
        },
    }
    parsed = EdgeDeployment.from_body(body)
    assert (parsed.name, parsed.namespace, parsed.generation, parsed.uid) == (
        "digits-edge",
        "ml",
        4,
        "u-1",
    )
    assert parsed.served_name == "digits-edge"
    assert parsed.status.sites is not None and parsed.status.sites[0].state == "Ready"
    assert parsed.status.conditions is not None and parsed.status.conditions[0].type == "Available"
    assert parsed.status.to_dict() == body["status"]


def test_statuses_round_trip_and_leave_out_unset_fields() -> None:
    status = {
        "phase": "Succeeded",
        "observedGeneration": 2,
        "attempts": 1,
        "metrics": {"accuracy": 0.97, "loss": 0.08},
        "progress": {"epoch": 10, "epochs": 10, "metric": {"name": "accuracy", "value": 0.97}},
        "artifact": {"uri": "pvc://a/b", "digest": DIGEST, "sizeBytes": 123, "quantized": True},
        "artifactDigestShort": "0123456789ab",
    }
    assert ModelTrainingStatus.from_dict(status).to_dict() == status
    assert ModelTrainingStatus(phase="Running").to_dict() == {"phase": "Running"}
    assert EdgeDeploymentStatus().to_dict() == {}


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({**MINIMAL_MT, "model": {}}, None, None),  # the CRD's rule; parsing accepts it
        (
            {**MINIMAL_MT, "hyperparameters": {"epochs": "ten"}},
            "spec.hyperparameters.epochs",
            "must be an integer",
        ),
        ({**MINIMAL_MT, "hyperparameters": {"epochs": True}}, "spec.hyperparameters.epochs", ""),
        ({**MINIMAL_MT, "model": {"architecture": "resnet"}}, "spec.model.architecture", "'mlp'"),
        ({**MINIMAL_MT, "export": {"formats": "onnx"}}, "spec.export.formats", "a list"),
        (
            {**MINIMAL_MT, "export": {"formats": ["onnx", "tflite"]}},
            "spec.export.formats[1]",
            "one of",
        ),
        ({**MINIMAL_MT, "output": {}}, "spec.output.uri", "is required"),
        ({k: v for k, v in MINIMAL_MT.items() if k != "dataset"}, "spec.dataset", "is required"),
        ({**MINIMAL_MT, "resources": {"cpu": 1.5}}, "spec.resources.cpu", "an integer or a string"),
    ],
)
def test_wrong_types_raise_a_spec_error_naming_the_field(
    spec: dict[str, Any], field: str | None, words: str | None
) -> None:
    if field is None:
        ModelTrainingSpec.from_dict(spec)
        return
    with pytest.raises(SpecError) as raised:
        ModelTrainingSpec.from_dict(spec)
    assert raised.value.field == field
    assert words is not None and words in raised.value.message
    assert str(raised.value).startswith(f"{field}: ")


def mt(**changes: Any) -> ModelTrainingSpec:
    return ModelTrainingSpec.from_dict({**MINIMAL_MT, **changes})


def ed(**changes: Any) -> EdgeDeploymentSpec:
    return EdgeDeploymentSpec.from_dict({"model": {"fromTraining": "digits-mlp"}, **changes})


@pytest.mark.parametrize(
    ("spec", "field", "fix"),
    [
        (mt(dataset={"uri": "builtin:mnist"}), "spec.dataset.uri", "use one of builtin:digits"),
        (mt(resources={"cpu": "0"}), "spec.resources.cpu", "use a positive amount"),
        (mt(resources={"memory": "4Gb"}), "spec.resources.memory", "write it like"),
        (
            mt(placement={"nodeSelector": {"bad key!": "x"}}),
            "spec.placement.nodeSelector[bad key!]",
            "fix the label key",
        ),
        (
            mt(placement={"nodeSelector": {"pool": "a b"}}),
            "spec.placement.nodeSelector[pool]",
            "fix the label value",
        ),
        (
            ed(placement={"siteLabel": "Topology.Example/site"}),
            "spec.placement.siteLabel",
            "use a label key such as",
        ),
        (
            ed(placement={"siteLabel": "a/" + "x" * 64}),
            "spec.placement.siteLabel",
            "1 to 63 letters",
        ),
        (
            ed(placement={"sites": ["a", "b"]}, rollout={"pausedSites": ["c"]}),
            "spec.rollout.pausedSites[0]",
            "remove it or add it to placement.sites",
        ),
        (ed(runtime={"resources": {"memory": 0}}), "spec.runtime.resources.memory", "positive"),
        (
            mt(output={"uri": "s3://bucket/models"}),
            "spec.output.access.credentialsSecret",
            "name a Secret in this namespace",
        ),
        (mt(output={"uri": "pvc://claim/../../etc"}), "spec.output.uri", "cannot leave its claim"),
        (
            mt(dataset={"uri": "pvc://data/./x/../../y.npz"}),
            "spec.dataset.uri",
            "cannot leave its claim",
        ),
        (mt(export={"formats": ["torchscript"]}), "spec.export.formats", "add onnx"),
        (
            mt(runPolicy={"ttlSecondsAfterFinished": 2**31}),
            "spec.runPolicy.ttlSecondsAfterFinished",
            "outside 0..2147483647",
        ),
        (
            mt(runPolicy={"activeDeadlineSeconds": 2**63 - 1}),
            "spec.runPolicy.activeDeadlineSeconds",
            "outside 0..31536000",
        ),
    ],
)
def test_extra_checks_name_the_field_and_the_fix(spec: Any, field: str, fix: str) -> None:
    if isinstance(spec, ModelTrainingSpec):
        errors = validate_modeltraining(spec)
    else:
        errors = validate_edgedeployment(spec)
    assert [error.field for error in errors] == [field]
    assert fix in errors[0].message


@pytest.mark.parametrize(
    ("quantity", "value"),
    [(2, "2"), ("500m", "0.5"), ("4Gi", str(4 * 2**30)), ("1.5k", "1500"), ("128Mi", "134217728")],
)
def test_quantity_values(quantity: int | str, value: str) -> None:
    assert quantity_value(quantity) == quantity_value(value) == type(quantity_value(2))(value)


def test_small_accessors() -> None:
    assert short_digest(DIGEST) == "0123456789ab"
    assert short_digest(None) is None
    with pytest.raises(ValueError, match="sha256:<64 lowercase hex>"):
        short_digest("sha256:abc")
    assert sites_ready_text(2, 3) == "2/3"
    spec = mt(dataset={"uri": "s3://bucket/d.npz", "digest": DIGEST})
    assert spec.dataset.scheme == "s3" and spec.dataset.builtin_name is None
    assert mt().dataset.builtin_name == "digits" and mt().output.scheme == "pvc"
    assert mt(distributed={"workers": 2, "procsPerWorker": 2}).distributed.world_size == 4
    assert mt(evaluation={"threshold": 0.9}).evaluation.passes(0.9)
    assert ModelTraining.from_body({"spec": MINIMAL_MT}).generation == 0
