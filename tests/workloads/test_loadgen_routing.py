"""The dev cluster's load generator routed per site, against real `fogline serve` processes:
a site's servers take its requests in turn, a site with no server counts its requests as
unrouted instead of sending them, the following load goes where its finder says each burst,
and answers from a draining server (`Connection: close`) are counted as such."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fogline.devcluster.loadgen import FollowingLoad, LoadGenerator, LoadPlan, digits_rows
from tests.conftest import wait_for
from tests.workloads.served_artifacts import write_artifact
from tests.workloads.test_server import MODEL, ServerProcess, running_servers, start_server
from tests.workloads.test_server import wait_ready as wait_server_ready

pytestmark = pytest.mark.workloads


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loadgen") / "model"
    write_artifact(folder, name=MODEL)
    return folder


@pytest.fixture(scope="module")
def servers(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    logs = tmp_path_factory.mktemp("loadgen-logs")
    with running_servers(artifact, logs, 2) as started:
        yield [f"http://{server.address}" for server in started]


def test_a_site_s_servers_take_its_requests_in_turn_and_a_site_without_any_sends_none(
    servers: list[str],
) -> None:
    first, second = servers
    plan = LoadPlan.by_route(
        {"site-01": [first, second], "site-02": []}, MODEL, digits_rows(), rate=20, seconds=1
    )
    generator = LoadGenerator(plan)
    results = generator.run()
    # 20 requests due to each site in the second: site-01's split between its two servers.
    assert results[first].statuses == {200: 10} and results[second].statuses == {200: 10}
    assert generator.unrouted == {"site-02": 20}
    assert results[first].closing == results[second].closing == 0


def test_following_load_routed_per_site_goes_where_each_burst_finds_the_servers(
    servers: list[str],
) -> None:
    first, second = servers
    serving = {"site-01": [first]}

    def by_site() -> dict[str, list[str]]:
        return {site: list(targets) for site, targets in serving.items()}

    with FollowingLoad(by_site, MODEL, digits_rows(), rate=20, burst_seconds=0.25) as load:
        wait_for(lambda: first in load.snapshot(), timeout=10, what="the first server's answers")
        serving["site-01"] = [second]  # a replacement: the site's only server is another now
        wait_for(lambda: second in load.snapshot(), timeout=10, what="the second's answers")
        answered_first = load.snapshot()[first].sent
    results = load.snapshot()
    assert set(results) == {first, second}
    # The burst that found the first server ended before the second was found: none after.
    assert results[first].sent == answered_first
    assert all(set(r.statuses) == {200} for r in results.values()), results
    assert load.unrouted == {} and load.problems == []


def test_answers_of_a_draining_server_are_counted_as_closing(
    artifact: Path, tmp_path: Path
) -> None:
    server: ServerProcess = start_server(
        artifact, tmp_path / "draining.log", "--drain-seconds", "10"
    )
    try:
        wait_server_ready(server)
        target = f"http://{server.address}"
        plan = LoadPlan((target,), MODEL, digits_rows(), rate=20, seconds=0.5)
        assert LoadGenerator(plan).run()[target].closing == 0
        server.process.terminate()  # SIGTERM: the server drains, serving on
        wait_for(lambda: "SIGTERM: draining" in server.log.read_text(), what="the drain")
        outcome = LoadGenerator(plan).run()[target]
        assert outcome.statuses == {200: 10} and outcome.closing == 10
    finally:
        server.process.kill()
        server.process.wait(timeout=30)
