"""The served model: verify the artifact, load it into onnxruntime, report readiness, predict.
Knows nothing of HTTP or JSON; takes and returns numpy arrays keyed by tensor name. An
encrypted artifact is opened in memory and handed to onnxruntime as bytes (external data too),
so its plaintext never reaches a file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fogline.workloads import encryption
from fogline.workloads.manifest import (
    ONNX_TYPE_TO_DATATYPE,
    ArtifactError,
    ArtifactManifest,
    TensorSpec,
    verify_artifact,
)
from fogline.workloads.server.errors import InferenceFailedError
from fogline.workloads.server.tensors import NUMPY_DTYPES

MODEL_VERSION = "1"


@dataclass(frozen=True)
class RuntimeOptions:
    intra_op_threads: int = 1
    model_key_file: Path | None = None  # the AES-256 key of an encrypted artifact


class OnnxModel:
    """One artifact folder served under one name; `load` must succeed before `ready` is true."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        expected_digest: str | None = None,
        options: RuntimeOptions | None = None,
    ) -> None:
        self.name = name
        self.version = MODEL_VERSION
        self.model_dir = model_dir
        self.expected_digest = expected_digest
        self.options = options or RuntimeOptions()
        self.ready = False
        self.load_seconds = 0.0
        self.manifest: ArtifactManifest | None = None
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()
        self.output_names: tuple[str, ...] = ()
        self.batchable = False
        self._session: ort.InferenceSession | None = None

    @property
    def digest(self) -> str:
        return self.manifest.digest if self.manifest else ""

    def load(self) -> None:
        """Verify every file against the manifest, then build the session; raises ArtifactError."""
        started = time.perf_counter()
        manifest = verify_artifact(self.model_dir, self.expected_digest)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.options.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = self.model_dir / manifest.serving.file
        model: str | bytes = str(path)
        try:
            sealing = encryption.parse_sealing(manifest)
        except ValueError as err:
            raise ArtifactError(str(err)) from err
        if sealing is not None:
            model = self._open_in_memory(sealing, manifest.serving.file, options)
        elif self.options.model_key_file is not None:
            raise ArtifactError(
                f"{self.model_dir}: a model key was given but the artifact is not encrypted"
            )
        try:
            session = ort.InferenceSession(
                model, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise ArtifactError(f"{path}: onnxruntime cannot load it: {err}") from err
        self._check_signature(manifest, session)
        self.manifest = manifest
        self.inputs = manifest.serving.inputs
        self.outputs = manifest.serving.outputs
        self.output_names = tuple(spec.name for spec in self.outputs)
        # Requests can share one run when every tensor's first axis is the dynamic batch axis.
        self.batchable = all(
            spec.shape and spec.shape[0] == -1 for spec in (*self.inputs, *self.outputs)
        )
        self._session = session
        self._warm_up()
        self.load_seconds = time.perf_counter() - started
        self.ready = True

    def _open_in_memory(
        self, sealing: encryption.Sealing, serving_file: str, options: ort.SessionOptions
    ) -> bytes:
        """The serving file's plaintext; other sealed files become external initializers from
        memory, under the names the graph's external_data locations give."""
        try:
            key = encryption.read_key(self.options.model_key_file)
            opened = encryption.open_artifact(self.model_dir, sealing, key)
        except encryption.ModelKeyError as err:
            raise ArtifactError(f"{err.reason}: {err}") from None
        graph = opened.pop(sealing.files[serving_file])
        if opened:
            if not hasattr(options, "add_external_initializers_from_files_in_memory"):
                raise ArtifactError(
                    f"onnxruntime {ort.__version__} cannot take external data from memory; an "
                    "encrypted model with external data needs a newer onnxruntime"
                )
            names = sorted(opened)
            options.add_external_initializers_from_files_in_memory(
                names, [opened[n] for n in names], [len(opened[n]) for n in names]
            )
        return graph

    @staticmethod
    def _check_signature(manifest: ArtifactManifest, session: ort.InferenceSession) -> None:
        declared = {spec.name: spec for spec in manifest.serving.inputs}
        actual = {arg.name: arg for arg in session.get_inputs()}
        if set(declared) != set(actual):
            raise ArtifactError(
                f"manifest.serving.inputs {sorted(declared)} differ from the ONNX graph's "
                f"inputs {sorted(actual)}"
            )
        for name, spec in declared.items():
            onnx_type = ONNX_TYPE_TO_DATATYPE.get(actual[name].type)
            if onnx_type != spec.datatype:
                raise ArtifactError(
                    f"manifest.serving.inputs {name!r}: datatype {spec.datatype} but the ONNX "
                    f"graph takes {actual[name].type}"
                )
        graph_outputs = {arg.name for arg in session.get_outputs()}
        missing = [spec.name for spec in manifest.serving.outputs if spec.name not in graph_outputs]
        if missing:
            raise ArtifactError(f"manifest.serving.outputs {missing} are not outputs of the graph")

    def _warm_up(self) -> None:
        """One run on zeros so the first client does not pay for lazy kernel setup."""
        feeds: dict[str, np.ndarray[Any, Any]] = {}
        for spec in self.inputs:
            if spec.datatype == "BYTES":
                return
            shape = tuple(1 if dim < 0 else dim for dim in spec.shape)
            feeds[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
        self.predict(feeds)

    def predict(self, feeds: dict[str, np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Run the graph; returns every declared output, in manifest order."""
        if self._session is None:
            raise InferenceFailedError(f"model {self.name!r} is not loaded")
        try:
            results: list[np.ndarray[Any, Any]] = self._session.run(list(self.output_names), feeds)
        except Exception as err:  # onnxruntime's errors share no base class worth naming
            raise InferenceFailedError(f"model {self.name!r}: onnxruntime failed: {err}") from err
        return results

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
        }
