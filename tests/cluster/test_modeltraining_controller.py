"""The ModelTraining controller on the real control plane: a CR becomes a GPU Job placed by
the real scheduler; kwok plays the trainer's pod (progress, then the termination message);
the CR's status follows, gated on the evaluation threshold."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bench.fleet import audit_now, settle_audit_log
from kubernetes import client
from kubernetes.client.rest import ApiException

from fogline.kube import USER_AGENT
from tests.conftest import ClusterHandle, wait_for
from tests.operator_process import OperatorProcess
from tests.workloads.conftest import trainer_environment
from tests.workloads.test_trainer_failures import DIVERGING

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION, PLURAL = "fogline.io", "v1alpha1", "modeltrainings"
DIGEST = "sha256:" + "ab" * 32


def training(name: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"architecture": "mlp"},
        "dataset": {"uri": "builtin:digits"},
        "hyperparameters": {"epochs": 4},
        "export": {"quantization": "int8"},
        "evaluation": {"threshold": 0.9},
        "runPolicy": {"backoffLimit": 1},
        "output": {"uri": "file:///var/lib/fogline/artifacts"},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelTraining",
        "metadata": {"name": name},
        "spec": spec,
    }


def summary(accuracy: float) -> dict[str, Any]:
    return {
        "phase": "Succeeded",
        "epochs": 4,
        "metrics": {"accuracy": accuracy + 0.005, "loss": 0.08, "accuracy_int8": accuracy},
        "evaluation": {"metric": "accuracy", "value": accuracy},
        "artifact": {
            "uri": "pvc://artifacts/digits/x",
            "digest": DIGEST,
            "format": "onnx",
            "sizeBytes": 12345,
            "quantized": True,
        },
    }


class Trainings:
    def __init__(self, cluster: ClusterHandle, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.custom = client.CustomObjectsApi(cluster.api)
        self.core = client.CoreV1Api(cluster.api)
        self.batch = client.BatchV1Api(cluster.api)

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return result

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name)).get("phase") == phase and s,
            timeout=timeout,
            what=f"{name} phase {phase}",
        )

    def jobs(self, name: str) -> list[Any]:
        return self.batch.list_namespaced_job(
            self.namespace, label_selector=f"fogline.io/modeltraining={name}"
        ).items

    def pods(self, name: str, phase: str | None = None) -> list[Any]:
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"fogline.io/modeltraining={name}"
        ).items
        return [p for p in pods if phase is None or p.status.phase == phase]

    def running_pod(self, name: str) -> Any:
        try:
            return wait_for(
                lambda: next(iter(self.pods(name, "Running")), None),
                what=f"a Running pod of {name}",
            )
        except pytest.fail.Exception:
            pytest.fail(self.describe(name))

    def describe(self, name: str) -> str:
        """What the API shows about a training, for a failing test's message."""
        pods = [
            (
                p.metadata.name,
                p.status.phase,
                [(c.type, c.status, c.message) for c in p.status.conditions or []],
            )
            for p in self.pods(name)
        ]
        jobs = [(j.metadata.name, j.spec.suspend, j.status.to_dict()) for j in self.jobs(name)]
        return f"status={self.status(name)}\njobs={jobs}\npods={pods}\nevents={self.events(name)}"

    def events(self, name: str) -> list[tuple[str, str]]:
        items = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [(e.type, e.reason) for e in items]


@pytest.fixture
def mt(cluster: ClusterHandle, namespace: str, operator: OperatorProcess) -> Trainings:
    return Trainings(cluster, namespace)


