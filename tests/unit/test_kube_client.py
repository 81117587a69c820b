"""The API client's guards against a server that hangs: every call has a read timeout, and
sockets carry TCP keepalive. The hung server is a real loopback socket that accepts and
never answers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
import yaml
from kubernetes import client

from fogline.kube import KubeClient, load_api_client

pytestmark = pytest.mark.unit


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog does) and never replies."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_a_call_to_a_server_that_never_answers_fails_instead_of_hanging(silent_server: int) -> None:
    configuration = client.Configuration(host=f"http://127.0.0.1:{silent_server}")
    configuration.retries = False
    kube = KubeClient(client.ApiClient(configuration), timeout=(0.5, 0.5))

    async def call() -> None:
        # The outer bound only keeps a hang from stalling the suite; the client must give up
        # on its own, long before it.
        await asyncio.wait_for(kube.get("v1", "Pod", "default", "x"), timeout=20)

    # urllib3's read timeout, not the outer bound's TimeoutError.
    with pytest.raises(urllib3.exceptions.HTTPError):
        asyncio.run(call())


def test_sockets_to_the_api_server_carry_tcp_keepalive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            }
        )
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    api = load_api_client(str(kubeconfig))
    options = api.rest_client.pool_manager.connection_pool_kw["socket_options"]
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in options
    assert (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 15) in options
