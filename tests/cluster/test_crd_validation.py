"""The CRDs against the real apiserver: every sample is accepted as it is, each bad manifest
in the table is rejected with a message naming the field and the rule, defaults match the
Python model, printer columns and `kubectl explain` show what the CRDs document."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from fogline.api.crds import openapi_schema
from fogline.api.defaults import apply_defaults
from fogline.api.edgedeployment import EdgeDeploymentSpec
from fogline.api.modeltraining import ModelTrainingSpec
from tests.conftest import ClusterHandle, wait_for

pytestmark = pytest.mark.cluster

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "manifests" / "samples"
SAMPLES = sorted(SAMPLE_DIR.glob("*.yaml"))
PLURALS = {"ModelTraining": "modeltrainings", "EdgeDeployment": "edgedeployments"}
DIGEST = "sha256:" + "ab" * 32
DELETE = object()  # in a patch: remove this key

MT = "modeltraining-digits-mlp"
MT_DISTRIBUTED = "modeltraining-digits-distributed"
ED = "edgedeployment-digits-edge"
ED_URI = "edgedeployment-pinned-uri"


def sample(stem: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((SAMPLE_DIR / f"{stem}.yaml").read_text())
    return body


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`base` with `patch` merged in: nested dicts merge, DELETE removes, the rest replaces."""
    result = copy.deepcopy(base)
    for key, value in patch.items():
        if value is DELETE:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def create(cluster: ClusterHandle, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    group, version = body["apiVersion"].split("/")
    created: dict[str, Any] = client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        group, version, namespace, PLURALS[body["kind"]], body, field_validation="Strict"
    )
    return created