def test_training_runs_on_a_gpu_node_reports_progress_and_publishes_the_artifact(
    mt: Trainings,
) -> None:
    mt.create(training("digits"))
    pod = mt.running_pod("digits")
    node = mt.core.read_node(pod.spec.node_name)
    assert node.metadata.labels["fogline.io/pool"] == "gpu"
    job = mt.jobs("digits")[0]
    container = job.spec.template.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.image == "registry.example/fogline-trainer:test"
    assert "--quantize=int8" in container.args
    assert job.metadata.owner_references[0].kind == "ModelTraining"

    # The trainer reports progress on its own pod; the operator surfaces it with an ETA.
    progress = {
        "epoch": 2,
        "epochs": 4,
        "loss": 0.2,
        "metric": {"name": "accuracy", "value": 0.9},
        "samplesPerSecond": 5000.0,
        "updatedAt": "2030-01-01T00:00:00Z",
    }
    mt.core.patch_namespaced_pod(
        pod.metadata.name,
        mt.namespace,
        {"metadata": {"annotations": {"fogline.io/progress": json.dumps(progress)}}},
    )
    shown = wait_for(
        lambda: mt.status("digits").get("progress", {}).get("epoch") == 2 and mt.status("digits"),
        what="progress in status",
    )
    assert shown["phase"] == "Running"
    assert shown["progress"]["epochs"] == 4 and "eta" in shown["progress"]

    mt.cluster.steer_pod(mt.namespace, pod.metadata.name, "succeed", summary(0.97))
    status = mt.wait_phase("digits", "Succeeded")
    assert status["artifact"]["digest"] == DIGEST
    assert status["artifact"]["metric"] == {"name": "accuracy", "value": 0.97}
    assert status["metrics"]["accuracy_int8"] == 0.97
    assert status["artifactDigestShort"] == DIGEST[7:19]
    assert status["observedGeneration"] == 1
    wait_for(
        lambda: (
            {"JobCreated", "Training", "EvaluationPassed"} <= {r for _, r in mt.events("digits")}
        ),
        what="an Event for each transition",
    )


def test_operator_exposes_its_reconciles_and_events_as_metrics(
    mt: Trainings, operator: OperatorProcess
) -> None:
    mt.create(training("counted"))
    mt.wait_phase("counted", "Running")
    text = wait_for(
        lambda: (t := operator.metrics()) and 'reason="Training"' in t and t, what="metrics"
    )
    assert 'fogline_reconciles_total{kind="ModelTraining",result="ok"}' in text
    requests = next(
        line for line in text.splitlines() if line.startswith("fogline_api_requests_total")
    )
    assert float(requests.split()[1]) > 0


def test_below_threshold_ends_failed_and_publishes_nothing(mt: Trainings) -> None:
    mt.create(training("weak"))
    pod = mt.running_pod("weak")
    mt.cluster.steer_pod(mt.namespace, pod.metadata.name, "succeed", summary(0.42))
    status = mt.wait_phase("weak", "Failed")
    assert "artifact" not in status
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "EvaluationBelowThreshold"
    assert "0.4200 is below the threshold 0.9" in succeeded["message"]


def test_failing_pods_exhaust_backoff_and_report_the_reason(mt: Trainings) -> None:
    mt.create(training("flaky", runPolicy={"backoffLimit": 1}))
    failed: set[str] = set()

    def fail_new_pods() -> Any:
        for pod in mt.pods("flaky", "Running"):
            if pod.metadata.name not in failed:
                mt.cluster.steer_pod(
                    mt.namespace, pod.metadata.name, "fail", "CUDA error: out of memory"
                )
                failed.add(pod.metadata.name)
        return mt.status("flaky").get("phase") == "Failed"

    wait_for(fail_new_pods, timeout=90, what="backoff exhausted")
    status = mt.status("flaky")
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "BackoffLimitExceeded"
    assert len(failed) >= 2 and status["attempts"] >= 2  # backoffLimit 1: a retry, then no more
    wait_for(
        lambda: ("Warning", "BackoffLimitExceeded") in mt.events("flaky"), what="a failure Event"
    )


