"""Weight sharing: the weights of each large Linear and Conv layer clustered to 2^bits shared
values (1-D k-means, linear initialisation), the codebooks fine-tuned with the cluster
assignment fixed (each centroid's gradient is the sum of its weights' gradients), then the
exported ONNX file rewritten so it really shrinks: each shared tensor is stored as packed
`bits`-bit indices (uint8) and a float32 codebook, and a few nodes (BitShift, Concat,
Gather, Reshape) rebuild it. All their inputs are constants, so ONNX Runtime folds them when
it loads the model and inference runs at the float model's speed."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from fogline.workloads.trainer.compression.files import checked
from fogline.workloads.trainer.compression.finetune import finetune
from fogline.workloads.trainer.datasets import Split

#: Tensors smaller than this stay float: the index nodes would cost more than they save.
MIN_SHARED_ELEMENTS = 1024
KMEANS_ITERATIONS = 30
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d


@dataclass
class SharedWeight:
    """One layer's weight as codebook[indices]; the codebook is what fine-tuning trains."""

    module: Layer
    codebook: torch.Tensor  # (2^bits,), a leaf tensor with requires_grad
    indices: torch.Tensor  # int64, the weight's shape

    def apply(self) -> None:
        with torch.no_grad():
            self.module.weight.copy_(self.codebook[self.indices])


