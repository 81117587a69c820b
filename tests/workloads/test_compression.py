"""Each compression method as a real transformation of a trained model's ONNX file, checked
for being what it claims (QDQ pairs that run as QLinearConv, float16 initializers, at most
2^k values per shared tensor, fewer parameters), and the trainer as a real process choosing
among them by the edge budget, with the chosen file served by the real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from fogline.workloads.trainer.architectures import build_model
from fogline.workloads.trainer.compression import float16, quantization, sharing, structured
from fogline.workloads.trainer.compression.finetune import finetune
from fogline.workloads.trainer.compression.measure import MIN_RUNS, latency_p50_ms
from fogline.workloads.trainer.datasets import Split, load_dataset, split_dataset
from fogline.workloads.trainer.errors import TrainerError
from fogline.workloads.trainer.evaluation import evaluate_onnx, run_onnx
from fogline.workloads.trainer.export import export_onnx
from tests.workloads.conftest import TrainerRun, TrainerRunner
from tests.workloads.test_server import infer, start_server, wait_ready

pytestmark = [pytest.mark.workloads]


@pytest.fixture(scope="module")
def split() -> Split:
    return split_dataset(load_dataset("builtin:digits"), 0.2, seed=0)


def _trained(name: str, split: Split, hidden: int) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, split.train_features, 10, hidden)
    return finetune(model, split, epochs=3, batch_size=64, learning_rate=2e-3, seed=0)


@pytest.fixture(scope="module")
def cnn(split: Split, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = _trained("cnn", split, 32)
    path = tmp_path_factory.mktemp("cnn") / "model.onnx"
    export_onnx(model, torch.as_tensor(split.validation_features[:2]), path, opset=17)
    return model, path


@pytest.fixture(scope="module")
def mlp(split: Split, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = _trained("mlp", split, 64)
    path = tmp_path_factory.mktemp("mlp") / "model.onnx"
    export_onnx(model, torch.as_tensor(split.validation_features[:2]), path, opset=17)
    return model, path


def _ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _optimized_ops(path: Path, folder: Path) -> list[str]:
    """The operators ONNX Runtime actually runs, after its graph optimizations."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _ops(Path(options.optimized_model_filepath))


def _accuracy(path: Path, split: Split) -> float:
    return evaluate_onnx(path, split.validation_features, split.validation_labels).accuracy


def test_static_int8_cnn_is_qdq_and_runs_its_convolutions_as_qlinearconv(
    cnn: tuple[nn.Module, Path], split: Split, tmp_path: Path
) -> None:
    _, source = cnn
    target = tmp_path / "model.int8-static.onnx"
    quantization.quantize_static_int8(source, target, split.train_features[:128])
    graph = onnx.load(str(target)).graph
    produced_by = {out: node.op_type for node in graph.node for out in node.output}
    first, second = [node for node in graph.node if node.op_type == "Conv"]
    # The 16 -> 32 convolution gets its activation and its weight through QDQ pairs ...
    assert produced_by[second.input[0]] == "DequantizeLinear"
    assert produced_by[second.input[1]] == "DequantizeLinear"
    # ... the 1 -> 16 one sums 9 products per output, too few for int8 kernels: float.
    assert produced_by.get(first.input[1]) is None  # an initializer, not a dequantized one
    assert quantization.short_convolutions(onnx.load(str(source))) == [first.name]
    ops = _optimized_ops(target, tmp_path)
    assert ops.count("QLinearConv") == 1 and ops.count("QGemm") == 2
    # A 32-wide head: the graph's fixed overhead weighs more here than in the bench's CNN.
    assert source.stat().st_size >= 3 * target.stat().st_size
    assert _accuracy(target, split) >= _accuracy(source, split) - 0.02


