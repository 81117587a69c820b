"""The rollout analysis' Prometheus source against a real Prometheus (the one `make tools`
installs) scraping real inference servers on loopback (`python -m fogline.workloads.server`
serving a real ONNX model) that answer real requests, good, failing (500) and refused (400):
what it reads agrees with the pod scrape source's reading of the same servers, and what it
answers when the pods are absent, Prometheus is down, slow, refuses the query or is not a
Prometheus at all."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.server
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fogline.api.edgedeployment import AnalysisSpec
from fogline.controllers.analysis import AnalysisWindow, PodScrapeSource
from fogline.controllers.prometheus import QUERIES_PER_SAMPLE, PrometheusSource
from fogline.devcluster.prometheus import PrometheusServer, ScrapeTarget
from fogline.devcluster.rollout_models import write_onnx_artifact
from fogline.rollout.analysis import PodTarget, PodWindow, judge
from tests.workloads.served_artifacts import MlpShape, mlp_onnx, mlp_weights
from tests.workloads.test_analysis_scrape import Silent, silent  # noqa: F401  (a fixture)
from tests.workloads.test_server import ServerProcess, infer, running_servers

pytestmark = pytest.mark.workloads

NAMESPACE = "shop"
WAVE_POD, BASE_POD = "digits-edge-site-a-x7k2p", "digits-edge-site-b-9qm4z"
# The wave's server again, under the labels older kubernetes_sd relabelings write.
RELABELED_POD = "digits-edge-site-a-relabeled"
KEY = (NAMESPACE, "digits-edge", 1, "sha256:" + "b" * 64)
# Two counters of the servers besides the inference ones, as a customRatio would name them
# (onnxruntime runs, and their rows; scrapes of /metrics move neither).
CUSTOM = ("fogline_inference_batch_rows_count", "fogline_inference_duration_seconds_count")
GOOD, FAILING, REFUSED, BASELINE = 30, 6, 4, 12


def one_row_only(folder: Path) -> None:
    """An artifact whose model answers one row and fails in onnxruntime on more (the test
    MLP's logits reshaped to [1, 10]): requests of two rows get a 500 from a server that is
    Ready."""
    model = mlp_onnx(mlp_weights(MlpShape(features=64, hidden=32, classes=10)))
    graph = model.graph
    graph.node[-1].output[0] = "any_rows"
    graph.initializer.append(numpy_helper.from_array(np.array([1, 10], np.int64), "one_row"))
    graph.node.append(helper.make_node("Reshape", ["any_rows", "one_row"], ["logits"]))
    onnx.checker.check_model(model)
    write_onnx_artifact(folder, model)


@contextlib.contextmanager
def one_row_servers(
    tmp_path_factory: pytest.TempPathFactory, count: int = 2
) -> Iterator[list[ServerProcess]]:
    """`count` real servers on loopback of the model `one_row_only` makes, stopped after."""
    artifact = tmp_path_factory.mktemp("artifact")
    one_row_only(artifact)
    with running_servers(artifact, tmp_path_factory.mktemp("servers"), count) as started:
        yield started


def rows_body(rows: int) -> bytes:
    """A JSON inference request of `rows` rows (more than one fails on that model)."""
    tensor = {"name": "input", "datatype": "FP32", "shape": [rows, 64], "data": [0.5] * 64 * rows}
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    with one_row_servers(tmp_path_factory) as started:
        yield started


@pytest.fixture(scope="module")
def watched(prometheus: PrometheusServer, servers: list[ServerProcess]) -> PrometheusServer:
    """The session's Prometheus scraping both servers every second, labelled as pods."""
    wave, base = servers
    prometheus.set_targets(
        [
            ScrapeTarget(wave.address, {"pod": WAVE_POD, "namespace": NAMESPACE}),
            ScrapeTarget(base.address, {"pod": BASE_POD, "namespace": NAMESPACE}),
            ScrapeTarget(
                wave.address,
                {"kubernetes_pod_name": RELABELED_POD, "kubernetes_namespace": NAMESPACE},
            ),
        ]
    )
    wait_scraped(prometheus, 3, after=time.time())
    return prometheus


def wait_scraped(prometheus: PrometheusServer, targets: int, after: float) -> None:
    """Until `targets` targets have been scraped since `after` (a Unix time): Prometheus
    picks a new target list up within about 5 s (its discovery sends at most that often)."""
    # timestamp() of a selector is its sample's time (of any other expression: now).
    scraped = f"count((timestamp(up) > {after:.3f}) and (up == 1))"
    query = urllib.parse.urlencode({"query": scraped})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{prometheus.url}/api/v1/query?{query}", timeout=5) as r:
            result = json.load(r)["data"]["result"]
        if result and int(float(result[0]["value"][1])) >= targets:
            return
        time.sleep(0.2)
    pytest.fail(f"Prometheus did not scrape {targets} targets within 30 s: {prometheus.log}")


def send_traffic(wave: ServerProcess, base: ServerProcess) -> None:
    one = np.random.default_rng(1).random((1, 64), dtype=np.float32)
    for _ in range(GOOD):
        infer(wave, one)
    for _ in range(FAILING):
        status, answer = wave.request(
            "POST",
            "/v2/models/digits/infer",
            rows_body(2),
            {"Content-Type": "application/json"},
        )
        assert status == 500, answer
    for _ in range(REFUSED):
        status, answer = wave.request("POST", "/v2/models/digits/infer", b"{not json")
        assert status == 400, answer
    for _ in range(BASELINE):
        infer(base, one)


def targets(wave: ServerProcess, base: ServerProcess) -> tuple[PodTarget, ...]:
    return (
        PodTarget(WAVE_POD, "site-a", "127.0.0.1", wave.port),
        PodTarget(BASE_POD, "site-b", "127.0.0.1", base.port, baseline=True),
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


POLICY = AnalysisSpec(
    window_seconds=1,
    min_requests=20,
    max_error_ratio=0.05,
    max_p99_latency_ms=5000,
    max_p99_latency_ratio=50,
)


def test_prometheus_reads_the_counts_error_ratio_and_p99_the_servers_counted(
    servers: list[ServerProcess], watched: PrometheusServer
) -> None:
    wave, base = servers
    opened = utcnow()
    window = AnalysisWindow(KEY, NAMESPACE, opened, 1.0, targets(wave, base), CUSTOM)
    # Prometheus' window starts at its first scrape after the opening: traffic comes after.
    wait_scraped(watched, 3, after=opened.timestamp())
    scrape = PodScrapeSource(min_interval_seconds=0)
    source = PrometheusSource(watched.url)

    async def run() -> tuple[list[PodWindow], list[PodWindow]]:
        try:
            await scrape.sample(window, utcnow())
            await asyncio.to_thread(send_traffic, wave, base)
            scraped = await scrape.sample(window, utcnow())
            await asyncio.to_thread(wait_scraped, watched, 3, time.time())
            return scraped, await source.sample(window, utcnow())
        finally:
            await scrape.close()
            await source.close()

    scraped, queried = asyncio.run(run())
    assert source.requests == QUERIES_PER_SAMPLE == 1
    by_pod = {w.pod: w for w in queried}
    wave_window, base_window = by_pod[WAVE_POD], by_pod[BASE_POD]
    assert wave_window.counters is not None and base_window.counters is not None
    assert wave_window.counters.requests == GOOD + FAILING + REFUSED
    assert wave_window.counters.errors == FAILING
    assert base_window.counters.requests == BASELINE and base_window.counters.errors == 0
    assert wave_window.since is not None and wave_window.since > opened
    for direct, answered in zip(scraped, queried, strict=True):
        assert direct.counters is not None and answered.counters is not None
        assert answered.counters.requests == direct.counters.requests
        assert answered.counters.errors == direct.counters.errors
        assert dict(answered.counters.buckets) == dict(direct.counters.buckets)
        assert answered.counters.custom == direct.counters.custom
    assert wave_window.counters.custom["fogline_inference_batch_rows_count"] >= GOOD

    now = utcnow()
    from_prometheus = judge(POLICY, queried, opened, now)
    from_pods = judge(POLICY, scraped, opened, now)
    assert from_prometheus.phase == "Failed", from_prometheus.message
    assert from_prometheus.failure is not None
    assert from_prometheus.failure.site == "site-a"
    assert from_prometheus.failure.metric == "errorRatio"
    assert from_prometheus.failure.value == pytest.approx(FAILING / (GOOD + FAILING + REFUSED))
    assert from_prometheus.results == from_pods.results
    p99 = {r.metric: r for r in from_prometheus.results}["p99LatencyMs"]
    assert p99.value is not None and 0 < p99.value < 5000
    assert p99.baseline is not None and p99.baseline > 0
    # The baseline's server, judged as a wave of its own, answered every request: a pass.
    alone = [dataclasses.replace(base_window, baseline=False)]
    passed = judge(dataclasses.replace(POLICY, min_requests=BASELINE), alone, opened, now)
    assert passed.phase == "Passed", passed.message


def test_pods_that_prometheus_never_scraped_are_not_read_and_not_passed(
    servers: list[ServerProcess], watched: PrometheusServer
) -> None:
    wave, base = servers
    opened = utcnow()
    absent = PodTarget("digits-edge-site-c-gone", "site-c", "127.0.0.1", 1)
    window = AnalysisWindow(KEY, NAMESPACE, opened, 1.0, (*targets(wave, base), absent))
    other_namespace = AnalysisWindow(KEY, "elsewhere", opened, 1.0, targets(wave, base))
    source = PrometheusSource(watched.url, min_interval_seconds=0)
    wait_scraped(watched, 3, after=opened.timestamp())

    async def run() -> tuple[list[PodWindow], list[PodWindow]]:
        try:
            return await source.sample(window, utcnow()), await source.sample(
                other_namespace, utcnow()
            )
        finally:
            await source.close()

    read, elsewhere = asyncio.run(run())
    gone = read[-1]
    assert gone.counters is None and gone.since is None
    assert gone.problem is not None
    assert 'pod="digits-edge-site-c-gone"' in gone.problem and "no sample" in gone.problem
    assert all(w.counters is not None for w in read[:2])
    assert all(w.counters is None for w in elsewhere)
    policy = AnalysisSpec(window_seconds=1, min_requests=0, max_error_ratio=0.5)
    later = utcnow() + timedelta(seconds=5)  # the window has closed
    assert judge(policy, read, opened, later).phase == "Inconclusive"
    assert judge(policy, elsewhere, opened, later).phase == "Inconclusive"
    assert source.requests == 2


def test_the_target_labels_naming_pod_and_namespace_are_a_setting(
    servers: list[ServerProcess], watched: PrometheusServer
) -> None:
    wave, _ = servers
    opened = utcnow()
    wait_scraped(watched, 3, after=opened.timestamp())
    window = AnalysisWindow(
        KEY, NAMESPACE, opened, 1.0, (PodTarget(RELABELED_POD, "site-a", "127.0.0.1", wave.port),)
    )
    relabeled = PrometheusSource(
        watched.url, pod_label="kubernetes_pod_name", namespace_label="kubernetes_namespace"
    )
    default = PrometheusSource(watched.url)

    async def run() -> tuple[list[PodWindow], list[PodWindow]]:
        try:
            return await relabeled.sample(window, utcnow()), await default.sample(window, utcnow())
        finally:
            await relabeled.close()
            await default.close()

    found, missed = asyncio.run(run())
    assert found[0].counters is not None and found[0].since is not None
    assert missed[0].counters is None
    assert (
        missed[0].problem is not None and 'pod="digits-edge-site-a-relabeled"' in missed[0].problem
    )


def test_prometheus_down_refusing_the_query_or_not_prometheus_is_inconclusive(
    servers: list[ServerProcess], tmp_path: Path
) -> None:
    wave, base = servers
    opened = utcnow()
    window = AnalysisWindow(KEY, NAMESPACE, opened, 1.0, targets(wave, base))
    own = PrometheusServer(tmp_path / "prometheus")
    own.up()
    outcomes: list[str] = []
    source = PrometheusSource(own.url, min_interval_seconds=0, on_request=outcomes.append)
    # A label name PromQL cannot parse: Prometheus answers 400 bad_data.
    refused = PrometheusSource(own.url, pod_label="0pod", on_request=outcomes.append)
    # The inference server's own port: a server, but no query API.
    not_prometheus = PrometheusSource(f"http://{wave.address}", on_request=outcomes.append)

    async def run() -> dict[str, list[PodWindow]]:
        try:
            answers = {
                "up": await source.sample(window, utcnow()),
                "refused": await refused.sample(window, utcnow()),
                "not prometheus": await not_prometheus.sample(window, utcnow()),
            }
            own.down()
            answers["down"] = await source.sample(window, utcnow())
            return answers
        finally:
            own.down()
            for each in (source, refused, not_prometheus):
                await each.close()

    answers = asyncio.run(run())
    assert outcomes == ["ok", "error", "error", "error"]
    problems = {case: [w.problem or "" for w in windows] for case, windows in answers.items()}
    assert all("no sample" in p for p in problems["up"])
    assert all("bad_data" in p for p in problems["refused"])
    assert all("HTTP 404" in p for p in problems["not prometheus"])
    assert all(f"cannot reach Prometheus at {own.url}" in p for p in problems["down"])
    policy = AnalysisSpec(window_seconds=1, min_requests=0, max_error_ratio=0.5)
    later = utcnow() + timedelta(seconds=5)  # the window has closed
    for case, windows in answers.items():
        assert all(w.counters is None for w in windows), case
        assert judge(policy, windows, opened, later).phase == "Inconclusive", case


def test_a_prometheus_that_never_answers_times_out_once_per_sample(
    silent: Silent,  # noqa: F811  (the fixture imported above)
) -> None:
    opened = utcnow()
    window = AnalysisWindow(
        KEY, NAMESPACE, opened, 1.0, (PodTarget(WAVE_POD, "site-a", "127.0.0.1", 1),)
    )
    outcomes: list[str] = []
    source = PrometheusSource(
        f"http://127.0.0.1:{silent.server_address[1]}",
        timeout_seconds=0.5,
        min_interval_seconds=10,
        on_request=outcomes.append,
    )

    async def run() -> list[list[PodWindow]]:
        try:
            answers = [await source.sample(window, opened)]
            # Sooner than the interval: the last answer again, no request.
            answers.append(await source.sample(window, opened + timedelta(seconds=3)))
            source.forget(KEY)
            answers.append(await source.sample(window, opened))
            return answers
        finally:
            await source.close()

    answers = asyncio.run(run())
    assert outcomes == ["timeout", "timeout"] and source.requests == 2
    assert answers[0][0].problem == (
        f"Prometheus at http://127.0.0.1:{silent.server_address[1]} gave no answer within 0.5s"
    )


class Recorder(http.server.ThreadingHTTPServer):
    """Answers every query with an empty matrix and keeps what was asked: Prometheus itself
    checks no bearer token, so this is how the test sees the one sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Record)
        self.seen: list[tuple[str, dict[str, list[str]]]] = []


class _Record(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server: Recorder = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        server.seen.append((self.headers.get("Authorization", ""), urllib.parse.parse_qs(body)))
        answer = b'{"status":"success","data":{"resultType":"matrix","result":[]}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_bearer_token_is_read_from_its_file_at_each_query(tmp_path: Path) -> None:
    recorder = Recorder()
    thread = threading.Thread(target=recorder.serve_forever, daemon=True)
    thread.start()
    token = tmp_path / "token"
    token.write_text("first-token\n")
    opened = utcnow()
    window = AnalysisWindow(
        KEY, NAMESPACE, opened, 1.0, (PodTarget(WAVE_POD, "site-a", "127.0.0.1", 1),)
    )
    source = PrometheusSource(
        f"http://127.0.0.1:{recorder.server_address[1]}",
        bearer_token_file=str(token),
        timeout_seconds=3,
        min_interval_seconds=0,
    )

    async def run() -> list[PodWindow]:
        try:
            await source.sample(window, opened + timedelta(seconds=2))
            token.write_text("rotated-token")
            await source.sample(window, opened + timedelta(seconds=4))
            token.unlink()
            return await source.sample(window, opened + timedelta(seconds=6))
        finally:
            await source.close()

    try:
        without_token = asyncio.run(run())
    finally:
        recorder.shutdown()
        recorder.server_close()
        thread.join(timeout=10)
    assert [auth for auth, _ in recorder.seen] == ["Bearer first-token", "Bearer rotated-token"]
    form = recorder.seen[0][1]
    assert form["query"] == [source.query(window, opened + timedelta(seconds=2))]
    assert form["time"] == [f"{(opened + timedelta(seconds=2)).timestamp():.3f}"]
    assert form["timeout"] == ["3"]
    # No token to send: nothing is sent, and the pod is not read.
    assert source.requests == 2
    assert without_token[0].counters is None
    assert (without_token[0].problem or "").startswith(
        f"cannot read the Prometheus bearer token file {token}"
    )