def test_more_gpus_than_any_node_has_reports_unschedulable(mt: Trainings) -> None:
    mt.create(training("huge", resources={"gpus": 16}))
    status = wait_for(
        lambda: (
            any(
                c["type"] == "Scheduled" and c["status"] == "False"
                for c in mt.status("huge").get("conditions", [])
            )
            and mt.status("huge")
        ),
        what="Scheduled=False",
    )
    scheduled = next(c for c in status["conditions"] if c["type"] == "Scheduled")
    assert scheduled["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in scheduled["message"]
    assert status["phase"] == "Pending"
    wait_for(
        lambda: ("Warning", "Unschedulable") in mt.events("huge"), what="an Unschedulable Event"
    )


def test_distributed_run_is_an_indexed_job_with_a_headless_service(mt: Trainings) -> None:
    mt.create(
        training(
            "ddp",
            resources={"gpus": 2},
            distributed={"workers": 3, "procsPerWorker": 2, "backend": "nccl"},
        )
    )
    pods = wait_for(lambda: len(p := mt.pods("ddp", "Running")) == 3 and p, what="3 worker pods")
    job = mt.jobs("ddp")[0]
    assert job.spec.completion_mode == "Indexed" and job.spec.completions == 3
    service = mt.core.read_namespaced_service(job.metadata.name, mt.namespace)
    assert service.spec.cluster_ip == "None"
    indexes = set()
    for pod in pods:
        env = {e.name: e for e in pod.spec.containers[0].env}
        # The Job controller gives each pod its index; torchrun's --node-rank reads it.
        ref = env["JOB_COMPLETION_INDEX"].value_from.field_ref.field_path
        assert ref.endswith("['batch.kubernetes.io/job-completion-index']")
        indexes.add(pod.metadata.annotations["batch.kubernetes.io/job-completion-index"])
        command = pod.spec.containers[0].command
        assert (
            command[0] == "torchrun" and "--nnodes=3" in command and "--nproc-per-node=2" in command
        )
        assert (
            f"--master-addr={job.metadata.name}-0.{job.metadata.name}.{mt.namespace}.svc" in command
        )
        assert pod.spec.subdomain == job.metadata.name
    assert indexes == {"0", "1", "2"}


def test_queue_name_creates_a_suspended_job_for_kueue(mt: Trainings) -> None:
    mt.create(training("queued", queueName="gpu-team"))
    mt.wait_phase("queued", "Queued")
    job = wait_for(lambda: next(iter(mt.jobs("queued")), None), what="the Job")
    assert job.spec.suspend is True
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu-team"
    # Kueue admits by unsuspending; the run then proceeds.
    mt.batch.patch_namespaced_job(job.metadata.name, mt.namespace, {"spec": {"suspend": False}})
    mt.running_pod("queued")
    mt.wait_phase("queued", "Running")


def test_suspend_pauses_and_resumes_the_same_job(mt: Trainings) -> None:
    mt.create(training("pausable"))
    mt.running_pod("pausable")
    job_name = mt.jobs("pausable")[0].metadata.name
    mt.custom.patch_namespaced_custom_object(
        GROUP, VERSION, mt.namespace, PLURAL, "pausable", {"spec": {"runPolicy": {"suspend": True}}}
    )
    mt.wait_phase("pausable", "Suspended")
    wait_for(lambda: not mt.pods("pausable", "Running"), what="pods stopped")
    mt.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        mt.namespace,
        PLURAL,
        "pausable",
        {"spec": {"runPolicy": {"suspend": False}}},
    )
    mt.wait_phase("pausable", "Running")
    assert [j.metadata.name for j in mt.jobs("pausable")] == [job_name]


def test_operator_restart_mid_run_creates_no_second_job(
    mt: Trainings, operator: OperatorProcess
) -> None:
    mt.create(training("survivor"))
    pod = mt.running_pod("survivor")
    mt.wait_phase("survivor", "Running")
    operator.restart()
    mt.cluster.steer_pod(mt.namespace, pod.metadata.name, "succeed", summary(0.95))
    mt.wait_phase("survivor", "Succeeded")
    assert len(mt.jobs("survivor")) == 1


def test_spec_change_after_success_starts_a_new_run(mt: Trainings) -> None:
    mt.create(training("rerun"))
    pod = mt.running_pod("rerun")
    mt.cluster.steer_pod(mt.namespace, pod.metadata.name, "succeed", summary(0.95))
    first = mt.wait_phase("rerun", "Succeeded")
    mt.custom.patch_namespaced_custom_object(
        GROUP, VERSION, mt.namespace, PLURAL, "rerun", {"spec": {"hyperparameters": {"epochs": 8}}}
    )
    second = wait_for(
        lambda: (s := mt.status("rerun")).get("jobName") != first["jobName"] and s, what="new run"
    )
    assert second["observedGeneration"] == 2
    assert second["artifact"]["digest"] == DIGEST  # the last good artifact stays offered
    # The last run's times and progress are not the new run's.
    assert "completionTime" not in second and "progress" not in second, second
    wait_for(
        lambda: [j.metadata.name for j in mt.jobs("rerun")] == [second["jobName"]],
        what="old Job removed",
    )