def kmeans_1d(values: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted centroids and each value's cluster. Linear initialisation over [min, max]
    keeps the rare large weights their own centroids, which matter most for accuracy."""
    flat = values.detach().flatten().double()
    centroids = torch.linspace(float(flat.min()), float(flat.max()), clusters, dtype=flat.dtype)
    assignment = torch.zeros_like(flat, dtype=torch.int64)
    for _ in range(KMEANS_ITERATIONS):
        boundaries = (centroids[1:] + centroids[:-1]) / 2
        assignment = torch.bucketize(flat, boundaries)
        sums = torch.zeros(clusters, dtype=flat.dtype).scatter_add_(0, assignment, flat)
        counts = torch.bincount(assignment, minlength=clusters).to(flat.dtype)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        updated, _ = torch.sort(updated)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    boundaries = (centroids[1:] + centroids[:-1]) / 2
    assignment = torch.bucketize(flat, boundaries)
    return centroids.float(), assignment.reshape(values.shape)


def share_weights(model: nn.Module, bits: int) -> tuple[nn.Module, list[SharedWeight]]:
    """A copy of `model` whose large Linear/Conv weights take at most 2^bits values each."""
    shared_model = copy.deepcopy(model).cpu().eval()
    shared: list[SharedWeight] = []
    for module in shared_model.modules():
        if not isinstance(module, _LAYERS) or module.weight.numel() < MIN_SHARED_ELEMENTS:
            continue
        centroids, assignment = kmeans_1d(module.weight, 2**bits)
        entry = SharedWeight(module, centroids.clone().requires_grad_(True), assignment)
        entry.apply()
        shared.append(entry)
    return shared_model, shared


def finetune_shared(
    model: nn.Module,
    shared: list[SharedWeight],
    split: Split,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> nn.Module:
    """Fine-tunes the codebooks and every unshared parameter; weights stay codebook[indices]."""
    shared_ids = {id(entry.module.weight) for entry in shared}
    others: list[torch.Tensor] = [p for p in model.parameters() if id(p) not in shared_ids]
    for entry in shared:
        entry.module.weight.requires_grad_(True)

    def rebuild() -> None:
        for entry in shared:
            entry.apply()

    def centroid_gradients() -> None:
        for entry in shared:
            grad = entry.module.weight.grad
            if grad is None:
                continue
            entry.codebook.grad = torch.zeros_like(entry.codebook).scatter_add_(
                0, entry.indices.flatten(), grad.flatten()
            )
            entry.module.weight.grad = None

    return finetune(
        model,
        split,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        parameters=[entry.codebook for entry in shared] + others,
        before_forward=rebuild,
        after_backward=centroid_gradients,
    )


def _container_bits(bits: int) -> int:
    """Index width in the file: the smallest of 1, 2, 4, 8 that holds `bits`."""
    return next(width for width in (1, 2, 4, 8) if width >= bits)


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """Indices (< 2^bits) packed into uint8, 8 // width per byte, lowest bits first."""
    width = _container_bits(bits)
    per_byte = 8 // width
    flat = indices.astype(np.uint8).flatten()
    padded = np.zeros(-(-len(flat) // per_byte) * per_byte, dtype=np.uint8)
    padded[: len(flat)] = flat
    lanes = padded.reshape(-1, per_byte)
    packed = np.zeros(len(lanes), dtype=np.uint8)
    for lane in range(per_byte):
        packed |= (lanes[:, lane] << (width * lane)).astype(np.uint8)
    return packed


def _unpack_nodes(total: int, bits: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes that turn `shared.packed` into `shared.int64`, the `total` indices of every
    shared tensor end to end: each byte broadcast against one left shift per lane, shifted
    right to leave that lane's index, flattened, cut to `total`, widened for Gather."""
    width = _container_bits(bits)
    per_byte = 8 // width
    constants: list[onnx.TensorProto] = []

    def constant(suffix: str, value: np.ndarray) -> str:
        constants.append(numpy_helper.from_array(value, f"shared.{suffix}"))
        return constants[-1].name

    indices = "shared.packed"
    nodes: list[onnx.NodeProto] = []
    if per_byte > 1:
        lefts = np.array([8 - width * (lane + 1) for lane in range(per_byte)], dtype=np.uint8)
        nodes += [
            helper.make_node(
                "Unsqueeze", [indices, constant("axes", np.array([1], np.int64))], ["shared.column"]
            ),
            helper.make_node(
                "BitShift",
                ["shared.column", constant("left", lefts)],
                ["shared.shifted"],
                direction="LEFT",
            ),
            helper.make_node(
                "BitShift",
                ["shared.shifted", constant("right", np.array([8 - width], np.uint8))],
                ["shared.lanes"],
                direction="RIGHT",
            ),
            helper.make_node(
                "Reshape",
                ["shared.lanes", constant("flat", np.array([-1], np.int64))],
                ["shared.all"],
            ),
            helper.make_node(
                "Slice",
                [
                    "shared.all",
                    constant("zero", np.array([0], np.int64)),
                    constant("total", np.array([total], np.int64)),
                ],
                ["shared.indices"],
            ),
        ]
        indices = "shared.indices"
    nodes.append(helper.make_node("Cast", [indices], ["shared.int64"], to=TensorProto.INT64))
    return nodes, constants


def _lookup_nodes(
    number: int, name: str, start: int, shape: list[int]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes that rebuild the tensor `name` from its slice of `shared.int64` and its codebook."""
    prefix = f"shared{number}"
    count = int(np.prod(shape))
    constants = [
        numpy_helper.from_array(np.array([start], np.int64), f"{prefix}.start"),
        numpy_helper.from_array(np.array([start + count], np.int64), f"{prefix}.end"),
        numpy_helper.from_array(np.array(shape, np.int64), f"{prefix}.shape"),
    ]
    nodes = [
        helper.make_node(
            "Slice", ["shared.int64", f"{prefix}.start", f"{prefix}.end"], [f"{prefix}.indices"]
        ),
        helper.make_node(
            "Gather", [f"{prefix}.codebook", f"{prefix}.indices"], [f"{prefix}.values"], axis=0
        ),
        helper.make_node("Reshape", [f"{prefix}.values", f"{prefix}.shape"], [name]),
    ]
    return nodes, constants


def store_shared(source: Path, target: Path, bits: int) -> int:
    """Rewrites every float32 initializer of at least MIN_SHARED_ELEMENTS elements that
    takes at most 2^bits distinct values as indices plus a codebook; the indices of all of
    them are packed into one uint8 tensor, so the unpacking nodes exist once (short names
    too: a small model's file is measurably made of names). Returns how many tensors were
    rewritten."""
    with checked("CompressionFailed", "weight sharing", target):
        model = onnx.load(str(source))
        graph = model.graph
        kept: list[onnx.TensorProto] = []
        lookups: list[onnx.NodeProto] = []
        all_indices: list[np.ndarray] = []
        start = 0
        for tensor in graph.initializer:
            array = numpy_helper.to_array(tensor) if tensor.data_type == TensorProto.FLOAT else None
            if array is None or array.size < MIN_SHARED_ELEMENTS:
                kept.append(tensor)
                continue
            codebook, indices = np.unique(array, return_inverse=True)
            if len(codebook) > 2**bits:
                kept.append(tensor)
                continue
            number = len(all_indices)
            kept.append(
                numpy_helper.from_array(codebook.astype(np.float32), f"shared{number}.codebook")
            )
            nodes, constants = _lookup_nodes(number, tensor.name, start, list(array.shape))
            lookups += nodes
            kept += constants
            all_indices.append(indices.flatten())
            start += array.size
        added: list[onnx.NodeProto] = []
        if all_indices:
            packed = pack_indices(np.concatenate(all_indices), bits)
            kept.append(numpy_helper.from_array(packed, "shared.packed"))
            added, constants = _unpack_nodes(start, bits)
            kept += constants
        del graph.initializer[:]
        graph.initializer.extend(kept)
        existing = list(graph.node)
        del graph.node[:]
        graph.node.extend(added + lookups + existing)
        onnx.save(model, str(target))
    return len(all_indices)


def codebook_sizes(path: Path) -> dict[str, int]:
    """For a weight-shared file: the tensor each codebook rebuilds and its number of values."""
    graph = onnx.load(str(path)).graph
    sizes = {
        t.name: int(np.prod(t.dims)) for t in graph.initializer if t.name.endswith(".codebook")
    }
    return {
        node.output[0]: sizes[node.input[0].replace(".values", ".codebook")]
        for node in graph.node
        if node.op_type == "Reshape" and node.input[0].endswith(".values")
    }
