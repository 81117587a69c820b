"""The trainer's flag checks, device and backend choice, and termination message shaping:
pure tables, no torch training and no processes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fogline.workloads.trainer import termination
from fogline.workloads.trainer.config import TrainingConfig, normalize_digest, validate
from fogline.workloads.trainer.distributed import (
    launch_from_environment,
    select_backend,
    select_device,
)
from fogline.workloads.trainer.errors import TrainerError

pytestmark = pytest.mark.unit

BASE = TrainingConfig(model="mlp", dataset="builtin:digits", output=Path("out"))


@pytest.mark.parametrize(
    ("changes", "reason", "flag"),
    [
        ({"model": "resnet"}, "UnknownArchitecture", "--model"),
        ({"model": "pkg.mod:"}, "UnknownArchitecture", "--model"),
        ({"epochs": 0}, "InvalidArgument", "--epochs"),
        ({"epochs": 10001}, "InvalidArgument", "--epochs"),
        ({"batch_size": 0}, "InvalidArgument", "--batch-size"),
        ({"learning_rate": 0.0}, "InvalidArgument", "--lr"),
        ({"learning_rate": 11.0}, "InvalidArgument", "--lr"),
        ({"seed": -1}, "InvalidArgument", "--seed"),
        ({"validation_split": 0.01}, "InvalidArgument", "--validation-split"),
        ({"train_fraction": 0.0}, "InvalidArgument", "--train-fraction"),
        ({"train_fraction": 1.5}, "InvalidArgument", "--train-fraction"),
        ({"opset": 12}, "InvalidArgument", "--opset"),
        ({"prune": 0.95}, "InvalidArgument", "--prune"),
        ({"export_formats": ()}, "InvalidArgument", "--export"),
        ({"export_formats": ("onnx", "onnx")}, "InvalidArgument", "--export"),
        ({"export_formats": ("tflite",)}, "InvalidArgument", "--export"),
        ({"export_formats": ("torchscript",), "quantize": "int8"}, "InvalidArgument", "--quantize"),
        ({"threads": 0}, "InvalidArgument", "--threads"),
    ],
)
def test_invalid_configuration_names_the_flag(
    changes: dict[str, object], reason: str, flag: str
) -> None:
    with pytest.raises(TrainerError) as raised:
        validate(replace(BASE, **changes))  # type: ignore[arg-type]
    assert raised.value.reason == reason
    assert raised.value.message.startswith(flag)
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"model": "my_pkg.models:build"},
        {"epochs": 10000, "batch_size": 65536, "learning_rate": 10.0, "opset": 21},
        {"export_formats": ("onnx", "torchscript"), "quantize": "int8", "prune": 0.9},
    ],
)
def test_valid_configuration_passes(changes: dict[str, object]) -> None:
    validate(replace(BASE, **changes))  # type: ignore[arg-type]


def test_checkpoint_fingerprint_ignores_the_epoch_count_only() -> None:
    assert BASE.checkpoint_fingerprint() == replace(BASE, epochs=50).checkpoint_fingerprint()
    assert BASE.checkpoint_fingerprint() != replace(BASE, seed=1).checkpoint_fingerprint()
    limited = replace(BASE, train_fraction=0.1)
    assert BASE.checkpoint_fingerprint() != limited.checkpoint_fingerprint()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("sha256:" + "AB" * 32, "sha256:" + "ab" * 32), ("cd" * 32, "sha256:" + "cd" * 32)],
)
def test_digest_is_normalized(value: str, expected: str) -> None:
    assert normalize_digest(value) == expected


@pytest.mark.parametrize("value", ["sha256:abc", "md5:" + "a" * 32, ""])
def test_malformed_digest_is_refused(value: str) -> None:
    with pytest.raises(TrainerError, match="--dataset-digest"):
        normalize_digest(value)


@pytest.mark.parametrize(
    ("requested", "gpus", "local_rank", "expected"),
    [
        ("auto", 0, 0, "cpu"),
        ("auto", 2, 1, "cuda:1"),
        ("auto", 2, 3, "cuda:1"),
        ("cpu", 4, 0, "cpu"),
        ("cuda", 1, 0, "cuda:0"),
    ],
)
def test_device_follows_the_request_and_the_local_rank(
    requested: str, gpus: int, local_rank: int, expected: str
) -> None:
    assert select_device(requested, gpus, local_rank) == expected


def test_asking_for_cuda_without_a_gpu_is_a_runtime_failure() -> None:
    with pytest.raises(TrainerError) as raised:
        select_device("cuda", 0, 0)
    assert raised.value.reason == "DeviceUnavailable"
    assert raised.value.exit_code == 1


@pytest.mark.parametrize(("device", "backend"), [("cpu", "gloo"), ("cuda:0", "nccl")])
def test_backend_is_gloo_on_cpu_and_nccl_on_gpu(device: str, backend: str) -> None:
    assert select_backend(device) == backend


@pytest.mark.parametrize(
    ("device", "requested", "backend"),
    [
        ("cpu", "gloo", "gloo"),
        ("cuda:0", "gloo", "gloo"),
        ("cuda:1", "nccl", "nccl"),
        ("cpu", "", "gloo"),
    ],
)
def test_the_requested_backend_wins(device: str, requested: str, backend: str) -> None:
    assert select_backend(device, requested) == backend


@pytest.mark.parametrize(
    ("device", "requested", "reason"),
    [("cpu", "nccl", "NoGpuForNccl"), ("cpu", "mpi", "InvalidArgument")],
)
def test_an_impossible_backend_is_a_clear_error(device: str, requested: str, reason: str) -> None:
    with pytest.raises(TrainerError) as raised:
        select_backend(device, requested)
    assert raised.value.reason == reason


def test_launch_reads_torchrun_environment() -> None:
    launch = launch_from_environment({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (launch.rank, launch.local_rank, launch.world_size) == (3, 1, 4)
    assert launch.is_distributed and not launch.is_primary
    alone = launch_from_environment({})
    assert alone.is_primary and not alone.is_distributed


def test_long_failure_message_is_cut_to_the_kubelet_limit() -> None:
    data = termination.encode(termination.failure_message("DatasetInvalid", "x" * 10000))
    assert len(data) <= termination.MAX_BYTES
    message = json.loads(data)
    assert message["reason"] == "DatasetInvalid"
    assert message["message"].endswith("...")


@pytest.mark.parametrize(
    ("flag", "env", "expected", "explicit"),
    [
        ("/a", {"FOGLINE_TERMINATION_LOG": "/b"}, "/a", True),
        (None, {"FOGLINE_TERMINATION_LOG": "/b"}, "/b", True),
        (None, {}, "/dev/termination-log", False),
    ],
)
def test_termination_path_prefers_flag_then_environment(
    flag: str | None, env: dict[str, str], expected: str, explicit: bool
) -> None:
    assert termination.resolve_path(flag, env) == (Path(expected), explicit)


def test_unwritable_default_termination_log_is_skipped(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "termination-log"
    assert not termination.write_message(missing, False, {"phase": "Failed"})
    assert not missing.exists()


def test_unwritable_explicit_termination_log_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(TrainerError) as raised:
        termination.write_message(blocker / "log", True, {"phase": "Failed"})
    assert raised.value.reason == "TerminationLogNotWritable"
    with pytest.raises(TrainerError):
        termination.check_writable(blocker / "log")


def test_termination_message_refuses_non_finite_numbers() -> None:
    with pytest.raises(ValueError):
        termination.encode({"phase": "Succeeded", "metrics": {"loss": float("nan")}})