def test_per_channel_static_int8_has_one_weight_scale_per_output_channel(
    cnn: tuple[nn.Module, Path], split: Split, tmp_path: Path
) -> None:
    _, source = cnn
    target = tmp_path / "per-channel.onnx"
    quantization.quantize_static_int8(source, target, split.train_features[:128], per_channel=True)
    graph = onnx.load(str(target)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    produced_by = {out: node for node in graph.node for out in node.output}
    scales = [
        initializers[produced_by[conv.input[1]].input[1]].shape
        for conv in graph.node
        if conv.op_type == "Conv" and conv.input[1] in produced_by
    ]
    assert scales == [(32,)]  # the second convolution's; the first one stays float


def test_float16_has_half_initializers_and_keeps_float32_inputs_and_outputs(
    cnn: tuple[nn.Module, Path], split: Split, tmp_path: Path
) -> None:
    _, source = cnn
    target = tmp_path / "model.fp16.onnx"
    float16.convert_float16(source, target)
    model = onnx.load(str(target))
    kinds = {t.data_type for t in model.graph.initializer if len(t.dims) > 1}
    assert kinds == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    rows = split.validation_features[:64]
    np.testing.assert_allclose(run_onnx(target, rows), run_onnx(source, rows), atol=0.05)
    assert source.stat().st_size >= 1.9 * target.stat().st_size
    half_io = tmp_path / "half-io.onnx"
    float16.convert_float16(source, half_io, keep_io_types=False)
    assert onnx.load(str(half_io)).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16


def test_weight_sharing_keeps_2_to_the_k_values_fine_tunes_and_really_shrinks(
    cnn: tuple[nn.Module, Path], split: Split, tmp_path: Path
) -> None:
    model, source = cnn
    shared_model, shared = sharing.share_weights(model, bits=4)
    assert len(shared) == 2  # the second convolution and the hidden Linear (the rest are small)
    before = [entry.codebook.detach().clone() for entry in shared]
    sharing.finetune_shared(
        shared_model, shared, split, epochs=1, batch_size=64, learning_rate=1e-3, seed=0
    )
    for entry, old in zip(shared, before, strict=True):
        assert not torch.equal(entry.codebook.detach(), old)  # the codebooks were trained
        assert len(torch.unique(entry.module.weight)) <= 16  # and stayed the only values
    exported, target = tmp_path / "shared.float.onnx", tmp_path / "model.shared.onnx"
    export_onnx(shared_model, torch.as_tensor(split.validation_features[:2]), exported, 17)
    assert sharing.store_shared(exported, target, bits=4) == 2
    sizes = sharing.codebook_sizes(target)
    assert len(sizes) == 2 and all(size <= 16 for size in sizes.values())
    with torch.no_grad():
        expected = shared_model(torch.as_tensor(split.validation_features)).numpy()
    np.testing.assert_allclose(run_onnx(target, split.validation_features), expected, atol=1e-4)
    # 4 bits of 32: 8x on the shared tensors; the small ones, biases and graph stay float.
    assert source.stat().st_size >= 4.5 * target.stat().st_size
    assert _accuracy(target, split) >= _accuracy(source, split) - 0.02


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_packed_indices_rebuild_the_exact_tensor_in_onnx_runtime(bits: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(bits)
    codebook = rng.standard_normal(2**bits).astype(np.float32)
    weight = codebook[rng.integers(0, 2**bits, size=(37, 41))]  # odd sizes: padding matters
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [37, 41])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [37, 41])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    source, target = tmp_path / "plain.onnx", tmp_path / "shared.onnx"
    onnx.save(model, str(source))
    assert sharing.store_shared(source, target, bits) == 1
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    rebuilt = session.run(None, {"x": np.zeros((37, 41), np.float32)})[0]
    np.testing.assert_array_equal(rebuilt, weight)
    stored = {t.name: t for t in onnx.load(str(target)).graph.initializer}
    assert "w" not in stored  # the float tensor is gone; packed indices and a codebook remain
    width = next(w for w in (1, 2, 4, 8) if w >= bits)
    packed = numpy_helper.to_array(stored["shared.packed"])
    assert packed.dtype == np.uint8 and packed.size == -(-37 * 41 // (8 // width))
    assert numpy_helper.to_array(stored["shared0.codebook"]).size <= 2**bits


def test_structured_pruning_removes_the_weakest_channels_and_neurons(
    cnn: tuple[nn.Module, Path], split: Split, tmp_path: Path
) -> None:
    model, source = cnn
    pruned = structured.prune_structured(model, 0.5)
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [8, 16]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(16 * 16, 16), (16, 10)]
    assert structured.parameter_count(pruned) < structured.parameter_count(model) / 3
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    norms = first.weight.detach().abs().reshape(16, -1).sum(dim=1)
    kept = convs[0].weight.detach().abs().reshape(8, -1).sum(dim=1)
    assert torch.equal(torch.sort(kept).values, torch.sort(norms).values[8:])  # the strongest 8
    finetune(pruned, split, epochs=1, batch_size=64, learning_rate=1e-3, seed=0)
    target = tmp_path / "model.structured.onnx"
    export_onnx(pruned, torch.as_tensor(split.validation_features[:2]), target, 17)
    elements = sum(int(np.prod(t.dims)) for t in onnx.load(str(target)).graph.initializer)
    assert (
        elements < sum(int(np.prod(t.dims)) for t in onnx.load(str(source)).graph.initializer) / 3
    )
    with torch.no_grad():
        expected = pruned(torch.as_tensor(split.validation_features)).numpy()
    np.testing.assert_allclose(run_onnx(target, split.validation_features), expected, atol=1e-4)


