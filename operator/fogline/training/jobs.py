"""Builders for what a ModelTraining becomes: a batch/v1 Job running the trainer (an Indexed
Job with a headless Service and torchrun rendezvous when distributed), and the RBAC that
lets a trainer report progress: get and patch on the namespace's pods, which the chart's
admission policy narrows to the trainer's own pod. Typed spec in, plain dicts out."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from fogline.api.modeltraining import ModelTraining, ModelTrainingSpec
from fogline.api.stores import pod_access
from fogline.settings import OperatorSettings

MANAGED_BY = {"app.kubernetes.io/managed-by": "fogline"}
TRAINING_LABEL = "fogline.io/modeltraining"
RUN_LABEL = "fogline.io/run"
COMPONENT_LABEL = "app.kubernetes.io/component"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PVC_ROOT = "/mnt/pvc"
# Where a run to be published (s3://, oci://) is packaged before the upload: a scratch volume.
STAGING_ROOT = "/var/lib/fogline/artifact"
RENDEZVOUS_PORT = 29500
TERMINATION_LOG = "/dev/termination-log"
# Where the keys of spec.output.signing and spec.output.encryption appear, read-only.
SIGNING_MOUNT, SIGNING_KEY_FILE = "/etc/fogline/signing", "private.pem"
MODEL_KEY_MOUNT, MODEL_KEY_FILE = "/etc/fogline/model-key", "key"
# The trainer exits 2 for what a retry can never fix (a missing dataset, bad arguments, a
# diverged run, output storage that is read-only or full):
# retrying that only burns GPU time, so the Job fails at once.
BAD_INPUT_EXIT_CODE = 2


@dataclass(frozen=True)
class TeacherArtifact:
    """The distillation teacher a run learns from: an artifact location and its digest."""

    uri: str
    digest: str


def teacher_of(
    spec: ModelTrainingSpec, published: TeacherArtifact | None
) -> TeacherArtifact | None:
    """The teacher of a spec: its uri and digest, or what the teacher ModelTraining
    published (None while it has published nothing, or without distillation)."""
    if spec.distillation is None:
        return None
    teacher = spec.distillation.teacher
    if teacher.uri and teacher.digest:
        return TeacherArtifact(teacher.uri, teacher.digest)
    return published


@dataclass(frozen=True)
class TrainingRun:
    """One run of a ModelTraining: a spec hash names its Job, so a spec change that alters
    the training starts a new run, and anything else (suspend, the gate's threshold) does not."""

    run_id: str
    job_name: str
    service_name: str
    output_dir: str
    artifact_uri: str


def run_fingerprint(spec: ModelTrainingSpec) -> str:
    """Eight hex characters of the training-relevant spec. Suspension and the evaluation
    threshold are left out: pausing a run or moving the gate does not retrain, unless
    compression is on, where the threshold decides which candidate is served."""
    relevant = spec.to_dict()
    relevant.get("runPolicy", {}).pop("suspend", None)
    if not spec.export.compression.enabled:
        # With compression the threshold is the accuracy floor the trainer chooses by.
        relevant.get("evaluation", {}).pop("threshold", None)
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def _pvc_parts(uri: str) -> tuple[str, str]:
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    return claim, path.strip("/")


def plan_run(training: ModelTraining) -> TrainingRun:
    run_id = run_fingerprint(training.spec)
    # Job names become pod label values (63 characters at most) with a suffix of the Job
    # controller's; keep room for it.
    job_name = f"{training.name[:40]}-{run_id}"
    output = training.spec.output
    base_uri = output.uri.rstrip("/")
    if output.scheme == "pvc":
        claim, path = _pvc_parts(base_uri)
        output_dir = "/".join(p for p in (PVC_ROOT, claim, path, training.name, run_id) if p)
    elif output.scheme == "file":
        folder = output.uri.removeprefix("file://").rstrip("/")
        output_dir = f"{folder}/{training.name}/{run_id}"
        base_uri = f"file://{folder}"
    elif output.scheme in ("s3", "oci"):
        output_dir = f"{STAGING_ROOT}/{training.name}/{run_id}"
    else:
        raise ValueError(f"spec.output.uri: {output.uri!r} is not a supported location")
    # An OCI repository holds every run (one tag each, pulled by digest); elsewhere each run
    # has its own folder or prefix.
    artifact_uri = base_uri if output.scheme == "oci" else f"{base_uri}/{training.name}/{run_id}"
    return TrainingRun(
        run_id=run_id,
        job_name=job_name,
        service_name=job_name,
        output_dir=output_dir,
        artifact_uri=artifact_uri,
    )


def owner_labels(training: ModelTraining, run: TrainingRun) -> dict[str, str]:
    return {
        **MANAGED_BY,
        COMPONENT_LABEL: "trainer",
        TRAINING_LABEL: training.name,
        RUN_LABEL: run.run_id,
    }


def trainer_args(
    spec: ModelTrainingSpec, run: TrainingRun, teacher: TeacherArtifact | None = None
) -> list[str]:
    """The trainer's command line for a spec: the contract of `fogline train`."""
    model = spec.model.architecture or spec.model.entrypoint or "mlp"
    args = [
        f"--model={model}",
        f"--hidden-units={spec.model.hidden_units}",
        f"--dataset={spec.dataset.uri}",
        f"--dataset-format={spec.dataset.format}",
        f"--validation-split={spec.dataset.validation_split}",
        f"--epochs={spec.hyperparameters.epochs}",
        f"--batch-size={spec.hyperparameters.batch_size}",
        f"--lr={spec.hyperparameters.learning_rate}",
        f"--optimizer={spec.hyperparameters.optimizer}",
        f"--seed={spec.hyperparameters.seed}",
        f"--export={','.join(spec.export.formats)}",
        f"--opset={spec.export.opset}",
        f"--quantize={spec.export.quantization}",
        f"--prune={spec.export.pruning.amount}",
        f"--output={run.output_dir}",
        f"--artifact-uri={run.artifact_uri}",
        f"--termination-log={TERMINATION_LOG}",
    ]
    if spec.dataset.digest:
        args.append(f"--dataset-digest={spec.dataset.digest}")
    if spec.output.signing is not None:
        args.append(f"--signing-key={SIGNING_MOUNT}/{SIGNING_KEY_FILE}")
    if spec.output.encryption is not None:
        args.append(f"--encryption-key={MODEL_KEY_MOUNT}/{MODEL_KEY_FILE}")
    if spec.distillation is not None and teacher is not None:
        args += [
            f"--teacher={teacher.uri}",
            f"--teacher-digest={teacher.digest}",
            f"--distill-temperature={spec.distillation.temperature}",
            f"--distill-weight={spec.distillation.weight}",
        ]
    return args + compression_args(spec)


def compression_args(spec: ModelTrainingSpec) -> list[str]:
    """The trainer's compression and budget flags; none without compression methods."""
    compression, budget = spec.export.compression, spec.export.budget
    if not compression.enabled:
        return []
    args = [
        f"--compress={','.join(compression.methods)}",
        f"--calibration-samples={compression.calibration_samples}",
        f"--sharing-bits={compression.sharing_bits}",
        f"--structured-amount={compression.structured_amount}",
        f"--finetune-epochs={compression.fine_tune_epochs}",
        f"--min-accuracy={spec.evaluation.threshold}",
    ]
    if compression.per_channel:
        args.append("--per-channel")
    if compression.float16_inputs_outputs:
        args.append("--float16-io")
    if budget is not None:
        if budget.max_size_bytes is not None:
            args.append(f"--max-size-bytes={budget.max_size_bytes}")
        if budget.max_latency_ms is not None:
            args.append(f"--max-latency-ms={budget.max_latency_ms}")
        if budget.batch_size is not None:
            args.append(f"--latency-batch-size={budget.batch_size}")
        args.append(f"--latency-threads={budget.threads}")
    return args


def _command(spec: ModelTrainingSpec, run: TrainingRun, namespace: str) -> list[str]:
    dist = spec.distributed
    if not dist.is_distributed:
        return ["python", "-m", "fogline.workloads.trainer"]
    # Rank 0 of the Indexed Job is the rendezvous host, reached through the headless Service.
    master = f"{run.job_name}-0.{run.service_name}.{namespace}.svc"
    return [
        "torchrun",
        f"--nnodes={dist.workers}",
        f"--nproc-per-node={dist.procs_per_worker}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        f"--master-addr={master}",
        f"--master-port={RENDEZVOUS_PORT}",
        "-m",
        "fogline.workloads.trainer",
    ]


def _volumes(
    spec: ModelTrainingSpec, training_name: str, teacher: TeacherArtifact | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    claims: dict[str, bool] = {}  # claim -> read-only
    if spec.output.scheme == "pvc":
        claims[_pvc_parts(spec.output.uri)[0]] = False
    if spec.dataset.scheme == "pvc":
        claims.setdefault(_pvc_parts(spec.dataset.uri)[0], True)
    if teacher is not None and teacher.uri.startswith("pvc://"):
        claims.setdefault(_pvc_parts(teacher.uri)[0], True)
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for index, (claim, read_only) in enumerate(sorted(claims.items())):
        volumes.append(
            {
                "name": f"pvc-{index}",
                "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only},
            }
        )
        mounts.append(
            {"name": f"pvc-{index}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": read_only}
        )
    if spec.output.scheme == "file":
        # A folder on the training node itself: for single-node and development clusters.
        # Only this training's folder is mounted, never its parents (file:/// is the root).
        folder = f"{spec.output.uri.removeprefix('file://').rstrip('/')}/{training_name}"
        volumes.append(
            {"name": "output", "hostPath": {"path": folder, "type": "DirectoryOrCreate"}}
        )
        mounts.append({"name": "output", "mountPath": folder})
    if spec.output.scheme in ("s3", "oci"):
        volumes.append({"name": "staging", "emptyDir": {}})
        mounts.append({"name": "staging", "mountPath": STAGING_ROOT})
    if teacher is not None and teacher.uri.startswith("file://"):
        # The teacher's own folder on the node, read-only.
        folder = teacher.uri.removeprefix("file://").rstrip("/")
        volumes.append({"name": "teacher", "hostPath": {"path": folder}})
        mounts.append({"name": "teacher", "mountPath": folder, "readOnly": True})
    for name, secret, key, mount, path in _key_secrets(spec):
        # Optional, so that a Secret without the key reaches the trainer as a missing file,
        # which it reports (SigningKeyInvalid, EncryptionKeyInvalid), not a pod stuck mounting.
        volumes.append(
            {
                "name": name,
                "secret": {
                    "secretName": secret,
                    "items": [{"key": key, "path": path}],
                    "optional": True,
                },
            }
        )
        mounts.append({"name": name, "mountPath": mount, "readOnly": True})
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    return volumes, mounts


def _key_secrets(spec: ModelTrainingSpec) -> list[tuple[str, str, str, str, str]]:
    """(volume, Secret, key, mount path, file) of the signing and encryption keys."""
    keys = []
    if (signing := spec.output.signing) is not None:
        keys.append(
            (
                "signing-key",
                signing.private_key_secret,
                signing.key,
                SIGNING_MOUNT,
                SIGNING_KEY_FILE,
            )
        )
    if (sealing := spec.output.encryption) is not None:
        keys.append(("model-key", sealing.key_secret, sealing.key, MODEL_KEY_MOUNT, MODEL_KEY_FILE))
    return keys


def _resources(spec: ModelTrainingSpec) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if spec.resources.cpu is not None:
        requests["cpu"] = str(spec.resources.cpu)
    if spec.resources.memory is not None:
        requests["memory"] = limits["memory"] = str(spec.resources.memory)
    if spec.resources.gpus > 0:
        limits["nvidia.com/gpu"] = str(spec.resources.gpus)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def build_training_job(
    training: ModelTraining,
    run: TrainingRun,
    settings: OperatorSettings,
    teacher: TeacherArtifact | None = None,
) -> dict[str, Any]:
    """The Job for one run, learning from `teacher` when distilled. The caller adds the
    ownerReference (kopf.adopt)."""
    spec = training.spec
    labels = owner_labels(training, run)
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    uses_gpu = spec.resources.gpus > 0
    node_selector = {
        **(settings.gpu_node_selector if uses_gpu else {}),
        **spec.placement.node_selector,
    }
    tolerations = [dict(t) for t in settings.gpu_tolerations] if uses_gpu else []
    tolerations += [t.to_dict() for t in spec.placement.tolerations]
    volumes, mounts = _volumes(spec, training.name, teacher)
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "FOGLINE_PVC_ROOT", "value": PVC_ROOT},
        {"name": "FOGLINE_PROGRESS_INTERVAL", "value": str(settings.progress_interval_seconds)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.distributed.is_distributed and spec.distributed.backend:
        env.append({"name": "FOGLINE_DIST_BACKEND", "value": spec.distributed.backend})
    # One store access a pod: the output's, which also reaches an s3:// or oci:// teacher
    # (the teacher ModelTraining publishes where its students do); an output on a claim or
    # the node leaves the access to the teacher's store.
    store_uri = spec.output.uri
    if spec.output.scheme not in ("s3", "oci") and teacher is not None:
        store_uri = teacher.uri
    access = pod_access(spec.output.access, store_uri)
    env += access.env
    volumes += access.volumes
    mounts += access.mounts
    container: dict[str, Any] = {
        "name": "trainer",
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": _command(spec, run, training.namespace),
        "args": trainer_args(spec, run, teacher),
        "env": env,
        "volumeMounts": mounts,
        **({"envFrom": access.env_from} if access.env_from else {}),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if resources := _resources(spec):
        container["resources"] = resources
    if spec.distributed.is_distributed:
        container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.trainer_service_account,
        "containers": [container],
        "volumes": volumes,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.placement.affinity:
        pod_spec["affinity"] = dict(spec.placement.affinity)
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.run_policy.backoff_limit,
        # Kueue admits a queued Job by unsuspending it; until then it must not start.
        "suspend": spec.run_policy.suspend or bool(spec.queue_name),
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"operator": "In", "values": [BAD_INPUT_EXIT_CODE]},
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if spec.run_policy.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.run_policy.active_deadline_seconds
    if spec.run_policy.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.run_policy.ttl_seconds_after_finished
    if spec.distributed.is_distributed:
        workers = spec.distributed.workers
        job_spec |= {"completionMode": "Indexed", "completions": workers, "parallelism": workers}
        pod_spec["subdomain"] = run.service_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": run.job_name, "namespace": training.namespace, "labels": job_labels},
        "spec": job_spec,
    }


def build_rendezvous_service(training: ModelTraining, run: TrainingRun) -> dict[str, Any]:
    """The headless Service that gives each worker of an Indexed Job a stable DNS name."""
    labels = owner_labels(training, run)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": run.service_name, "namespace": training.namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {TRAINING_LABEL: training.name, RUN_LABEL: run.run_id},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
        },
    }


def build_trainer_rbac(namespace: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding for trainers in a namespace: get and patch pods
    (the progress channel). RBAC cannot name a pod that does not exist yet; the chart's
    ValidatingAdmissionPolicy (templates/trainer-policy.yaml) narrows the patch to the
    progress annotation of the trainer's own pod."""
    name = settings.trainer_service_account
    meta = {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]
