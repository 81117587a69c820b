"""The trainer's rooms in process with real torch, ONNX and onnxruntime: http datasets from a
loopback server, CNN export against torch, pruning that survives export, INT8 quantization."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fogline.workloads.trainer.architectures import build_model
from fogline.workloads.trainer.datasets import load_dataset
from fogline.workloads.trainer.errors import TrainerError
from fogline.workloads.trainer.evaluation import onnx_signature, run_onnx
from fogline.workloads.trainer.export import export_onnx, pruned_copy, quantize_int8

pytestmark = [pytest.mark.workloads]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""


@pytest.fixture
def dataset_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    handler = partial(QuietHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def digits_rows() -> np.ndarray:
    return load_dataset("builtin:digits").features[:300]


def test_http_dataset_is_downloaded_and_checked_against_its_digest(
    dataset_server: tuple[str, Path],
) -> None:
    base, folder = dataset_server
    np.savez(folder / "d.npz", x=np.arange(12.0).reshape(6, 2), y=np.array([0, 1] * 3))
    digest = "sha256:" + hashlib.sha256((folder / "d.npz").read_bytes()).hexdigest()
    dataset = load_dataset(f"{base}/d.npz", digest=digest, download_dir=folder)
    assert dataset.digest == digest and dataset.features.shape == (6, 2)
    with pytest.raises(TrainerError) as mismatch:
        load_dataset(f"{base}/d.npz", digest="sha256:" + "1" * 64, download_dir=folder)
    assert mismatch.value.reason == "DatasetDigestMismatch"
    assert sorted(p.name for p in folder.iterdir()) == ["d.npz"]  # no download left behind


def test_missing_http_dataset_is_not_found(dataset_server: tuple[str, Path]) -> None:
    base, _ = dataset_server
    with pytest.raises(TrainerError) as raised:
        load_dataset(f"{base}/gone.csv", digest="sha256:" + "1" * 64)
    assert raised.value.reason == "DatasetNotFound"


def test_cnn_exports_to_onnx_that_matches_torch(tmp_path: Path, digits_rows: np.ndarray) -> None:
    torch.manual_seed(0)
    model = build_model("cnn", digits_rows, classes=10, hidden_units=32).eval()
    path = tmp_path / "cnn.onnx"
    export_onnx(model, torch.as_tensor(digits_rows[:2]), path, opset=17)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    with torch.no_grad():
        expected = model(torch.as_tensor(digits_rows)).numpy()
    np.testing.assert_allclose(run_onnx(path, digits_rows), expected, rtol=1e-4, atol=1e-4)
    inputs, outputs = onnx_signature(path)
    assert inputs == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert outputs == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]


def test_pruning_is_permanent_and_survives_export_and_quantization(
    tmp_path: Path, digits_rows: np.ndarray
) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", digits_rows, classes=10, hidden_units=64)
    pruned, sparsity = pruned_copy(model, 0.5)
    assert sparsity == pytest.approx(0.5, abs=0.01)
    assert not any(name.endswith("_orig") for name, _ in pruned.named_parameters())
    assert all((p != 0).all() for p in model.parameters() if p.dim() > 1)  # original untouched
    path = tmp_path / "pruned.onnx"
    export_onnx(pruned, torch.as_tensor(digits_rows[:2]), path, opset=18)
    weights = [
        onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.dims
    ]
    matrices = [w for w in weights if w.ndim == 2]
    zeros = sum(int((w == 0).sum()) for w in matrices) / sum(w.size for w in matrices)
    assert zeros == pytest.approx(sparsity, abs=0.01)
    quantize_int8(path, tmp_path / "pruned.int8.onnx")
    assert run_onnx(tmp_path / "pruned.int8.onnx", digits_rows).shape == (300, 10)