def test_deleting_the_training_deletes_its_job(mt: Trainings) -> None:
    mt.create(training("doomed"))
    mt.running_pod("doomed")
    mt.custom.delete_namespaced_custom_object(GROUP, VERSION, mt.namespace, PLURAL, "doomed")
    wait_for(lambda: not mt.jobs("doomed"), what="garbage collection of the Job")


def test_spec_only_the_operator_can_judge_becomes_a_condition(mt: Trainings) -> None:
    mt.create(training("odd", dataset={"uri": "builtin:imagenet"}))
    status = mt.wait_phase("odd", "Failed")
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "InvalidSpec" and "builtin:digits" in succeeded["message"]
    assert not mt.jobs("odd")
    with pytest.raises(ApiException):
        mt.batch.read_namespaced_job("odd", mt.namespace)


def _refuse_succeeded_status(cluster: ClusterHandle, namespace: str, name: str) -> None:
    """A ValidatingAdmissionPolicy, enforced by the real apiserver, that refuses any status
    update of the trainings in `namespace` that says Succeeded."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": [VERSION],
                        "operations": ["UPDATE"],
                        "resources": ["modeltrainings/status"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "!has(object.status) || !has(object.status.phase) "
                    "|| object.status.phase != 'Succeeded'",
                    "message": "refused by the test",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, binding]}),
    )


def test_a_refused_status_patch_at_completion_is_retried(
    mt: Trainings, operator: OperatorProcess
) -> None:
    mt.create(training("stubborn"))
    pod = mt.running_pod("stubborn")
    mt.wait_phase("stubborn", "Running")
    name = f"refuse-{mt.namespace}"
    _refuse_succeeded_status(mt.cluster, mt.namespace, name)
    try:
        # The policy is in force once a dry-run of the same write is refused.
        def refused() -> bool:
            try:
                mt.custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    mt.namespace,
                    PLURAL,
                    "stubborn",
                    {"status": {"phase": "Succeeded"}},
                    dry_run="All",
                )
            except ApiException:
                return True
            return False

        wait_for(refused, what="the admission policy in force")

        def retries() -> float:
            for line in operator.metrics().splitlines():
                if line.startswith('fogline_workqueue_retries_total{kind="ModelTraining"}'):
                    return float(line.split()[1])
            return 0.0

        before = retries()
        mt.cluster.steer_pod(mt.namespace, pod.metadata.name, "succeed", summary(0.95))
        wait_for(
            lambda: any((j.status.succeeded or 0) for j in mt.jobs("stubborn")),
            what="the Job Complete",
        )
        wait_for(lambda: retries() > before, what="the refused patch to be put back in the queue")
        assert mt.status("stubborn")["phase"] != "Succeeded"
    finally:
        mt.cluster.kubectl(
            "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name
        )
    # No event about the training follows; the queue's retry alone brings the truth.
    mt.wait_phase("stubborn", "Succeeded", timeout=90)


def test_a_recreated_namespace_gets_its_trainer_rbac_again(
    cluster: ClusterHandle, crds: list[str], operator: OperatorProcess
) -> None:
    name = f"t-again-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(cluster.api)
    for attempt in ("first", "second"):
        core.create_namespace({"metadata": {"name": name}})
        try:
            mt = Trainings(cluster, name)
            mt.create(training(attempt))
            mt.running_pod(attempt)  # pods run as the trainer ServiceAccount: it exists
        finally:
            core.delete_namespace(name)
            wait_for(
                lambda: not core.list_namespace(field_selector=f"metadata.name={name}").items,
                timeout=90,
                what=f"namespace {name} deleted",
            )


def test_a_student_waits_for_its_teacher_then_learns_from_its_artifact(mt: Trainings) -> None:
    mt.create(training("student", distillation={"teacher": {"fromTraining": "teacher"}}))
    waiting = wait_for(
        lambda: (
            any(
                c.get("reason") == "TeacherNotReady"
                for c in mt.status("student").get("conditions") or []
            )
            and mt.status("student")
        ),
        what="the student waiting for its teacher",
    )
    assert waiting["phase"] == "Pending" and mt.jobs("student") == []

    compressed = {"quantization": "none", "compression": {"methods": ["int8-static"]}}
    mt.create(training("teacher", export=compressed))
    pod = mt.running_pod("teacher")
    table = {
        "chosen": "int8-static",
        "budget": {"batchSize": 1, "threads": 1, "minAccuracy": 0.9},
        "candidates": [
            {
                "method": "float32",
                "file": "model.onnx",
                "sizeBytes": 106433,
                "accuracy": 0.97,
                "latencyMs": 0.009,
                "chosen": False,
                "reason": "fits, but int8-static was chosen",
            },
            {
                "method": "int8-static",
                "file": "model.int8-static.onnx",
                "sizeBytes": 31611,
                "accuracy": 0.97,
                "latencyMs": 0.008,
                "chosen": True,
                "reason": "chosen",
            },
        ],
    }
    mt.cluster.steer_pod(
        mt.namespace, pod.metadata.name, "succeed", summary(0.97) | {"compression": table}
    )
    assert mt.wait_phase("teacher", "Succeeded")["compression"] == table

    job = wait_for(lambda: next(iter(mt.jobs("student")), None), what="the student's Job")
    args = job.spec.template.spec.containers[0].args
    assert "--teacher=pvc://artifacts/digits/x" in args
    assert f"--teacher-digest={DIGEST}" in args
    assert "--distill-temperature=4.0" in args and "--distill-weight=0.7" in args
    volumes = {v.name: v for v in job.spec.template.spec.volumes}
    claims = {
        v.persistent_volume_claim.claim_name: v.persistent_volume_claim.read_only
        for v in volumes.values()
        if v.persistent_volume_claim
    }
    assert claims == {"artifacts": True}


def real_trainer_message(folder: Path, *flags: str) -> tuple[int, str]:
    """The exit code and termination message of the real trainer run with `flags`."""
    log = folder / "termination-log"
    command = [sys.executable, "-m", "fogline.workloads.trainer", *flags, "--threads", "1"]
    command += ["--output", str(folder / "artifact"), "--termination-log", str(log)]
    done = subprocess.run(
        command, capture_output=True, text=True, env=trainer_environment(), timeout=300, check=False
    )
    return done.returncode, log.read_text()


def test_a_diverging_run_ends_failed_training_diverged_with_an_event(
    mt: Trainings, tmp_path: Path
) -> None:
    # What the real trainer leaves behind when its loss turns NaN, played by kwok's pod.
    exit_code, message = real_trainer_message(tmp_path, *DIVERGING)
    assert exit_code == 2, message
    mt.create(training("diverging", hyperparameters={"learningRate": 10, "optimizer": "sgd"}))
    pod = mt.running_pod("diverging")
    mt.cluster.steer_pod(mt.namespace, pod.metadata.name, "fail", message, exit_code=exit_code)
    status = mt.wait_phase("diverging", "Failed")
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "TrainingDiverged", mt.describe("diverging")
    assert "at epoch 1: the training loss is nan" in succeeded["message"]
    assert "PodFailurePolicy" in succeeded["message"]  # exit 2: no retry of the same divergence
    assert len(mt.pods("diverging")) == 1 and "artifact" not in status
    wait_for(
        lambda: ("Warning", "TrainingDiverged") in mt.events("diverging"),
        what="a TrainingDiverged Event",
    )


def test_a_poisoned_progress_annotation_warns_once_and_never_freezes_the_status(
    mt: Trainings,
) -> None:
    mt.create(training("poisoned"))
    pod = mt.running_pod("poisoned")
    mt.wait_phase("poisoned", "Running")

    def annotate(raw: str) -> None:
        patch = {"metadata": {"annotations": {"fogline.io/progress": raw}}}
        mt.core.patch_namespaced_pod(pod.metadata.name, mt.namespace, patch)

    def ignored() -> int:
        return mt.events("poisoned").count(("Warning", "PodReportIgnored"))

    annotate('{"epoch": 1, "epochs": 4, "loss": NaN, "updatedAt": "yesterday"}')
    wait_for(lambda: ignored() == 1, what="a PodReportIgnored Warning")
    annotate(json.dumps({"epoch": 1e308, "epochs": 4, "metric": {"name": "m" * 100_000}}))
    # A sound report still reaches the status: nothing the pod wrote froze it.
    annotate(json.dumps({"epoch": 3, "epochs": 4, "loss": 0.3}))
    shown = wait_for(
        lambda: (s := mt.status("poisoned")).get("progress", {}).get("epoch") == 3 and s,
        what="the sound progress in status",
    )
    assert shown["phase"] == "Running" and shown["progress"]["loss"] == 0.3
    mt.cluster.steer_pod(mt.namespace, pod.metadata.name, "succeed", summary(0.97))
    mt.wait_phase("poisoned", "Succeeded")
    assert ignored() == 1  # one Warning per pod, however often it writes rubbish


def test_a_deleted_trainer_identity_is_applied_again_without_a_restart(mt: Trainings) -> None:
    """Someone deletes the trainer's ServiceAccount, Role and RoleBinding while a run is
    under way: they come back, and a new run's pods start, with the operator running on."""
    mt.create(training("first"))
    mt.running_pod("first")
    rbac = client.RbacAuthorizationV1Api(mt.cluster.api)
    mt.core.delete_namespaced_service_account("fogline-trainer", mt.namespace)
    rbac.delete_namespaced_role("fogline-trainer", mt.namespace)
    rbac.delete_namespaced_role_binding("fogline-trainer", mt.namespace)

    def identity() -> bool:
        try:
            mt.core.read_namespaced_service_account("fogline-trainer", mt.namespace)
            rbac.read_namespaced_role("fogline-trainer", mt.namespace)
            rbac.read_namespaced_role_binding("fogline-trainer", mt.namespace)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    wait_for(identity, timeout=20, what="the trainer identity applied again")
    mt.create(training("second"))
    mt.running_pod("second")  # its pods run as the trainer ServiceAccount