def replace(cluster: ClusterHandle, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    group, version = body["apiVersion"].split("/")
    replaced: dict[str, Any] = client.CustomObjectsApi(
        cluster.api
    ).replace_namespaced_custom_object(
        group,
        version,
        namespace,
        PLURALS[body["kind"]],
        body["metadata"]["name"],
        body,
        field_validation="Strict",
    )
    return replaced


def rejection(call: Callable[[], object]) -> str:
    """The apiserver's message for a call that must be refused as invalid."""
    with pytest.raises(ApiException) as refused:
        call()
    assert refused.value.status in (400, 422), refused.value.body
    message: str = json.loads(refused.value.body)["message"]
    return message


@dataclass(frozen=True)
class Bad:
    """A manifest made from a sample by a patch, and what the refusal must say."""

    case: str
    sample: str
    patch: dict[str, Any]
    expected: tuple[str, ...]


def spec(**fields: Any) -> dict[str, Any]:
    return {"spec": fields}


BAD_CREATES = [
    # --- ModelTraining: required fields and types
    Bad("mt-missing-output", MT, spec(output=DELETE), ("spec.output: Required value",)),
    Bad("mt-missing-dataset", MT, spec(dataset=DELETE), ("spec.dataset: Required value",)),
    Bad(
        "mt-missing-dataset-uri",
        MT,
        spec(dataset={"uri": DELETE}),
        ("spec.dataset.uri: Required value",),
    ),
    Bad(
        "mt-hidden-units-not-integer",
        MT,
        spec(model={"hiddenUnits": "wide"}),
        ("spec.model.hiddenUnits", "must be of type integer"),
    ),
    Bad(
        "mt-suspend-not-boolean",
        MT,
        spec(runPolicy={"suspend": "yes"}),
        ("spec.runPolicy.suspend", "must be of type boolean"),
    ),
    Bad(
        "mt-unknown-field",
        MT,
        spec(epochs=3),
        ('unknown field "spec.epochs"',),
    ),
    # --- ModelTraining: enums and ranges
    Bad(
        "mt-unknown-architecture",
        MT,
        spec(model={"architecture": "resnet"}),
        ("spec.model.architecture", 'Unsupported value: "resnet"', '"mlp", "cnn"'),
    ),
    Bad(
        "mt-zero-epochs",
        MT,
        spec(hyperparameters={"epochs": 0}),
        ("spec.hyperparameters.epochs", "greater than or equal to 1"),
    ),
    Bad(
        "mt-zero-learning-rate",
        MT,
        spec(hyperparameters={"learningRate": 0}),
        ("spec.hyperparameters.learningRate", "greater than 0"),
    ),
    Bad(
        "mt-validation-split-too-large",
        MT,
        spec(dataset={"validationSplit": 0.9}),
        ("spec.dataset.validationSplit", "less than or equal to 0.5"),
    ),
    Bad(
        "mt-too-many-gpus",
        MT,
        spec(resources={"gpus": 17}),
        ("spec.resources.gpus", "less than or equal to 16"),
    ),
    Bad(
        "mt-opset-out-of-range",
        MT,
        spec(export={"opset": 9}),
        ("spec.export.opset", "greater than or equal to 13"),
    ),
    Bad(
        "mt-cpu-not-a-quantity",
        MT,
        spec(resources={"cpu": "lots"}),
        ("spec.resources.cpu", "should match"),
    ),
    # --- ModelTraining: CEL rules
    Bad(
        "mt-no-model",
        MT,
        spec(model={"architecture": DELETE}),
        ("spec.model", "set exactly one of model.architecture", "model.entrypoint"),
    ),
    Bad(
        "mt-architecture-and-entrypoint",
        MT,
        spec(model={"entrypoint": "mypkg.models:build"}),
        ("spec.model", "set exactly one of model.architecture"),
    ),
    Bad(
        "mt-bad-entrypoint",
        MT,
        spec(model={"architecture": DELETE, "entrypoint": "mypkg/models.py"}),
        ("spec.model.entrypoint", "must look like package.module:function"),
    ),
    Bad(
        "mt-http-dataset-without-digest",
        MT,
        spec(dataset={"uri": "https://data.example.com/digits.npz"}),
        ("spec.dataset.digest", "is required when dataset.uri is http(s):// or s3://"),
    ),
    Bad(
        "mt-short-dataset-digest",
        MT,
        spec(dataset={"uri": "s3://data/digits.npz", "digest": "sha256:abc"}),
        ("spec.dataset.digest", "must be sha256: followed by 64 lowercase hex"),
    ),
    Bad(
        "mt-dataset-ftp",
        MT,
        spec(dataset={"uri": "ftp://data.example.com/digits.npz"}),
        ("spec.dataset.uri", "must be builtin:<name>"),
    ),
    Bad(
        "mt-workers-without-backend",
        MT,
        spec(distributed={"workers": 2}),
        ("spec.distributed.backend", "required when workers > 1"),
    ),
    Bad(
        "mt-nccl-without-gpus",
        MT_DISTRIBUTED,
        spec(resources={"gpus": 0}),
        ("spec.distributed.backend", "nccl", "resources.gpus"),
    ),
    Bad(
        "mt-int8-without-onnx",
        MT,
        spec(export={"formats": ["torchscript"]}),
        ("spec.export.quantization", "export.formats must include onnx"),
    ),
    Bad(
        "mt-duplicate-format",
        MT,
        spec(export={"formats": ["onnx", "onnx"]}),
        ("spec.export.formats[1]", "Duplicate value"),
    ),
    Bad(
        "mt-queue-not-dns-label",
        MT,
        spec(queueName="Team_Queue"),
        ("spec.queueName", "must be a DNS label"),
    ),
    Bad(
        "mt-output-http",
        MT,
        spec(output={"uri": "http://store.example.com/out"}),
        ("spec.output.uri", "must be pvc://<claim>/<path>"),
    ),
    Bad(
        "mt-toleration-exists-with-value",
        MT_DISTRIBUTED,
        spec(placement={"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
        ("spec.placement.tolerations[0]", "operator Exists must not set value"),
    ),
    Bad(
        "mt-name-too-long",
        MT,
        {"metadata": {"name": "m" * 64}},
        ("metadata.name must be at most 63 characters",),
    ),
    # --- ModelTraining: every number the operator copies into a Job has the Job's bounds
    Bad(
        "mt-ttl-beyond-int32",
        MT,
        spec(runPolicy={"ttlSecondsAfterFinished": 2147483648}),
        ("spec.runPolicy.ttlSecondsAfterFinished", "less than or equal to 2147483647"),
    ),
    Bad(
        "mt-deadline-int64-max",
        MT,
        spec(runPolicy={"activeDeadlineSeconds": 9223372036854775807}),
        ("spec.runPolicy.activeDeadlineSeconds", "less than or equal to 31536000"),
    ),
    Bad(
        "mt-negative-ttl",
        MT,
        spec(runPolicy={"ttlSecondsAfterFinished": -1}),
        ("spec.runPolicy.ttlSecondsAfterFinished", "greater than or equal to 0"),
    ),
    Bad(
        "mt-backoff-limit-too-large",
        MT,
        spec(runPolicy={"backoffLimit": 2147483648}),
        ("spec.runPolicy.backoffLimit", "less than or equal to 100"),
    ),
    Bad(
        "mt-toleration-seconds-too-large",
        MT_DISTRIBUTED,
        spec(
            placement={
                "tolerations": [
                    {
                        "key": "k",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 9223372036854775807,
                    }
                ]
            }
        ),
        ("tolerationSeconds", "less than or equal to 31536000"),
    ),
    Bad(
        "mt-cpu-number-too-large",
        MT,
        spec(resources={"cpu": 10**15}),
        ("spec.resources.cpu", "less than or equal to 4096"),
    ),
    Bad(
        "mt-memory-string-too-long",
        MT,
        spec(resources={"memory": "9" * 30}),
        ("spec.resources.memory", "may not be more than 16"),
    ),
    # --- ModelTraining: paths stay inside their claim or folder
    Bad(
        "mt-output-leaves-its-claim",
        MT,
        spec(output={"uri": "pvc://claim/../../etc"}),
        ("spec.output.uri", "must not hold . or .. path segments"),
    ),
    Bad(
        "mt-file-output-leaves-its-folder",
        MT,
        spec(output={"uri": "file:///var/lib/fogline/../../../etc"}),
        ("spec.output.uri", "must not hold . or .. path segments"),
    ),
    Bad(
        "mt-dataset-leaves-its-claim",
        MT,
        spec(dataset={"uri": "pvc://data/../other/x.npz"}),
        ("spec.dataset.uri", "must not hold . or .. path segments"),
    ),
    # --- ModelTraining: only ONNX reaches the edge
    Bad(
        "mt-export-without-onnx",
        MT,
        spec(export={"formats": ["torchscript"]}),
        ("spec.export.formats", "must include onnx"),
    ),
    # --- EdgeDeployment
    Bad(
        "ed-missing-model",
        ED,
        spec(model=DELETE),
        ("spec.model: Required value",),
    ),
    Bad(
        "ed-from-training-and-uri",
        ED,
        spec(model={"uri": "/models/digits", "digest": DIGEST}),
        ("spec.model", "set exactly one of model.fromTraining", "model.uri"),
    ),
    Bad(
        "ed-no-model-source",
        ED,
        spec(model={"fromTraining": DELETE}),
        ("spec.model", "set exactly one of model.fromTraining"),
    ),
    Bad(
        "ed-uri-without-digest",
        ED_URI,
        spec(model={"digest": DELETE}),
        ("spec.model.digest", "is required with model.uri"),
    ),
    Bad(
        "ed-digest-with-from-training",
        ED,
        spec(model={"digest": DIGEST}),
        ("spec.model.digest", "applies only with model.uri"),
    ),
    Bad(
        "ed-uppercase-digest",
        ED_URI,
        spec(model={"digest": DIGEST.upper().replace("SHA256", "sha256")}),
        ("spec.model.digest", "must be sha256: followed by 64 lowercase hex"),
    ),
    Bad(
        "ed-md5-digest",
        ED_URI,
        spec(model={"digest": "md5:0123456789abcdef0123456789abcdef"}),
        ("spec.model.digest", "must be sha256:"),
    ),
    Bad(
        "ed-uri-scheme",
        ED_URI,
        spec(model={"uri": "gs://models/digits"}),
        ("spec.model.uri", "must be an absolute /path"),
    ),
    Bad(
        "ed-oci-by-tag",
        ED_URI,
        spec(model={"uri": "oci://registry.example/models/digits:latest"}),
        ("spec.model.uri", "(no tag)"),
    ),
    Bad(
        "ed-canary-exceeds-wave",
        ED,
        spec(rollout={"canarySites": 3, "maxUnavailable": 2}),
        ("spec.rollout.canarySites", "cannot exceed rollout.maxUnavailable"),
    ),
    Bad(
        "ed-max-unavailable-zero",
        ED,
        spec(rollout={"canarySites": 0, "maxUnavailable": 0}),
        ("spec.rollout.maxUnavailable", "count of at least 1", "never finish a wave"),
    ),
    Bad(
        "ed-max-unavailable-zero-percent",
        ED_URI,
        spec(rollout={"maxUnavailable": "0%"}),
        ("spec.rollout.maxUnavailable", "percentage from 1% to 100%"),
    ),
    Bad(
        "ed-max-unavailable-words",
        ED_URI,
        spec(rollout={"maxUnavailable": "half"}),
        ("spec.rollout.maxUnavailable", "percentage from 1% to 100%"),
    ),
    Bad(
        "ed-privileged-port",
        ED,
        spec(runtime={"port": 80}),
        ("spec.runtime.port", "greater than or equal to 1024"),
    ),
    Bad(
        "ed-threads-not-integer",
        ED,
        spec(runtime={"threads": 1.5}),
        ("spec.runtime.threads", "must be of type integer"),
    ),
    Bad(
        "ed-drain-too-long",
        ED,
        spec(runtime={"drainSeconds": 3600}),
        ("spec.runtime.drainSeconds", "less than or equal to 300"),
    ),
    Bad(
        "ed-tls-without-secret",
        ED,
        spec(runtime={"tls": {}}),
        ("spec.runtime.tls.secretName", "Required value"),
    ),
    Bad(
        "ed-body-limit-too-small",
        ED,
        spec(runtime={"limits": {"maxBodyBytes": 10}}),
        ("spec.runtime.limits.maxBodyBytes", "greater than or equal to 1024"),
    ),
    Bad(
        "ed-body-budget-below-the-body-limit",
        ED,
        spec(runtime={"limits": {"maxBodyBytes": 2097152, "maxBodyBytesInFlight": 1048576}}),
        ("spec.runtime.limits.maxBodyBytesInFlight", "at least maxBodyBytes"),
    ),
    Bad(
        "ed-body-budget-below-the-default-body-limit",
        ED,
        spec(runtime={"limits": {"maxBodyBytesInFlight": 1048576}}),
        ("spec.runtime.limits.maxBodyBytesInFlight", "64 MiB when"),
    ),
    Bad(
        "ed-disconnected-sites-enum",
        ED,
        spec(rollout={"disconnectedSites": "Ignore"}),
        ("spec.rollout.disconnectedSites", 'Unsupported value: "Ignore"', '"Skip", "Wait"'),
    ),
    Bad(
        "ed-short-progress-deadline",
        ED,
        spec(rollout={"progressDeadlineSeconds": 5}),
        ("spec.rollout.progressDeadlineSeconds", "greater than or equal to 10"),
    ),
    Bad(
        "ed-empty-node-selector",
        ED,
        spec(placement={"nodeSelector": {}}),
        ("spec.placement.nodeSelector", "should have at least 1 properties"),
    ),
    Bad(
        "ed-site-name-with-space",
        ED_URI,
        spec(placement={"sites": ["site-a", "site b"]}),
        ("spec.placement.sites[1]", "a site name is a label value"),
    ),
    Bad(
        "ed-duplicate-site",
        ED_URI,
        spec(placement={"sites": ["site-a", "site-a"]}),
        ("spec.placement.sites[1]", "Duplicate value"),
    ),
    Bad(
        "ed-site-label-not-a-key",
        ED,
        spec(placement={"siteLabel": "the site!"}),
        ("spec.placement.siteLabel", "must be a label key"),
    ),
    Bad(
        "ed-model-name-with-slash",
        ED,
        spec(modelName="digits/v2"),
        ("spec.modelName", "part of the URL path"),
    ),
    Bad(
        "ed-from-training-not-a-name",
        ED,
        spec(model={"fromTraining": "Digits_MLP"}),
        ("spec.model.fromTraining", "must be the name of a ModelTraining"),
    ),
    Bad(
        "ed-revision-history-zero",
        ED,
        spec(revisionHistoryLimit=0),
        ("spec.revisionHistoryLimit", "greater than or equal to 1"),
    ),
    Bad(
        "ed-negative-retry",
        ED,
        spec(rollout={"retry": -1}),
        ("spec.rollout.retry", "greater than or equal to 0"),
    ),
    Bad(
        "ed-signature-with-image-volume",
        ED_URI,
        spec(
            model={
                "uri": "oci://registry.example/models/digits",
                "delivery": "ImageVolume",
                "encryption": {"keySecret": "model-key"},
            }
        ),
        ("spec.model.delivery", "checked by the fetch step", "use delivery Fetch"),
    ),
    Bad(
        "ed-signature-without-config-map",
        ED,
        spec(model={"signature": {"key": "public.pem"}}),
        ("spec.model.signature.publicKeyConfigMap", "Required value"),
    ),
    Bad(
        "mt-encryption-key-with-slash",
        MT,
        spec(output={"encryption": {"keySecret": "model-key", "key": "a/b"}}),
        ("spec.output.encryption.key", "should match"),
    ),
]

BAD_UPDATES = [
    Bad(
        "mt-dataset-changed",
        MT,
        spec(dataset={"validationSplit": 0.3}),
        ("spec.dataset", "spec.dataset is immutable once the ModelTraining is created"),
    ),
    Bad(
        "mt-dataset-uri-changed",
        MT,
        spec(dataset={"uri": "pvc://data/digits.npz"}),
        ("spec.dataset", "immutable"),
    ),
    Bad(
        "mt-architecture-changed",
        MT,
        spec(model={"architecture": "cnn"}),
        ("spec.model", "spec.model.architecture and spec.model.entrypoint are immutable"),
    ),
    Bad(
        "mt-architecture-swapped-for-entrypoint",
        MT,
        spec(model={"architecture": DELETE, "entrypoint": "mypkg.models:build"}),
        ("spec.model", "are immutable"),
    ),
    Bad(
        "ed-canary-raised-past-wave",
        ED,
        spec(rollout={"canarySites": 5}),
        ("spec.rollout.canarySites", "cannot exceed rollout.maxUnavailable"),
    ),
]


def test_the_table_has_at_least_25_bad_manifests() -> None:
    assert len(BAD_CREATES) + len(BAD_UPDATES) >= 25
    assert len({bad.case for bad in BAD_CREATES + BAD_UPDATES}) == len(BAD_CREATES + BAD_UPDATES)


@pytest.mark.parametrize("path", SAMPLES, ids=[path.stem for path in SAMPLES])
def test_sample_is_accepted_as_it_is(
    cluster: ClusterHandle, crds: list[str], namespace: str, path: Path
) -> None:
    body = yaml.safe_load(path.read_text())
    created = create(cluster, namespace, body)
    assert created["metadata"]["name"] == body["metadata"]["name"]


def test_all_samples_apply_with_kubectl(
    cluster: ClusterHandle, crds: list[str], namespace: str
) -> None:
    applied = cluster.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", str(SAMPLE_DIR)
    ).stdout
    for path in SAMPLES:
        assert yaml.safe_load(path.read_text())["metadata"]["name"] in applied


@pytest.mark.parametrize(
    "uri", ["s3://models/trainings/digits-cnn/ab12cd34", "oci://registry:5000/models/digits-cnn"]
)
def test_a_teacher_published_to_a_store_is_accepted(
    cluster: ClusterHandle, crds: list[str], namespace: str, uri: str
) -> None:
    patch = spec(distillation={"teacher": {"uri": uri, "digest": DIGEST}})
    body = merged(sample(MT), patch | {"metadata": {"name": f"student-{uri.partition(':')[0]}"}})
    created = create(cluster, namespace, body)
    assert created["spec"]["distillation"]["teacher"]["uri"] == uri


@pytest.fixture(scope="module")
def refusals_namespace(cluster: ClusterHandle) -> Iterator[str]:
    """One namespace for every refused create: a refusal stores nothing, so the cases need
    no namespace each (creating and deleting one costs seconds per case)."""
    name = f"t-refusals-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.mark.parametrize("bad", BAD_CREATES, ids=[bad.case for bad in BAD_CREATES])
def test_bad_manifest_is_rejected_naming_field_and_rule(
    cluster: ClusterHandle, crds: list[str], refusals_namespace: str, bad: Bad
) -> None:
    body = merged(sample(bad.sample), bad.patch)
    message = rejection(lambda: create(cluster, refusals_namespace, body))
    for fragment in bad.expected:
        assert fragment in message, f"{fragment!r} not in: {message}"


@pytest.mark.parametrize("bad", BAD_UPDATES, ids=[bad.case for bad in BAD_UPDATES])
def test_forbidden_update_is_rejected_naming_field_and_rule(
    cluster: ClusterHandle, crds: list[str], namespace: str, bad: Bad
) -> None:
    created = create(cluster, namespace, sample(bad.sample))
    message = rejection(lambda: replace(cluster, namespace, merged(created, bad.patch)))
    for fragment in bad.expected:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_allowed_update_of_hyperparameters_is_accepted(
    cluster: ClusterHandle, crds: list[str], namespace: str
) -> None:
    created = create(cluster, namespace, sample(MT))
    updated = replace(cluster, namespace, merged(created, spec(hyperparameters={"epochs": 5})))
    assert updated["spec"]["hyperparameters"]["epochs"] == 5
    assert updated["metadata"]["generation"] == 2


def test_status_is_a_subresource_with_a_checked_schema(
    cluster: ClusterHandle, crds: list[str], namespace: str
) -> None:
    created = create(cluster, namespace, sample(MT))
    api = client.CustomObjectsApi(cluster.api)
    bad = merged(created, {"status": {"phase": "Exploded"}})
    message = rejection(
        lambda: api.replace_namespaced_custom_object_status(
            "fogline.io", "v1alpha1", namespace, "modeltrainings", "digits-mlp", bad
        )
    )
    assert "status.phase" in message
    assert 'Unsupported value: "Exploded"' in message
    # A status written through the main resource is ignored, as with built-in kinds.
    sneaky = merged(created, {"status": {"phase": "Succeeded"}})
    assert "status" not in replace(cluster, namespace, sneaky)


@pytest.mark.parametrize(
    ("stem", "spec_type"),
    [(MT, ModelTrainingSpec), (ED, EdgeDeploymentSpec)],
)
def test_apiserver_defaults_equal_the_python_defaults(
    cluster: ClusterHandle, crds: list[str], namespace: str, stem: str, spec_type: Any
) -> None:
    minimal = sample(stem)
    minimal["spec"] = {"model": minimal["spec"]["model"]}
    if stem == MT:
        minimal["spec"] |= {"dataset": {"uri": "builtin:digits"}, "output": {"uri": "pvc://a/b"}}
    stored = create(cluster, namespace, minimal)["spec"]
    schema = openapi_schema(minimal["kind"])["properties"]["spec"]
    assert stored == apply_defaults(schema, minimal["spec"])
    assert spec_type.from_dict(stored) == spec_type.from_dict(minimal["spec"])


def test_printer_columns_show_phase_metric_and_short_digest(
    cluster: ClusterHandle, crds: list[str], namespace: str
) -> None:
    created = create(cluster, namespace, sample(MT))
    digest = "sha256:" + "0123456789abcdef" * 4
    status = {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "artifact": {
            "uri": "pvc://fogline-artifacts/digits-mlp",
            "digest": digest,
            "metric": {"name": "accuracy", "value": 0.965},
        },
        "artifactDigestShort": "0123456789ab",
    }
    client.CustomObjectsApi(cluster.api).replace_namespaced_custom_object_status(
        "fogline.io",
        "v1alpha1",
        namespace,
        "modeltrainings",
        "digits-mlp",
        merged(created, {"status": status}),
    )
    table = cluster.kubectl("get", "mt", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "METRIC", "DIGEST", "AGE"]
    assert table[1].split()[:4] == ["digits-mlp", "Succeeded", "0.965", "0123456789ab"]


def test_category_fogline_lists_both_kinds(
    cluster: ClusterHandle, crds: list[str], namespace: str
) -> None:
    create(cluster, namespace, sample(MT))
    create(cluster, namespace, sample(ED))
    listed = cluster.kubectl("get", "fogline", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(listed) == [
        "edgedeployment.fogline.io/digits-edge",
        "modeltraining.fogline.io/digits-mlp",
    ]
    table = cluster.kubectl("get", "ed", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "MODEL", "SITES", "PHASE", "AGE"]


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("modeltraining.spec.export", ("How the trained model is exported", "quantization")),
        ("modeltraining.spec.export.quantization", ("dynamic INT8",)),
        ("modeltraining.spec.distributed.backend", ("gloo works on CPU",)),
        ("mt.status.artifact.digest", ("sha256 of the served ONNX file",)),
        ("edgedeployment.spec.rollout.maxUnavailable", ("of the eligible sites",)),
        ("ed.spec.placement.tolerations.effect", ("Taint effect to match",)),
        ("mt.spec.output.signing", ("OpenSSF model-signing", "not part of the digest")),
        ("mt.spec.output.encryption.keySecret", ("exactly 32 random bytes",)),
        ("ed.spec.model.signature", ("Init:SignatureMissing", "Init:SignatureInvalid")),
        ("ed.spec.model.encryption", ("Init:ModelKeyInvalid", "only ciphertext")),
    ],
)
def test_kubectl_explain_shows_field_descriptions(
    cluster: ClusterHandle, crds: list[str], resource: str, expected: tuple[str, ...]
) -> None:
    def explained() -> str | None:
        done = cluster.kubectl("explain", resource, check=False)
        return done.stdout if done.returncode == 0 else None

    text = " ".join(wait_for(explained, timeout=30, what=f"kubectl explain {resource}").split())
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in: {text}"


# --- spec.export.compression and spec.export.budget ----------------------------------------

MT_EDGE = "modeltraining-digits-cnn-edge"

BAD_COMPRESSION = [
    Bad(
        "mt-latency-budget-without-batch-size",
        MT_EDGE,
        spec(export={"budget": {"batchSize": DELETE}}),
        ("spec.export.budget.batchSize", "maxLatencyMs needs batchSize"),
    ),
    Bad(
        "mt-budget-without-candidates",
        MT_EDGE,
        spec(export={"compression": {"methods": []}}),
        ("spec.export.budget", "chooses among compression candidates"),
    ),
    Bad(
        "mt-quantization-beside-compression",
        MT_EDGE,
        spec(export={"quantization": "int8"}),
        ("spec.export.quantization", "list int8-dynamic there instead"),
    ),
    Bad(
        "mt-compression-without-onnx",
        MT_EDGE,
        spec(export={"formats": ["torchscript"]}),
        ("spec.export.formats", "must include onnx"),
    ),
    Bad(
        "mt-structured-pruning-of-an-entrypoint",
        MT_EDGE,
        spec(model={"architecture": DELETE, "entrypoint": "mypkg.models:build"}),
        ("spec.export.compression.methods", "built-in mlp and cnn models only"),
    ),
    Bad(
        "mt-unknown-compression-method",
        MT_EDGE,
        spec(export={"compression": {"methods": ["int4"]}}),
        ("spec.export.compression.methods[0]", 'Unsupported value: "int4"'),
    ),
    Bad(
        "mt-sharing-bits-out-of-range",
        MT_EDGE,
        spec(export={"compression": {"sharingBits": 9}}),
        ("spec.export.compression.sharingBits", "less than or equal to 8"),
    ),
    Bad(
        "mt-teacher-training-and-uri",
        MT,
        spec(
            distillation={"teacher": {"fromTraining": "big", "uri": "pvc://m/t", "digest": DIGEST}}
        ),
        ("spec.distillation.teacher", "exactly one of fromTraining"),
    ),
    Bad(
        "mt-teacher-uri-without-digest",
        MT,
        spec(distillation={"teacher": {"uri": "pvc://models/teacher"}}),
        ("spec.distillation.teacher.digest", "needs digest"),
    ),
    Bad(
        "mt-teacher-over-http",
        MT,
        spec(distillation={"teacher": {"uri": "https://x/t", "digest": DIGEST}}),
        ("spec.distillation.teacher.uri", "must be pvc://<claim>/<path>,"),
    ),
    Bad(
        "mt-teacher-oci-tag",
        MT,
        spec(distillation={"teacher": {"uri": "oci://registry:5000/m/t:v1", "digest": DIGEST}}),
        ("spec.distillation.teacher.uri", "no tag: the digest names the artifact"),
    ),
    Bad(
        "mt-distillation-weight-above-one",
        MT,
        spec(distillation={"teacher": {"fromTraining": "big"}, "weight": 2}),
        ("spec.distillation.weight", "less than or equal to 1"),
    ),
    Bad(
        "mt-zero-size-budget",
        MT_EDGE,
        spec(export={"budget": {"maxSizeBytes": 0}}),
        ("spec.export.budget.maxSizeBytes", "greater than or equal to 1"),
    ),
]


@pytest.mark.parametrize("bad", BAD_COMPRESSION, ids=[bad.case for bad in BAD_COMPRESSION])
def test_bad_compression_or_budget_is_rejected_with_a_message(
    cluster: ClusterHandle, crds: list[str], namespace: str, bad: Bad
) -> None:
    body = merged(sample(bad.sample), bad.patch)
    message = rejection(lambda: create(cluster, namespace, body))
    for fragment in bad.expected:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_compression_status_table_is_accepted_by_the_status_schema(
    cluster: ClusterHandle, crds: list[str], namespace: str
) -> None:
    created = create(cluster, namespace, sample(MT_EDGE))
    table = {
        "chosen": "int8-static",
        "budget": {"batchSize": 1, "threads": 1, "maxSizeBytes": 100000, "minAccuracy": 0.9},
        "candidates": [
            {
                "method": "float32",
                "file": "model.onnx",
                "sizeBytes": 290166,
                "accuracy": 0.97,
                "latencyMs": 0.02,
                "chosen": False,
                "reason": "size exceeds maxSizeBytes",
            },
            {
                "method": "int8-static",
                "file": "model.int8-static.onnx",
                "sizeBytes": 80047,
                "accuracy": 0.97,
                "latencyMs": 0.019,
                "chosen": True,
                "reason": "chosen",
            },
        ],
    }
    api = client.CustomObjectsApi(cluster.api)
    stored = api.replace_namespaced_custom_object_status(
        "fogline.io",
        "v1alpha1",
        namespace,
        "modeltrainings",
        "digits-cnn-edge",
        merged(created, {"status": {"phase": "Succeeded", "compression": table}}),
    )
    assert stored["status"]["compression"] == table


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("modeltraining.spec.export.budget", ("BudgetNotMet", "naming the closest candidate")),
        ("modeltraining.spec.export.compression.methods", ("QLinearConv", "codebook")),
        ("mt.status.compression.candidates.reason", ("what it missed",)),
        ("modeltraining.spec.distillation", ("Knowledge distillation", "temperature^2")),
    ],
)
def test_kubectl_explain_shows_the_compression_fields(
    cluster: ClusterHandle, crds: list[str], resource: str, expected: tuple[str, ...]
) -> None:
    def explained() -> str | None:
        done = cluster.kubectl("explain", resource, check=False)
        return done.stdout if done.returncode == 0 else None

    text = " ".join(wait_for(explained, timeout=30, what=f"kubectl explain {resource}").split())
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in: {text}"


