"""Builds small artifact folders (an MLP as ONNX plus manifest.json, per the artifact contract)
for the server and fetch tests, without the trainer. Deterministic weights from a seed. The
artifacts a rollout's analysis must stop are fogline.devcluster.rollout_models'."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fogline.devcluster.rollout_models import write_onnx_artifact
from fogline.workloads.manifest import manifest_digest


@dataclass(frozen=True)
class MlpShape:
    features: int = 64
    hidden: int = 32
    layers: int = 1  # hidden layers
    classes: int = 10


def mlp_weights(shape: MlpShape, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight [in, out], bias [out]) per layer, float32."""
    rng = np.random.default_rng(seed)
    sizes = [shape.features] + [shape.hidden] * shape.layers + [shape.classes]
    return [
        (
            (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32),
            (rng.standard_normal(n_out) * 0.1).astype(np.float32),
        )
        for n_in, n_out in itertools.pairwise(sizes)
    ]


def mlp_onnx(weights: list[tuple[np.ndarray, np.ndarray]]) -> onnx.ModelProto:
    nodes, initializers = [], []
    current = "input"
    for index, (weight, bias) in enumerate(weights):
        initializers += [
            numpy_helper.from_array(weight, f"w{index}"),
            numpy_helper.from_array(bias, f"b{index}"),
        ]
        last = index == len(weights) - 1
        out = "logits" if last else f"h{index}"
        nodes.append(helper.make_node("Gemm", [current, f"w{index}", f"b{index}"], [f"g{index}"]))
        nodes.append(helper.make_node("Identity" if last else "Relu", [f"g{index}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["batch", weights[0][0].shape[0]]
            )
        ],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch", weights[-1][0].shape[1]]
            )
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_artifact(
    folder: Path, shape: MlpShape = MlpShape(), seed: int = 0, name: str = "digits"
) -> str:
    """Write model.onnx and manifest.json into folder; returns the artifact digest."""
    model = mlp_onnx(mlp_weights(shape, seed))
    return write_onnx_artifact(folder, model, name, shape.features, shape.classes, accuracy=0.9)


def write_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A P-256 key pair as PEM files (private PKCS#8, public SubjectPublicKeyInfo), the kind
    `openssl ecparam -name prime256v1 -genkey` makes; returns (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def write_sealed_artifact(folder: Path, key: bytes, seed: int = 0, name: str = "digits") -> str:
    """write_artifact, then model.onnx sealed with AES-256-GCM as the trainer does it: the
    manifest lists model.onnx.enc and says it opens to model.onnx. Returns the digest."""
    from fogline.workloads.encryption import seal_files, sealing_document

    write_artifact(folder, seed=seed, name=name)
    manifest = json.loads((folder / "manifest.json").read_text())
    sealed = seal_files(folder, ["model.onnx"], key)
    data = (folder / "model.onnx.enc").read_bytes()
    manifest["files"] = {
        "model.onnx.enc": {"sha256": hashlib.sha256(data).hexdigest(), "sizeBytes": len(data)}
    }
    manifest["serving"]["file"] = "model.onnx.enc"
    manifest["encryption"] = sealing_document(sealed)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest_digest(manifest)
