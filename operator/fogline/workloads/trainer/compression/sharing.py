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


def _unpack_nodes(
    prefix: str, name: str, count: int, bits: int, shape: list[int]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes that turn `{prefix}.packed` and `{prefix}.codebook` back into the float tensor
    `name`: each byte broadcast against one left shift per lane, shifted right to leave the
    lane's index, flattened, cut to `count`, looked up in the codebook, reshaped."""
    width = _container_bits(bits)
    per_byte = 8 // width
    nodes: list[onnx.NodeProto] = []
    constants: list[onnx.TensorProto] = []

    def constant(suffix: str, value: np.ndarray) -> str:
        constants.append(numpy_helper.from_array(value, f"{prefix}.{suffix}"))
        return constants[-1].name

    indices = f"{prefix}.packed"
    if per_byte > 1:
        lefts = np.array([8 - width * (lane + 1) for lane in range(per_byte)], dtype=np.uint8)
        nodes += [
            helper.make_node(
                "Unsqueeze",
                [indices, constant("axes", np.array([1], np.int64))],
                [f"{prefix}.column"],
            ),
            helper.make_node(
                "BitShift",
                [f"{prefix}.column", constant("left", lefts)],
                [f"{prefix}.shifted"],
                direction="LEFT",
            ),
            helper.make_node(
                "BitShift",
                [f"{prefix}.shifted", constant("right", np.array([8 - width], np.uint8))],
                [f"{prefix}.lanes"],
                direction="RIGHT",
            ),
            helper.make_node(
                "Reshape",
                [f"{prefix}.lanes", constant("flat", np.array([-1], np.int64))],
                [f"{prefix}.all"],
            ),
            helper.make_node(
                "Slice",
                [
                    f"{prefix}.all",
                    constant("start", np.array([0], np.int64)),
                    constant("end", np.array([count], np.int64)),
                ],
                [f"{prefix}.indices"],
            ),
        ]
        indices = f"{prefix}.indices"
    nodes += [
        helper.make_node("Cast", [indices], [f"{prefix}.int64"], to=TensorProto.INT64),
        helper.make_node(
            "Gather", [f"{prefix}.codebook", f"{prefix}.int64"], [f"{prefix}.values"], axis=0
        ),
        helper.make_node(
            "Reshape", [f"{prefix}.values", constant("shape", np.array(shape, np.int64))], [name]
        ),
    ]
    return nodes, constants


def store_shared(source: Path, target: Path, bits: int) -> int:
    """Rewrites every float32 initializer of at least MIN_SHARED_ELEMENTS elements that
    takes at most 2^bits distinct values as packed indices plus a codebook; returns how many
    tensors were rewritten."""
    with checked("CompressionFailed", "weight sharing", target):
        model = onnx.load(str(source))
        graph = model.graph
        kept: list[onnx.TensorProto] = []
        added_nodes: list[onnx.NodeProto] = []
        rewritten = 0
        for tensor in graph.initializer:
            if tensor.data_type != TensorProto.FLOAT:
                kept.append(tensor)
                continue
            array = numpy_helper.to_array(tensor)
            codebook, indices = np.unique(array, return_inverse=True)
            if array.size < MIN_SHARED_ELEMENTS or len(codebook) > 2**bits:
                kept.append(tensor)
                continue
            # Short names: a file of small models is measurably made of names.
            prefix = f"shared{rewritten}"
            kept.append(numpy_helper.from_array(pack_indices(indices, bits), f"{prefix}.packed"))
            kept.append(numpy_helper.from_array(codebook.astype(np.float32), f"{prefix}.codebook"))
            nodes, constants = _unpack_nodes(
                prefix, tensor.name, array.size, bits, list(array.shape)
            )
            added_nodes += nodes
            kept += constants
            rewritten += 1
        del graph.initializer[:]
        graph.initializer.extend(kept)
        existing = list(graph.node)
        del graph.node[:]
        graph.node.extend(added_nodes + existing)
        onnx.save(model, str(target))
    return rewritten


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