def test_structured_pruning_refuses_a_user_model() -> None:
    with pytest.raises(TrainerError) as refused:
        structured.prune_structured(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), 0.5)
    assert refused.value.reason == "InvalidArgument"
    assert "built-in mlp and cnn" in refused.value.message


def test_latency_is_a_median_over_at_least_the_minimum_runs(
    mlp: tuple[nn.Module, Path], split: Split
) -> None:
    _, path = mlp
    latency, runs = latency_p50_ms(path, split.validation_features, batch_size=3, threads=1)
    assert latency > 0 and runs >= MIN_RUNS


# --- the trainer choosing by the budget --------------------------------------------------------

METHODS = "int8-dynamic,int8-static,float16,weight-sharing,structured-pruning"


@pytest.fixture(scope="module")
def budget_run(
    tmp_path_factory: pytest.TempPathFactory, trainer_runner: TrainerRunner
) -> TrainerRun:
    """The MLP with every method; only weight sharing fits in 20 kB (INT8 is ~31 kB)."""
    output = tmp_path_factory.mktemp("budget") / "artifact"
    run = trainer_runner(
        output,
        "--model",
        "mlp",
        "--hidden-units",
        "128",
        "--dataset",
        "builtin:digits",
        "--epochs",
        "4",
        "--seed",
        "1",
        "--compress",
        METHODS,
        "--finetune-epochs",
        "1",
        "--max-size-bytes",
        "20000",
        "--latency-batch-size",
        "8",
        "--min-accuracy",
        "0.8",
    )
    assert run.returncode == 0, run.stderr
    return run


def test_a_budget_only_one_candidate_meets_serves_that_candidate(budget_run: TrainerRun) -> None:
    table = budget_run.manifest["compression"]
    rows = {row["method"]: row for row in table["candidates"]}
    assert list(rows) == ["float32", *METHODS.split(",")]
    fitting = [m for m, row in rows.items() if row["sizeBytes"] <= 20000 and row["accuracy"] >= 0.8]
    assert fitting == ["weight-sharing"] and table["chosen"] == "weight-sharing"
    assert rows["weight-sharing"]["chosen"] and rows["weight-sharing"]["details"]["bits"] == 4
    assert "exceeds maxSizeBytes 20,000" in rows["int8-static"]["reason"]
    params = rows["structured-pruning"]["details"]
    assert params["parameters"] < params["parametersBefore"]
    assert table["budget"] == {
        "batchSize": 8,
        "threads": 1,
        "maxSizeBytes": 20000,
        "minAccuracy": 0.8,
    }
    # What the edge fetches is the chosen file alone: the float model would not fit.
    assert budget_run.manifest["serving"]["file"] == "model.shared.onnx"
    assert set(budget_run.manifest["files"]) == {"model.shared.onnx"}
    on_disk = {p.name for p in budget_run.output.iterdir() if p.is_file()}
    assert on_disk == {"model.shared.onnx", "manifest.json"}


def test_the_served_accuracy_is_recomputed_from_the_file(budget_run: TrainerRun) -> None:
    split = split_dataset(load_dataset("builtin:digits"), 0.2, seed=1)
    served = budget_run.output / "model.shared.onnx"
    accuracy = _accuracy(served, split)
    assert budget_run.manifest["evaluation"] == {
        "metric": "accuracy",
        "value": pytest.approx(accuracy, abs=1e-6),
    }
    assert budget_run.manifest["metrics"]["accuracy_weight_sharing"] == pytest.approx(
        accuracy, abs=1e-6
    )
    rows = {row["method"]: row for row in budget_run.manifest["compression"]["candidates"]}
    assert budget_run.manifest["metrics"]["accuracy"] == rows["float32"]["accuracy"]