# --- EdgeDeployment: spec.rollout.analysis -----------------------------------------------
BAD_ANALYSIS = [
    Bad(
        "ed-analysis-without-threshold",
        ED,
        spec(rollout={"analysis": {"windowSeconds": 30, "minRequests": 50}}),
        ("spec.rollout.analysis", "needs at least one threshold", "maxErrorRatio"),
    ),
    Bad(
        "ed-analysis-window-past-deadline",
        ED,
        spec(
            rollout={
                "progressDeadlineSeconds": 60,
                "analysis": {"windowSeconds": 60, "maxErrorRatio": 0.01},
            }
        ),
        ("spec.rollout.analysis.windowSeconds", "shorter than", "progressDeadlineSeconds"),
    ),
    Bad(
        "ed-analysis-error-ratio-over-one",
        ED,
        spec(rollout={"analysis": {"maxErrorRatio": 1.5}}),
        ("spec.rollout.analysis.maxErrorRatio", "less than or equal to 1"),
    ),
    Bad(
        "ed-analysis-latency-ratio-under-one",
        ED,
        spec(rollout={"analysis": {"maxP99LatencyRatio": 0.5}}),
        ("spec.rollout.analysis.maxP99LatencyRatio", "greater than or equal to 1"),
    ),
    Bad(
        "ed-analysis-zero-latency",
        ED,
        spec(rollout={"analysis": {"maxP99LatencyMs": 0}}),
        ("spec.rollout.analysis.maxP99LatencyMs", "greater than 0"),
    ),
    Bad(
        "ed-analysis-source-is-a-url",
        ED,
        spec(rollout={"analysis": {"maxErrorRatio": 0.01, "source": "http://10.0.0.1:9090"}}),
        ("spec.rollout.analysis.source", "Unsupported value", '"Pods", "Prometheus"'),
    ),
    Bad(
        "ed-analysis-custom-ratio-is-a-query",
        ED,
        spec(
            rollout={
                "analysis": {
                    "customRatio": {
                        "name": "rejected",
                        "numerator": "rate(fogline_inference_queue_rejected_total[1m])",
                        "denominator": "fogline_http_requests_total",
                        "max": 0.1,
                    }
                }
            }
        ),
        ("spec.rollout.analysis.customRatio.numerator", "should match"),
    ),
    Bad(
        "ed-analysis-too-many-pods",
        ED,
        spec(rollout={"analysis": {"maxErrorRatio": 0.01, "maxPods": 500}}),
        ("spec.rollout.analysis.maxPods", "less than or equal to 50"),
    ),
    Bad(
        "ed-analysis-inconclusive-policy",
        ED,
        spec(rollout={"analysis": {"maxErrorRatio": 0.01, "inconclusive": "Pass"}}),
        ("spec.rollout.analysis.inconclusive", 'Unsupported value: "Pass"'),
    ),
]


