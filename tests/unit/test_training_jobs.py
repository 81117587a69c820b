"""The Job builder and run planner: a spec hash names the run, outputs map to folders and
URIs, and the Job carries the GPU pool, the run policy and the distributed launch only when
the spec asks for them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fogline.api.modeltraining import ModelTraining
from fogline.settings import OperatorSettings
from fogline.training.jobs import (
    KUEUE_QUEUE_LABEL,
    PVC_ROOT,
    RENDEZVOUS_PORT,
    build_rendezvous_service,
    build_trainer_rbac,
    build_training_job,
    plan_run,
    run_fingerprint,
    trainer_args,
)
from fogline.workloads.trainer import errors as trainer_errors

pytestmark = pytest.mark.unit

SETTINGS = OperatorSettings()
DIGEST = "sha256:" + "d" * 64


def spec_dict(**overrides: Any) -> dict[str, Any]:
    """A minimal ModelTraining spec; each override replaces one top-level field."""
    spec: dict[str, Any] = {
        "model": {"architecture": "mlp"},
        "dataset": {"uri": "builtin:digits"},
        "output": {"uri": "pvc://models/runs"},
    }
    return {**spec, **overrides}


def training(name: str = "digits", namespace: str = "ml", **overrides: Any) -> ModelTraining:
    return ModelTraining.from_body(
        {
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": spec_dict(**overrides),
        }
    )


def job_for(t: ModelTraining, settings: OperatorSettings = SETTINGS) -> dict[str, Any]:
    return build_training_job(t, plan_run(t), settings)


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = job["spec"]["template"]["spec"]
    return result


def trainer(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(job)["containers"]
    result: dict[str, Any] = container
    return result


# --- run_fingerprint ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"runPolicy": {"suspend": True}}, id="suspend"),
        pytest.param({"evaluation": {"threshold": 0.9}}, id="evaluation-threshold"),
        pytest.param({"runPolicy": {"suspend": True}, "evaluation": {"threshold": 0.5}}, id="both"),
    ],
)
def test_pausing_or_moving_the_gate_keeps_the_run(overrides: dict[str, Any]) -> None:
    assert run_fingerprint(training(**overrides).spec) == run_fingerprint(training().spec)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"model": {"architecture": "cnn"}}, id="architecture"),
        pytest.param({"model": {"architecture": "mlp", "hiddenUnits": 64}}, id="hidden-units"),
        pytest.param({"dataset": {"uri": "pvc://data/set.npz"}}, id="dataset"),
        pytest.param({"output": {"uri": "pvc://models/other"}}, id="output"),
        pytest.param({"hyperparameters": {"epochs": 3}}, id="epochs"),
        pytest.param({"hyperparameters": {"seed": 7}}, id="seed"),
        pytest.param({"resources": {"gpus": 2}}, id="gpus"),
        pytest.param({"distributed": {"workers": 2}}, id="workers"),
        pytest.param({"export": {"quantization": "int8"}}, id="quantization"),
        pytest.param({"runPolicy": {"backoffLimit": 0}}, id="backoff-limit"),
        pytest.param({"image": "example.com/trainer:2"}, id="image"),
    ],
)
def test_a_training_relevant_change_starts_a_new_run(overrides: dict[str, Any]) -> None:
    assert run_fingerprint(training(**overrides).spec) != run_fingerprint(training().spec)


def test_fingerprint_is_eight_hex_characters_and_stable() -> None:
    fingerprint = run_fingerprint(training().spec)
    assert len(fingerprint) == 8
    int(fingerprint, 16)
    assert run_fingerprint(training().spec) == fingerprint


# --- plan_run -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "want_dir", "want_uri"),
    [
        pytest.param(
            "pvc://models/runs",
            f"{PVC_ROOT}/models/runs/digits/{{run}}",
            "pvc://models/runs/digits/{run}",
            id="pvc-with-path",
        ),
        pytest.param(
            "pvc://models/runs/",
            f"{PVC_ROOT}/models/runs/digits/{{run}}",
            "pvc://models/runs/digits/{run}",
            id="pvc-trailing-slash",
        ),
        pytest.param(
            "pvc://models",
            f"{PVC_ROOT}/models/digits/{{run}}",
            "pvc://models/digits/{run}",
            id="pvc-claim-root",
        ),
        pytest.param(
            "file:///data/out",
            "/data/out/digits/{run}",
            "file:///data/out/digits/{run}",
            id="file",
        ),
        pytest.param(
            "file:///data/out/",
            "/data/out/digits/{run}",
            "file:///data/out/digits/{run}",
            id="file-trailing-slash",
        ),
    ],
)
def test_output_uri_becomes_run_folder_and_artifact_uri(
    output: str, want_dir: str, want_uri: str
) -> None:
    t = training(output={"uri": output})
    run = plan_run(t)
    assert run.output_dir == want_dir.format(run=run.run_id)
    assert run.artifact_uri == want_uri.format(run=run.run_id)


@pytest.mark.parametrize(
    ("output", "want_uri"),
    [
        ("s3://bucket/models", "s3://bucket/models/digits/{run}"),
        ("oci://registry.example/models/digits", "oci://registry.example/models/digits"),
    ],
)
def test_published_outputs_package_in_scratch_and_report_the_store_uri(
    output: str, want_uri: str
) -> None:
    t = training(output={"uri": output, "access": {"credentialsSecret": "writer"}})
    run = plan_run(t)
    assert run.artifact_uri == want_uri.format(run=run.run_id)
    assert run.output_dir == f"/var/lib/fogline/artifact/digits/{run.run_id}"
    job = job_for(t)
    assert {"name": "staging", "emptyDir": {}} in pod_spec(job)["volumes"]
    assert trainer(job)["envFrom"] == [{"secretRef": {"name": "writer"}}]


def test_s3_access_settings_reach_the_trainer_as_environment() -> None:
    access = {
        "endpoint": "https://store.example:9000",
        "region": "eu-west-1",
        "credentialsSecret": "writer",
        "caBundleConfigMap": "private-ca",
    }
    job = job_for(training(output={"uri": "s3://bucket/models", "access": access}))
    env = {e["name"]: e.get("value") for e in trainer(job)["env"]}
    assert env["AWS_ENDPOINT_URL"] == "https://store.example:9000"
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["AWS_CA_BUNDLE"] == "/etc/fogline/ca/ca.crt"
    assert {"name": "store-ca", "mountPath": "/etc/fogline/ca", "readOnly": True} in trainer(job)[
        "volumeMounts"
    ]


def test_pvc_output_carries_no_store_credentials() -> None:
    job = job_for(
        training(output={"uri": "pvc://models/runs", "access": {"credentialsSecret": "x"}})
    )
    assert "envFrom" not in trainer(job)


@pytest.mark.parametrize("length", [1, 40, 41, 63, 253])
def test_job_name_leaves_room_for_the_pod_suffix(length: int) -> None:
    name = "m" * length
    run = plan_run(training(name=name))
    assert len(run.job_name) <= 50
    assert run.job_name.endswith(f"-{run.run_id}")
    assert run.service_name == run.job_name


# --- build_training_job: placement and resources --------------------------------------------


def test_gpu_run_gets_the_gpu_limit_and_the_pool_scheduling() -> None:
    job = job_for(training(resources={"gpus": 2, "cpu": "2", "memory": "4Gi"}))
    assert trainer(job)["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "4Gi", "nvidia.com/gpu": "2"},
    }
    assert pod_spec(job)["nodeSelector"] == dict(SETTINGS.gpu_node_selector)
    assert pod_spec(job)["tolerations"] == [dict(t) for t in SETTINGS.gpu_tolerations]


def test_cpu_run_stays_off_the_gpu_pool() -> None:
    job = job_for(training(resources={"gpus": 0}))
    assert "resources" not in trainer(job)
    assert "nodeSelector" not in pod_spec(job)
    assert "tolerations" not in pod_spec(job)


def test_placement_of_the_cr_is_merged_over_the_pool() -> None:
    settings = OperatorSettings(gpu_node_selector={"fogline.io/pool": "gpu", "zone": "a"})
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    t = training(
        resources={"gpus": 1},
        placement={
            "nodeSelector": {"zone": "b", "gpu": "a100"},
            "tolerations": [toleration],
            "affinity": affinity,
        },
    )
    spec = pod_spec(job_for(t, settings))
    assert spec["nodeSelector"] == {"fogline.io/pool": "gpu", "zone": "b", "gpu": "a100"}
    assert spec["tolerations"] == [*(dict(x) for x in settings.gpu_tolerations), toleration]
    assert spec["affinity"] == affinity


def test_cpu_run_keeps_only_the_placement_of_the_cr() -> None:
    t = training(resources={"gpus": 0}, placement={"nodeSelector": {"zone": "b"}})
    spec = pod_spec(job_for(t))
    assert spec["nodeSelector"] == {"zone": "b"}
    assert "tolerations" not in spec


def test_image_of_the_cr_overrides_the_operator_default() -> None:
    assert trainer(job_for(training()))["image"] == SETTINGS.trainer_image
    custom = job_for(training(image="example.com/trainer:2"))
    assert trainer(custom)["image"] == "example.com/trainer:2"


# --- build_training_job: run policy ---------------------------------------------------------


def test_run_policy_fields_reach_the_job() -> None:
    t = training(
        runPolicy={"backoffLimit": 5, "activeDeadlineSeconds": 600, "ttlSecondsAfterFinished": 60}
    )
    spec = job_for(t)["spec"]
    assert spec["backoffLimit"] == 5
    assert spec["activeDeadlineSeconds"] == 600
    assert spec["ttlSecondsAfterFinished"] == 60


def test_unset_deadline_and_ttl_are_left_out() -> None:
    spec = job_for(training())["spec"]
    assert spec["backoffLimit"] == 3
    assert "activeDeadlineSeconds" not in spec
    assert "ttlSecondsAfterFinished" not in spec


@pytest.mark.parametrize(
    ("overrides", "want_suspend", "want_queue"),
    [
        pytest.param({}, False, None, id="plain"),
        pytest.param({"runPolicy": {"suspend": True}}, True, None, id="suspended"),
        pytest.param({"queueName": "team-a"}, True, "team-a", id="queued-until-kueue-admits"),
        pytest.param(
            {"queueName": "team-a", "runPolicy": {"suspend": True}},
            True,
            "team-a",
            id="queued-and-suspended",
        ),
    ],
)
def test_job_starts_suspended_when_paused_or_queued(
    overrides: dict[str, Any], want_suspend: bool, want_queue: str | None
) -> None:
    job = job_for(training(**overrides))
    assert job["spec"]["suspend"] is want_suspend
    assert job["metadata"]["labels"].get(KUEUE_QUEUE_LABEL) == want_queue
    # Kueue reads its label from the Job, not the pods.
    assert KUEUE_QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"]


def test_bad_input_exit_code_fails_the_job_at_once() -> None:
    rules = job_for(training())["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}} in rules
    assert pod_spec(job_for(training()))["restartPolicy"] == "Never"


def test_the_trainers_exit_codes_meet_the_pod_failure_policy() -> None:
    """2 (bad input, a diverged run, unwritable output) fails the Job at once; 143 (SIGTERM)
    is retried, and not even counted when the pod was evicted or preempted."""
    rules = job_for(training())["spec"]["podFailurePolicy"]["rules"]
    fail_job = [r for r in rules if r["action"] == "FailJob"]
    failing_codes = {code for r in fail_job for code in r["onExitCodes"]["values"]}
    assert failing_codes == {trainer_errors.EXIT_BAD_INPUT}
    assert trainer_errors.EXIT_INTERRUPTED not in failing_codes
    assert trainer_errors.EXIT_RUNTIME_FAILURE not in failing_codes
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules


# --- build_training_job: single node vs distributed -----------------------------------------


def test_single_worker_runs_the_trainer_module_in_a_plain_job() -> None:
    job = job_for(training())
    assert trainer(job)["command"] == ["python", "-m", "fogline.workloads.trainer"]
    assert "completionMode" not in job["spec"]
    assert "subdomain" not in pod_spec(job)
    assert "ports" not in trainer(job)


@pytest.mark.parametrize(
    ("workers", "procs"),
    [pytest.param(3, 1, id="three-nodes"), pytest.param(1, 4, id="one-node-four-procs")],
)
def test_distributed_run_is_an_indexed_job_launched_by_torchrun(workers: int, procs: int) -> None:
    t = training(
        name="digits", namespace="ml", distributed={"workers": workers, "procsPerWorker": procs}
    )
    run = plan_run(t)
    job = build_training_job(t, run, SETTINGS)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == workers
    assert job["spec"]["parallelism"] == workers
    assert pod_spec(job)["subdomain"] == run.service_name
    assert trainer(job)["command"] == [
        "torchrun",
        f"--nnodes={workers}",
        f"--nproc-per-node={procs}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        f"--master-addr={run.job_name}-0.{run.service_name}.ml.svc",
        f"--master-port={RENDEZVOUS_PORT}",
        "-m",
        "fogline.workloads.trainer",
    ]
    assert trainer(job)["ports"] == [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]


# --- build_training_job: volumes ------------------------------------------------------------


def volumes_and_mounts(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    mounts = {m["mountPath"]: m for m in trainer(job)["volumeMounts"]}
    return volumes, mounts


def test_dataset_claim_is_read_only_and_output_claim_is_writable() -> None:
    job = job_for(training(dataset={"uri": "pvc://data/set.npz"}))
    volumes, mounts = volumes_and_mounts(job)
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in volumes.values()
        if "persistentVolumeClaim" in v
    }
    assert claims == {"data": True, "models": False}
    assert mounts[f"{PVC_ROOT}/data"]["readOnly"] is True
    assert mounts[f"{PVC_ROOT}/models"]["readOnly"] is False


def test_one_claim_for_dataset_and_output_is_mounted_once_and_writable() -> None:
    job = job_for(training(dataset={"uri": "pvc://models/data/set.npz"}))
    volumes, mounts = volumes_and_mounts(job)
    pvcs = [v["persistentVolumeClaim"] for v in volumes.values() if "persistentVolumeClaim" in v]
    assert pvcs == [{"claimName": "models", "readOnly": False}]
    assert mounts[f"{PVC_ROOT}/models"]["readOnly"] is False


def test_file_output_is_a_host_folder_on_the_training_node() -> None:
    job = job_for(training(output={"uri": "file:///data/out/"}))
    volumes, mounts = volumes_and_mounts(job)
    assert volumes["output"]["hostPath"] == {
        "path": "/data/out/digits",
        "type": "DirectoryOrCreate",
    }
    assert mounts["/data/out/digits"]["name"] == "output"
    assert not any("persistentVolumeClaim" in v for v in volumes.values())
    assert "/tmp" in mounts


# --- trainer_args ---------------------------------------------------------------------------


def test_trainer_args_carry_every_training_field_of_the_spec() -> None:
    t = training(
        model={"architecture": "cnn", "hiddenUnits": 32},
        dataset={"uri": "pvc://data/x.csv", "format": "csv", "validationSplit": 0.25},
        hyperparameters={
            "epochs": 4,
            "batchSize": 16,
            "learningRate": 0.01,
            "optimizer": "sgd",
            "seed": 9,
        },
        export={
            "formats": ["onnx", "torchscript"],
            "opset": 18,
            "quantization": "int8",
            "pruning": {"amount": 0.3},
        },
    )
    run = plan_run(t)
    assert trainer_args(t.spec, run) == [
        "--model=cnn",
        "--hidden-units=32",
        "--dataset=pvc://data/x.csv",
        "--dataset-format=csv",
        "--validation-split=0.25",
        "--epochs=4",
        "--batch-size=16",
        "--lr=0.01",
        "--optimizer=sgd",
        "--seed=9",
        "--export=onnx,torchscript",
        "--opset=18",
        "--quantize=int8",
        "--prune=0.3",
        f"--output={run.output_dir}",
        f"--artifact-uri={run.artifact_uri}",
        "--termination-log=/dev/termination-log",
    ]
    assert trainer(build_training_job(t, run, SETTINGS))["args"] == trainer_args(t.spec, run)


@pytest.mark.parametrize(
    ("dataset", "want"),
    [
        pytest.param({"uri": "builtin:digits"}, [], id="no-digest"),
        pytest.param(
            {"uri": "https://example.com/d.npz", "digest": DIGEST},
            [f"--dataset-digest={DIGEST}"],
            id="digest",
        ),
    ],
)
def test_dataset_digest_is_passed_only_when_set(dataset: dict[str, Any], want: list[str]) -> None:
    t = training(dataset=dataset)
    args = trainer_args(t.spec, plan_run(t))
    assert [a for a in args if a.startswith("--dataset-digest")] == want


def test_entrypoint_model_is_passed_as_the_model() -> None:
    t = training(model={"entrypoint": "mypkg.models:build"})
    assert "--model=mypkg.models:build" in trainer_args(t.spec, plan_run(t))


def test_builder_does_not_change_the_operator_settings() -> None:
    settings = OperatorSettings()
    before = copy.deepcopy((dict(settings.gpu_node_selector), settings.gpu_tolerations))
    job = job_for(training(placement={"nodeSelector": {"zone": "b"}}), settings)
    pod_spec(job)["tolerations"][0]["key"] = "changed"
    assert (dict(settings.gpu_node_selector), settings.gpu_tolerations) == before


# --- rendezvous service and RBAC ------------------------------------------------------------


def test_rendezvous_service_is_headless_and_selects_this_run() -> None:
    t = training(distributed={"workers": 2})
    run = plan_run(t)
    service = build_rendezvous_service(t, run)
    assert service["metadata"]["name"] == run.service_name
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = build_training_job(t, run, SETTINGS)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "rendezvous", "port": RENDEZVOUS_PORT}]


def test_trainer_role_may_only_read_and_annotate_pods() -> None:
    objects = build_trainer_rbac("ml", SETTINGS)
    assert [o["kind"] for o in objects] == ["ServiceAccount", "Role", "RoleBinding"]
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": SETTINGS.trainer_service_account, "namespace": "ml"}
    ]
    assert trainer_account_of(job_for(training())) == SETTINGS.trainer_service_account


def trainer_account_of(job: dict[str, Any]) -> str:
    return str(pod_spec(job)["serviceAccountName"])


@pytest.mark.parametrize(
    ("distributed", "gpus", "expected"),
    [
        ({"workers": 2, "backend": "gloo"}, 0, "gloo"),
        ({"workers": 2, "procsPerWorker": 2, "backend": "nccl"}, 2, "nccl"),
        ({"workers": 1}, 1, None),
    ],
)
def test_the_chosen_backend_reaches_the_trainer(
    distributed: dict[str, Any], gpus: int, expected: str | None
) -> None:
    job = job_for(training(distributed=distributed, resources={"gpus": gpus}))
    env = {e["name"]: e.get("value") for e in trainer(job)["env"]}
    assert env.get("FOGLINE_DIST_BACKEND") == expected


@pytest.mark.parametrize(
    ("uri", "output_dir", "artifact_uri"),
    [
        ("file:///srv/models/", "/srv/models/digits/", "file:///srv/models/digits/"),
        ("file:///", "/digits/", "file:///digits/"),
        ("pvc://art/x/", "/mnt/pvc/art/x/digits/", "pvc://art/x/digits/"),
    ],
)
def test_output_locations_keep_their_scheme_and_root(
    uri: str, output_dir: str, artifact_uri: str
) -> None:
    run = plan_run(training(output={"uri": uri}))
    assert run.output_dir == output_dir + run.run_id
    assert run.artifact_uri == artifact_uri + run.run_id


def test_signing_and_encryption_keys_reach_the_trainer_as_read_only_files() -> None:
    output = {
        "uri": "s3://bucket/models",
        "signing": {"privateKeySecret": "signer", "key": "ec.pem"},
        "encryption": {"keySecret": "model-key"},
    }
    job = job_for(training(output=output))
    volumes, mounts = volumes_and_mounts(job)
    assert volumes["signing-key"]["secret"] == {
        "secretName": "signer",
        "items": [{"key": "ec.pem", "path": "private.pem"}],
        "optional": True,
    }
    assert volumes["model-key"]["secret"]["items"] == [{"key": "key", "path": "key"}]
    assert mounts["/etc/fogline/signing"]["readOnly"] is True
    assert mounts["/etc/fogline/model-key"]["readOnly"] is True
    args = trainer(job)["args"]
    assert "--signing-key=/etc/fogline/signing/private.pem" in args
    assert "--encryption-key=/etc/fogline/model-key/key" in args
    assert not any("signer" in str(e) or "model-key" in str(e) for e in trainer(job)["env"])


def test_unprotected_output_mounts_no_keys() -> None:
    job = job_for(training())
    volumes, _ = volumes_and_mounts(job)
    assert "signing-key" not in volumes and "model-key" not in volumes
    assert not any(
        a.startswith(("--signing-key", "--encryption-key")) for a in trainer(job)["args"]
    )