def test_the_termination_message_carries_the_table(budget_run: TrainerRun) -> None:
    raw = budget_run.termination_log.read_bytes()
    assert len(raw) <= 4096
    message = json.loads(raw)
    manifest_table = budget_run.manifest["compression"]
    assert message["compression"]["chosen"] == "weight-sharing"
    assert message["compression"]["candidates"] == [
        {k: v for k, v in row.items() if k != "details"} for row in manifest_table["candidates"]
    ]
    assert message["artifact"]["quantized"] is False
    assert "warn" not in budget_run.stderr.lower(), budget_run.stderr


@pytest.fixture
def served(budget_run: TrainerRun, tmp_path: Path) -> Iterator[Path]:
    server = start_server(budget_run.output, tmp_path / "server.log")
    try:
        wait_ready(server)
        yield budget_run.output
        rows = load_dataset("builtin:digits").features[:16].astype(np.float32)
        expected = run_onnx(budget_run.output / "model.shared.onnx", rows)
        np.testing.assert_allclose(infer(server, rows), expected, rtol=1e-5, atol=1e-5)
    finally:
        assert server.stop() == 0, (tmp_path / "server.log").read_text()


def test_the_server_serves_the_chosen_weight_shared_file(served: Path) -> None:
    """The fixture starts the real server on the artifact and compares its answers."""
    assert (served / "manifest.json").exists()


def test_an_impossible_budget_fails_naming_the_closest_candidate(
    tmp_path: Path, trainer_runner: TrainerRunner
) -> None:
    run = trainer_runner(
        tmp_path / "artifact",
        "--model",
        "mlp",
        "--hidden-units",
        "32",
        "--dataset",
        "builtin:digits",
        "--epochs",
        "1",
        "--compress",
        "int8-static,weight-sharing",
        "--finetune-epochs",
        "0",
        "--max-size-bytes",
        "1000",
    )
    assert run.returncode == 2, run.stderr
    message = run.termination
    assert message["phase"] == "Failed" and message["reason"] == "BudgetNotMet"
    assert "the closest is weight-sharing: size " in message["message"]
    assert "exceeds maxSizeBytes 1,000" in message["message"]
    assert "int8-static (size" in message["message"]
    assert not (tmp_path / "artifact" / "manifest.json").exists()
    left = {p.name for p in (tmp_path / "artifact").iterdir() if p.is_file()}
    assert left == {"model.onnx"}


@pytest.mark.parametrize(
    ("method", "served_file"),
    [
        ("int8-dynamic", "model.int8.onnx"),
        ("int8-static", "model.int8-static.onnx"),
        ("float16", "model.fp16.onnx"),
        ("structured-pruning", "model.structured.onnx"),
    ],
)
def test_each_method_when_chosen_is_served_with_the_accuracy_its_file_scores(
    method: str, served_file: str, tmp_path: Path, trainer_runner: TrainerRunner
) -> None:
    """Every method, not only weight sharing, reaches the edge as the manifest says: the
    served file is the method's, its accuracy recomputed from the file matches the manifest,
    and the real server answers as onnxruntime does on that file. A generous latency budget
    lets a method that is slower than float (dynamic INT8 at small batches) be chosen."""
    output = tmp_path / "artifact"
    run = trainer_runner(
        output,
        *("--model", "mlp", "--hidden-units", "64", "--dataset", "builtin:digits"),
        *("--epochs", "3", "--seed", "2", "--compress", method, "--finetune-epochs", "1"),
        *("--latency-batch-size", "8", "--max-latency-ms", "1000", "--min-accuracy", "0.5"),
    )
    assert run.returncode == 0, run.stderr
    manifest = run.manifest
    assert manifest["compression"]["chosen"] == method
    assert manifest["serving"]["file"] == served_file
    split = split_dataset(load_dataset("builtin:digits"), 0.2, seed=2)
    accuracy = _accuracy(output / served_file, split)
    rows = {row["method"]: row for row in manifest["compression"]["candidates"]}
    assert rows[method]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert manifest["evaluation"]["value"] == pytest.approx(accuracy, abs=1e-6)

    server = start_server(output, tmp_path / "server.log")
    try:
        wait_ready(server)
        features = load_dataset("builtin:digits").features[:16].astype(np.float32)
        expected = run_onnx(output / served_file, features)
        np.testing.assert_allclose(infer(server, features), expected, rtol=1e-3, atol=1e-3)
    finally:
        assert server.stop() == 0, (tmp_path / "server.log").read_text()
