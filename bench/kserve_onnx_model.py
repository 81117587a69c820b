"""The comparison server for bench_server.py: KServe's Python model server (from PyPI) serving an
artifact's ONNX file with onnxruntime over the same Open Inference v2 REST protocol. Runs in
the KServe venv (bench/setup_kserve.sh), never in the project's own environment."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--model-dir", type=Path, required=True)
parser.add_argument("--name", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--threads", type=int, default=1)
options = parser.parse_args()
# KServe reads its own flags from sys.argv when imported: give it exactly these.
sys.argv = [
    sys.argv[0],
    f"--http_port={options.port}",
    "--enable_grpc=false",
    "--enable_latency_logging=false",
]

import kserve  # noqa: E402
import onnxruntime as ort  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402

DATATYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(double)": "FP64"}


class OnnxRuntimeModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, model_dir: Path, threads: int) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.threads = threads
        self.session: Any = None

    def load(self) -> bool:
        manifest = json.loads((self.model_dir / "manifest.json").read_text())
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = self.threads
        session_options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.model_dir / manifest["serving"]["file"]),
            session_options,
            providers=["CPUExecutionProvider"],
        )
        self.ready = True
        return True

    def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run(None, feeds)
        outputs = []
        for meta, array in zip(self.session.get_outputs(), results, strict=True):
            output = InferOutput(meta.name, list(array.shape), DATATYPES[meta.type])
            output.set_data_from_numpy(array, binary_data=False)
            outputs.append(output)
        return InferResponse(payload.id or str(uuid.uuid4()), self.name, outputs)


if __name__ == "__main__":
    model = OnnxRuntimeModel(options.name, options.model_dir, options.threads)
    model.load()
    server = kserve.ModelServer(http_port=options.port, enable_grpc=False, workers=1)
    # Give KServe its best case: no log line per request.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    server.start([model])
