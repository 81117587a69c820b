"""The operator's /metrics endpoint: counters as Prometheus text, served on loopback."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

from fogline.controllers.metrics import OperatorMetrics, serve_metrics

pytestmark = pytest.mark.unit


def test_reconciles_are_counted_by_outcome() -> None:
    metrics = OperatorMetrics()
    with metrics.reconciling("EdgeDeployment"):
        pass
    with pytest.raises(RuntimeError), metrics.reconciling("EdgeDeployment"):
        raise RuntimeError("conflict")
    metrics.events[("Warning", "WaveFailed")] += 1
    metrics.api_requests = 7
    text = metrics.render()
    assert 'fogline_reconciles_total{kind="EdgeDeployment",result="ok"} 1' in text
    assert 'fogline_reconciles_total{kind="EdgeDeployment",result="error"} 1' in text
    assert 'fogline_events_total{type="Warning",reason="WaveFailed"} 1' in text
    assert "fogline_api_requests_total 7" in text


def test_metrics_are_served_over_http_and_other_paths_are_404() -> None:
    metrics = OperatorMetrics(api_requests=3)

    async def scrape() -> tuple[str, int]:
        server = await serve_metrics(metrics, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def get(path: str) -> tuple[str, int]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                    return reply.read().decode(), reply.status
            except urllib.error.HTTPError as err:
                return "", err.code

        try:
            body, _ = await asyncio.to_thread(get, "/metrics")
            _, missing = await asyncio.to_thread(get, "/other")
        finally:
            server.close()
            await server.wait_closed()
        return body, missing

    body, missing = asyncio.run(scrape())
    assert "fogline_api_requests_total 3" in body
    assert missing == 404
