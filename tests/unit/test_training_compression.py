"""spec.export.compression and spec.export.budget on their way through the operator: the
trainer's flags, the run fingerprint (the threshold becomes the accuracy floor), the table
from the termination message into status.compression, and `fogline status` showing it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from fogline import status as status_cli
from fogline.api.modeltraining import ModelTraining, ModelTrainingStatus
from fogline.settings import OperatorSettings
from fogline.training.jobs import (
    TeacherArtifact,
    build_training_job,
    plan_run,
    run_fingerprint,
    teacher_of,
    trainer_args,
)
from fogline.training.observe import observe_training

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
DIGEST = "sha256:" + "cd" * 32
TABLE = {
    "chosen": "int8-static",
    "budget": {"batchSize": 64, "threads": 1, "maxSizeBytes": 100000, "minAccuracy": 0.9},
    "candidates": [
        {
            "method": "float32",
            "file": "model.onnx",
            "sizeBytes": 290166,
            "accuracy": 0.9694,
            "latencyMs": 0.37,
            "chosen": False,
            "reason": "size 290,166 B exceeds maxSizeBytes 100,000",
        },
        {
            "method": "int8-static",
            "file": "model.int8-static.onnx",
            "sizeBytes": 80047,
            "accuracy": 0.9721,
            "latencyMs": 0.305,
            "chosen": True,
            "reason": "chosen: the smallest within the budget and the gate",
        },
    ],
}


def training(export: dict[str, Any] | None = None, threshold: float = 0.9) -> ModelTraining:
    spec: dict[str, Any] = {
        "model": {"architecture": "cnn"},
        "dataset": {"uri": "builtin:digits"},
        "output": {"uri": "pvc://models/runs"},
        "evaluation": {"threshold": threshold},
        "export": export or {},
    }
    return ModelTraining.from_body(
        {"metadata": {"name": "digits", "namespace": "ml", "generation": 2}, "spec": spec}
    )


COMPRESSED = {
    "compression": {"methods": ["int8-static", "weight-sharing"], "perChannel": True},
    "budget": {"maxSizeBytes": 100000, "maxLatencyMs": 2.5, "batchSize": 64, "threads": 2},
}


def test_compression_and_budget_become_trainer_flags_with_the_gate_as_floor() -> None:
    t = training(COMPRESSED, threshold=0.95)
    args = trainer_args(t.spec, plan_run(t))
    assert args[-11:] == [
        "--compress=int8-static,weight-sharing",
        "--calibration-samples=256",
        "--sharing-bits=4",
        "--structured-amount=0.5",
        "--finetune-epochs=2",
        "--min-accuracy=0.95",
        "--per-channel",
        "--max-size-bytes=100000",
        "--max-latency-ms=2.5",
        "--latency-batch-size=64",
        "--latency-threads=2",
    ]


def test_no_compression_adds_no_flags() -> None:
    t = training()
    assert not any(
        a.startswith(("--compress", "--min-accuracy")) for a in trainer_args(t.spec, plan_run(t))
    )


def test_with_compression_moving_the_threshold_starts_a_new_run() -> None:
    # The threshold decides which candidate is served, so it is part of the run.
    assert run_fingerprint(training(COMPRESSED, 0.9).spec) != run_fingerprint(
        training(COMPRESSED, 0.95).spec
    )
    assert run_fingerprint(training(None, 0.9).spec) == run_fingerprint(training(None, 0.95).spec)


def _finished(summary: dict[str, Any]) -> dict[str, Any]:
    t = training(COMPRESSED)
    job = {
        "metadata": {"name": "j"},
        "spec": {},
        "status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1},
    }
    pod = {
        "metadata": {"creationTimestamp": "2026-12-01T09:00:00Z", "annotations": {}},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": 0, "message": json.dumps(summary)}}}
            ],
        },
    }
    return observe_training(t, plan_run(t), job, [pod], NOW).status


def test_the_candidates_table_reaches_status_and_parses_as_typed_status() -> None:
    summary = {
        "phase": "Succeeded",
        "metrics": {"accuracy": 0.9694, "accuracy_int8_static": 0.9721},
        "evaluation": {"metric": "accuracy", "value": 0.9721},
        "artifact": {
            "uri": "pvc://models/runs/digits/x",
            "digest": DIGEST,
            "sizeBytes": 80047,
            "quantized": True,
        },
        "compression": TABLE,
    }
    status = _finished(summary)
    assert status["phase"] == "Succeeded" and status["compression"] == TABLE
    typed = ModelTrainingStatus.from_dict(status)
    assert typed.compression is not None and typed.compression.chosen == "int8-static"
    assert typed.compression.candidates is not None
    assert [c.size_bytes for c in typed.compression.candidates] == [290166, 80047]


def test_a_run_without_compression_clears_an_old_table() -> None:
    summary = {
        "phase": "Succeeded",
        "evaluation": {"metric": "accuracy", "value": 0.97},
        "artifact": {"digest": DIGEST},
    }
    status = _finished(summary)
    assert "compression" in status and status["compression"] is None


def test_fogline_status_shows_every_candidate_and_the_chosen_one() -> None:
    obj = {
        "metadata": {
            "name": "digits",
            "namespace": "ml",
            "creationTimestamp": "2026-12-01T09:00:00Z",
        },
        "status": {
            "phase": "Succeeded",
            "compression": TABLE,
            "artifact": {"digest": DIGEST, "metric": {"name": "accuracy", "value": 0.9721}},
        },
    }
    console = Console(record=True, width=220, color_system=None)
    console.print(status_cli.render([obj], [], NOW, "in namespace ml", False))
    text = console.export_text()
    assert (
        "Compression of ml/digits (batch 64, 1 thread(s); size <= 100,000 B; accuracy >= 0.9)"
        in text
    )
    lines = {
        line.split()[1]: line
        for line in text.splitlines()
        if line.startswith("│ ") and "B " in line
    }
    assert "290,166 B" in lines["float32"] and " no " in lines["float32"]
    assert "exceeds maxSizeBytes" in lines["float32"]
    assert "80,047 B" in lines["int8-static"] and "0.9721" in lines["int8-static"]
    assert "0.305 ms" in lines["int8-static"] and " yes " in lines["int8-static"]
    summary = status_cli.as_json([obj], [], NOW)["modelTrainings"][0]
    assert summary["compression"]["chosen"] == "int8-static"


# --- spec.distillation --------------------------------------------------------------------

TEACHER_DIGEST = "sha256:" + "ef" * 32


def distilled(teacher: dict[str, Any]) -> ModelTraining:
    body = {
        "metadata": {"name": "student", "namespace": "ml", "generation": 1},
        "spec": {
            "model": {"architecture": "mlp", "hiddenUnits": 16},
            "dataset": {"uri": "builtin:digits"},
            "output": {"uri": "pvc://models/runs"},
            "distillation": {"teacher": teacher, "temperature": 3, "weight": 0.6},
        },
    }
    return ModelTraining.from_body(body)


def test_a_teacher_uri_becomes_flags_and_a_read_only_mount_of_its_claim() -> None:
    t = distilled({"uri": "pvc://teachers/digits-cnn/ab12", "digest": TEACHER_DIGEST})
    teacher = teacher_of(t.spec, None)
    assert teacher == TeacherArtifact("pvc://teachers/digits-cnn/ab12", TEACHER_DIGEST)
    job = build_training_job(t, plan_run(t), OperatorSettings(), teacher)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-4:] == [
        "--teacher=pvc://teachers/digits-cnn/ab12",
        f"--teacher-digest={TEACHER_DIGEST}",
        "--distill-temperature=3.0",
        "--distill-weight=0.6",
    ]
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models": False, "teachers": True}


def test_a_teacher_training_teaches_only_once_it_has_published_an_artifact() -> None:
    t = distilled({"fromTraining": "digits-cnn"})
    assert teacher_of(t.spec, None) is None  # the controller waits: TeacherNotReady
    published = TeacherArtifact("file:///var/lib/fogline/digits-cnn/ab12", TEACHER_DIGEST)
    assert teacher_of(t.spec, published) == published
    job = build_training_job(t, plan_run(t), OperatorSettings(), published)
    pod = job["spec"]["template"]["spec"]
    assert {"name": "teacher", "hostPath": {"path": "/var/lib/fogline/digits-cnn/ab12"}} in pod[
        "volumes"
    ]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "teacher")
    assert mount == {
        "name": "teacher",
        "mountPath": "/var/lib/fogline/digits-cnn/ab12",
        "readOnly": True,
    }
    assert "--teacher=file:///var/lib/fogline/digits-cnn/ab12" in pod["containers"][0]["args"]


def test_a_teacher_in_a_store_is_reached_with_the_output_access_and_mounts_nothing() -> None:
    t = ModelTraining.from_body(
        {
            "metadata": {"name": "student", "namespace": "ml", "generation": 1},
            "spec": {
                "model": {"architecture": "mlp"},
                "dataset": {"uri": "builtin:digits"},
                "output": {
                    "uri": "pvc://models/runs",
                    "access": {"endpoint": "https://s3.lab:9000", "credentialsSecret": "store"},
                },
                "distillation": {"teacher": {"fromTraining": "digits-cnn"}},
            },
        }
    )
    published = TeacherArtifact("s3://models/trainings/digits-cnn/ab12", TEACHER_DIGEST)
    pod = build_training_job(t, plan_run(t), OperatorSettings(), published)["spec"]["template"][
        "spec"
    ]
    container = pod["containers"][0]
    assert "--teacher=s3://models/trainings/digits-cnn/ab12" in container["args"]
    assert {"name": "AWS_ENDPOINT_URL", "value": "https://s3.lab:9000"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "store"}}]
    assert not any(v["name"] == "teacher" for v in pod["volumes"])
    claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert [v["persistentVolumeClaim"]["claimName"] for v in claims] == ["models"]


def test_no_distillation_no_teacher_flags() -> None:
    t = training()
    assert teacher_of(t.spec, TeacherArtifact("pvc://a/b", TEACHER_DIGEST)) is None
    assert not any(a.startswith("--teacher") for a in trainer_args(t.spec, plan_run(t)))