def operator_requests(audit_log: Path, namespace: str, since: str) -> Counter[tuple[str, str]]:
    """What the operator (its client and kopf's) asked of the API server about `namespace`
    since `since`, by verb and resource."""
    settle_audit_log(audit_log)
    asked: Counter[tuple[str, str]] = Counter()
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or event["requestReceivedTimestamp"] < since:
            continue
        if not event.get("userAgent", "").startswith((USER_AGENT, "kopf/")):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        asked[(event["verb"], resource)] += 1
    return asked


def test_a_training_costs_one_job_write_and_a_status_patch_and_an_event_per_transition(
    mt: Trainings, operator: OperatorProcess
) -> None:
    """To Running: the trainer identity of a new namespace (three applies), the Job, and for
    each of the two transitions (created, running) one status patch and one Event. The
    Job's and the pod's own watch events find the status written and say nothing again."""
    since = audit_now()
    mt.create(training("frugal"))
    mt.running_pod("frugal")
    wait_for(lambda: ("Normal", "Training") in mt.events("frugal"), what="the Training Event")
    wait_for(lambda: 'fogline_workqueue_depth{kind="ModelTraining"} 0.0' in operator.metrics())
    events = [
        (e.reason, e.message)
        for e in mt.core.list_namespaced_event(mt.namespace).items
        if e.involved_object.kind == "ModelTraining"
    ]
    assert sorted(r for r, _ in events) == ["JobCreated", "Training"], events
    created = next(m for r, m in events if r == "JobCreated")
    assert created.endswith("; waiting for the training pods to start")
    assert operator_requests(mt.cluster.devcluster.audit_log, mt.namespace, since) == {
        ("patch", "serviceaccounts"): 1,
        ("patch", "roles"): 1,
        ("patch", "rolebindings"): 1,
        ("patch", "jobs"): 1,
        ("patch", "modeltrainings/status"): 2,
        ("create", "events"): 2,
    }
