"""The trainer as a real process on the digits: accuracy, ONNX versus torch, INT8 size and
accuracy, the manifest and termination message contracts, and one clear line for bad input."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fogline.workloads.manifest import verify_artifact
from fogline.workloads.trainer.datasets import load_dataset, split_dataset
from tests.workloads.conftest import TrainerRun, TrainerRunner

pytestmark = [pytest.mark.workloads]

EPOCHS = 12


@pytest.fixture(scope="module")
def digits_run(
    tmp_path_factory: pytest.TempPathFactory, trainer_runner: TrainerRunner
) -> TrainerRun:
    """One full run shared by the tests below: MLP 256 wide, ONNX + TorchScript, INT8."""
    output = tmp_path_factory.mktemp("digits") / "artifact"
    run = trainer_runner(
        output,
        "--model",
        "mlp",
        "--hidden-units",
        "256",
        "--dataset",
        "builtin:digits",
        "--epochs",
        str(EPOCHS),
        "--seed",
        "7",
        "--export",
        "onnx,torchscript",
        "--quantize",
        "int8",
        "--artifact-uri",
        "pvc://models/digits/run-1",
    )
    assert run.returncode == 0, run.stderr
    return run


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    split = split_dataset(load_dataset("builtin:digits"), 0.2, seed=7)
    return split.validation_features, split.validation_labels


def sha256_hex(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def onnx_logits(path: Path, features: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {"input": features.astype(np.float32)})[0]
    return result


def test_mlp_on_digits_reaches_95_percent_held_out_accuracy(digits_run: TrainerRun) -> None:
    assert digits_run.manifest["metrics"]["accuracy"] >= 0.95
    assert digits_run.termination["metrics"]["accuracy"] >= 0.95


def test_float_accuracy_is_what_onnx_runtime_measures_on_the_held_out_split(
    digits_run: TrainerRun, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = held_out
    logits = onnx_logits(digits_run.output / "model.onnx", features)
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    assert accuracy == pytest.approx(digits_run.manifest["metrics"]["accuracy"], abs=1e-6)


def test_onnx_output_matches_torch_output_on_the_same_inputs(
    digits_run: TrainerRun, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    features, _ = held_out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        scripted = torch.jit.load(str(digits_run.output / "model.pt"))
    with torch.no_grad():
        expected = scripted(torch.as_tensor(features)).numpy()
    actual = onnx_logits(digits_run.output / "model.onnx", features)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_onnx_model_takes_any_batch_size(digits_run: TrainerRun) -> None:
    rows = np.random.default_rng(0).uniform(0, 16, size=(7, 64)).astype(np.float32)
    for name in ("model.onnx", "model.int8.onnx"):
        path = digits_run.output / name
        assert onnx_logits(path, rows[:1]).shape == (1, 10)
        assert onnx_logits(path, rows).shape == (7, 10)


def test_int8_model_is_at_least_twice_smaller_and_within_two_points(
    digits_run: TrainerRun,
) -> None:
    files = digits_run.manifest["files"]
    assert files["model.onnx"]["sizeBytes"] >= 2 * files["model.int8.onnx"]["sizeBytes"]
    metrics = digits_run.manifest["metrics"]
    assert abs(metrics["accuracy"] - metrics["accuracy_int8"]) <= 0.02


def test_manifest_records_every_file_with_its_sha256_and_size(digits_run: TrainerRun) -> None:
    files = digits_run.manifest["files"]
    assert set(files) == {"model.onnx", "model.int8.onnx", "model.pt"}
    for name, record in files.items():
        path = digits_run.output / name
        assert record == {"sha256": sha256_hex(path), "sizeBytes": path.stat().st_size}
    on_disk = {p.name for p in digits_run.output.iterdir() if p.is_file()}
    assert on_disk == set(files) | {"manifest.json"}


def test_manifest_describes_serving_signature_versions_and_run(digits_run: TrainerRun) -> None:
    manifest = digits_run.manifest
    assert manifest["formatVersion"] == 1
    assert manifest["name"] == "mlp"
    assert manifest["createdAt"].endswith("Z")
    assert manifest["serving"] == {
        "file": "model.int8.onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert manifest["quantized"] is True
    assert manifest["evaluation"] == {
        "metric": "accuracy",
        "value": manifest["metrics"]["accuracy_int8"],
    }
    assert manifest["hyperparameters"]["epochs"] == EPOCHS
    assert manifest["hyperparameters"]["hiddenUnits"] == 256
    assert manifest["dataset"]["uri"] == "builtin:digits"
    assert manifest["dataset"]["samples"] == 1797
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime", "python"}


def test_artifact_digest_is_sha256_of_the_canonical_manifest(digits_run: TrainerRun) -> None:
    artifact = digits_run.termination["artifact"]
    manifest_path = digits_run.output / "manifest.json"
    assert artifact["digest"] == f"sha256:{sha256_hex(manifest_path)}"
    assert artifact["digest"] == verify_artifact(digits_run.output).digest
    files = digits_run.manifest["files"]
    assert artifact["sizeBytes"] == sum(entry["sizeBytes"] for entry in files.values())


def test_termination_message_follows_the_contract(digits_run: TrainerRun) -> None:
    raw = digits_run.termination_log.read_bytes()
    assert len(raw) <= 4096
    message: dict[str, Any] = json.loads(raw)
    assert message["phase"] == "Succeeded"
    assert message["epochs"] == EPOCHS
    assert message["artifact"] == {
        "uri": "pvc://models/digits/run-1",
        "digest": message["artifact"]["digest"],
        "format": "onnx",
        "sizeBytes": message["artifact"]["sizeBytes"],
        "quantized": True,
    }
    assert message["evaluation"] == digits_run.manifest["evaluation"]
    assert {"accuracy", "loss", "accuracy_int8"} <= set(message["metrics"])


def test_one_readable_log_line_per_epoch_and_a_quiet_stderr(digits_run: TrainerRun) -> None:
    lines = digits_run.epoch_lines()
    assert [line.split(" epoch ")[1].split()[0] for line in lines] == [
        f"{n}/{EPOCHS}" for n in range(1, EPOCHS + 1)
    ]
    assert all("accuracy" in line and "samples/s" in line for line in lines)
    assert "Traceback" not in digits_run.stderr
    assert "warn" not in digits_run.stderr.lower(), digits_run.stderr


@pytest.mark.slow
def test_same_seed_gives_the_same_weights(tmp_path: Path, trainer_runner: TrainerRunner) -> None:
    flags = ["--model", "mlp", "--hidden-units", "32", "--dataset", "builtin:digits"]
    flags += ["--epochs", "2", "--seed", "3", "--export", "torchscript"]
    first = trainer_runner(tmp_path / "a", *flags)
    second = trainer_runner(tmp_path / "b", *flags)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    state = [
        torch.load(run.output / "checkpoints" / "epoch-00002.pt", weights_only=True)["model"]
        for run in (first, second)
    ]
    for name, tensor in state[0].items():
        assert torch.equal(tensor, state[1][name]), name
    assert first.manifest["metrics"] == second.manifest["metrics"]


def write_npz(path: Path, features: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, x=features, y=labels)
    return path


BAD_INPUTS = [
    pytest.param(["--dataset", "missing.npz"], "DatasetNotFound", 2, id="missing-dataset"),
    pytest.param(["--model", "transformer"], "UnknownArchitecture", 2, id="unknown-architecture"),
    pytest.param(["--model", "no_such_module:build"], "EntrypointNotFound", 2, id="bad-entrypoint"),
    pytest.param(["--epochs", "0"], "InvalidArgument", 2, id="zero-epochs"),
    pytest.param(["--lr", "-1"], "InvalidArgument", 2, id="negative-lr"),
    pytest.param(["--batch-size", "0"], "InvalidArgument", 2, id="zero-batch"),
    pytest.param(["--validation-split", "0.9"], "InvalidArgument", 2, id="split-too-large"),
    pytest.param(["--epochs", "ten"], "InvalidArgument", 2, id="epochs-not-a-number"),
    pytest.param(
        ["--quantize", "int8", "--export", "torchscript"],
        "InvalidArgument",
        2,
        id="int8-without-onnx",
    ),
    pytest.param(
        ["--dataset", "data.npz", "--dataset-digest", "sha256:" + "0" * 64],
        "DatasetDigestMismatch",
        2,
        id="digest-mismatch",
    ),
    pytest.param(
        ["--dataset", "https://example.invalid/d.npz"],
        "DatasetDigestRequired",
        2,
        id="http-without-digest",
    ),
    pytest.param(["--dataset", "broken.csv"], "DatasetInvalid", 2, id="non-numeric-csv"),
    pytest.param(
        ["--dataset", "data.npz", "--model", "cnn"],
        "ArchitectureMismatch",
        2,
        id="cnn-on-non-square-rows",
    ),
]


@pytest.mark.parametrize(("flags", "reason", "code"), BAD_INPUTS)
def test_bad_input_exits_non_zero_with_one_clear_line(
    tmp_path: Path, trainer_runner: TrainerRunner, flags: list[str], reason: str, code: int
) -> None:
    rng = np.random.default_rng(0)
    write_npz(tmp_path / "data.npz", rng.normal(size=(20, 5)), rng.integers(0, 2, size=20))
    (tmp_path / "broken.csv").write_text("a,b,label\n1,2,0\n3,x,1\n")
    defaults = ["--model", "mlp", "--dataset", "builtin:digits", "--epochs", "1"]
    run = trainer_runner(tmp_path / "out", *defaults, *flags)
    assert run.returncode == code
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "Traceback" not in run.stdout
    assert run.termination == {
        "phase": "Failed",
        "reason": reason,
        "message": lines[0].removeprefix("error: "),
    }
    assert not (tmp_path / "out" / "manifest.json").exists()
