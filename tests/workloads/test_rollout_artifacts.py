"""The artifacts a rollout's analysis is tested with, served by real `fogline serve` processes
and loaded by the dev cluster's load generator side by side: the MLP answers every request,
the wide CNN answers every request correctly and much more slowly, and the failing model loads,
becomes Ready and answers every real request with a 500, which the server's own metrics count."""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import urllib3

from fogline.devcluster.loadgen import LoadGenerator, LoadPlan, digits_rows
from fogline.devcluster.rollout_models import failing_onnx, wide_cnn_onnx, write_onnx_artifact
from tests.workloads.served_artifacts import write_artifact
from tests.workloads.test_server import MODEL, ServerProcess, start_server, wait_ready

pytestmark = pytest.mark.workloads

ROUNDS = 3  # alternating load rounds; the ratio is taken within each, then the median


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    root = tmp_path_factory.mktemp("rollout-artifacts")
    write_artifact(root / "good", seed=1)
    write_onnx_artifact(root / "slow", wide_cnn_onnx())
    write_onnx_artifact(root / "failing", failing_onnx())
    kinds = ("good", "slow", "failing")
    started = {kind: start_server(root / kind, root / f"{kind}.log") for kind in kinds}
    try:
        for server in started.values():
            wait_ready(server)
        yield started
    finally:
        for server in started.values():
            server.stop()


def _url(server: ServerProcess) -> str:
    return f"http://{server.address}"


def test_the_wide_cnn_has_the_mlps_signature_and_finite_answers(tmp_path: Path) -> None:
    write_onnx_artifact(tmp_path, wide_cnn_onnx())
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    rows = np.array(digits_rows(8), dtype=np.float32)
    (logits,) = session.run(None, {"input": rows})
    assert logits.shape == (8, 10) and np.isfinite(logits).all()


def test_the_slow_model_answers_every_request_and_much_more_slowly_than_the_mlp(
    servers: dict[str, ServerProcess],
) -> None:
    good, slow = _url(servers["good"]), _url(servers["slow"])
    ratios = []
    for _ in range(ROUNDS):
        plan = LoadPlan((good, slow), MODEL, digits_rows(), rate=10, seconds=2)
        results = LoadGenerator(plan).run()
        assert results[good].statuses == {200: 20} and results[slow].statuses == {200: 20}
        ratios.append(results[slow].quantile(0.5) / results[good].quantile(0.5))
    print(f"slow/good p50 per round: {[round(r, 1) for r in ratios]}")
    assert statistics.median(ratios) >= 3


def test_the_failing_model_is_ready_and_answers_real_requests_with_500(
    servers: dict[str, ServerProcess],
) -> None:
    failing = servers["failing"]
    assert failing.client().is_model_ready(MODEL)
    results = LoadGenerator(
        LoadPlan((_url(failing),), MODEL, digits_rows(), rate=20, seconds=1)
    ).run()
    outcome = results[_url(failing)]
    assert outcome.statuses == {500: 20} and outcome.errors == 20
    assert "Gather" in outcome.failures[0]
    metrics = urllib3.request("GET", f"{_url(failing)}/metrics").data.decode()
    counted = re.search(
        r'fogline_http_requests_total\{endpoint="/v2/models/\{name\}/infer",method="POST",'
        r'status="500"\} (\d+)',
        metrics,
    )
    assert counted is not None and int(counted.group(1)) >= 20