@pytest.mark.parametrize("bad", BAD_ANALYSIS, ids=[bad.case for bad in BAD_ANALYSIS])
def test_bad_analysis_is_rejected_with_a_message(
    cluster: ClusterHandle, crds: list[str], refusals_namespace: str, bad: Bad
) -> None:
    body = merged(sample(bad.sample), bad.patch)
    message = rejection(lambda: create(cluster, refusals_namespace, body))
    for fragment in bad.expected:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_an_analysis_with_one_threshold_is_defaulted_like_the_python_model(
    cluster: ClusterHandle, crds: list[str], namespace: str
) -> None:
    body = merged(sample(ED), spec(rollout={"analysis": {"maxP99LatencyRatio": 1.2}}))
    stored = create(cluster, namespace, body)["spec"]
    assert stored["rollout"]["analysis"] == {
        "maxP99LatencyRatio": 1.2,
        "windowSeconds": 30,
        "minRequests": 20,
        "source": "Pods",
        "maxPods": 5,
        "inconclusive": "Wait",
    }
    parsed = EdgeDeploymentSpec.from_dict(stored).rollout.analysis
    assert parsed is not None and parsed.window_seconds == 30 and parsed.max_pods == 5


def test_analysis_status_is_accepted_by_the_status_schema(
    cluster: ClusterHandle, crds: list[str], namespace: str
) -> None:
    created = create(cluster, namespace, sample(ED))
    result = {
        "metric": "p99LatencyRatio",
        "value": 3.4,
        "threshold": 1.2,
        "baseline": 1.0,
        "site": "shop-a",
        "passed": False,
    }
    analysis = {
        "wave": 0,
        "digest": DIGEST,
        "phase": "Failed",
        "startedAt": "2026-12-01T10:00:00Z",
        "requests": 240,
        "pods": 1,
        "baselinePods": 2,
        "results": [result],
        "failure": {"site": "shop-a", "metric": "p99LatencyRatio", "value": 3.4, "threshold": 1.2},
        "message": "site shop-a: p99LatencyRatio 3.4 > 1.2",
        "waves": [
            {
                "wave": 0,
                "digest": DIGEST,
                "phase": "Failed",
                "finishedAt": "2026-12-01T10:00:31Z",
                "requests": 240,
                "message": "site shop-a: p99LatencyRatio 3.4 > 1.2",
                "results": [result],
            }
        ],
    }
    api = client.CustomObjectsApi(cluster.api)
    stored = api.replace_namespaced_custom_object_status(
        "fogline.io",
        "v1alpha1",
        namespace,
        "edgedeployments",
        created["metadata"]["name"],
        merged(created, {"status": {"phase": "RolledBack", "analysis": analysis}}),
    )
    assert stored["status"]["analysis"] == analysis
