"""The per-test namespace is emptied at once and its removal awaited later: what blocks
either still fails loudly, naming what is stuck and the test whose namespace it was."""

from __future__ import annotations

import time
import uuid

import pytest
from kubernetes import client

from fogline.api.crds import GROUP, VERSION
from tests.cluster.conftest import DeletedNamespaces, empty_namespace
from tests.conftest import ClusterHandle, wait_for

pytestmark = pytest.mark.cluster

HOLD = "example.com/hold"  # a finalizer nobody removes


def test_a_resource_nobody_lets_go_fails_the_emptying_by_name(
    cluster: ClusterHandle,
    crds: list[str],
    deleted_namespaces: DeletedNamespaces,
    request: pytest.FixtureRequest,
) -> None:
    core, custom = client.CoreV1Api(cluster.api), client.CustomObjectsApi(cluster.api)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    held = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EdgeDeployment",
        "metadata": {"name": "held", "finalizers": [HOLD]},
        "spec": {"model": {"uri": "https://models.example/d", "digest": "sha256:" + "ab" * 32}},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, name, "edgedeployments", held)
    try:
        with pytest.raises(pytest.fail.Exception, match="edgedeployments/held"):
            empty_namespace(cluster, name, timeout=2)
    finally:
        patch = {"metadata": {"finalizers": None}}
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, name, "edgedeployments", "held", patch
        )


def test_a_namespace_still_there_when_due_fails_naming_its_test(cluster: ClusterHandle) -> None:
    core = client.CoreV1Api(cluster.api)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_config_map(name, {"metadata": {"name": "held", "finalizers": [HOLD]}})
    deleted = DeletedNamespaces(cluster)
    deleted.delete(name, "the-owning-test")
    try:
        deleted.fail_if_overdue()  # not due yet
        # The namespace controller has been at it: only the finalizer keeps the namespace.
        wait_for(
            lambda: core.read_namespaced_config_map("held", name).metadata.deletion_timestamp,
            timeout=30,
            what="the namespace controller to delete the ConfigMap",
        )
        deleted.pending[name] = ("the-owning-test", time.monotonic())  # due now
        with pytest.raises(pytest.fail.Exception, match=f"{name}.*the-owning-test"):
            deleted.wait_all()
    finally:
        core.patch_namespaced_config_map("held", name, {"metadata": {"finalizers": None}})
    deleted.await_later(name, "the-owning-test")
    deleted.wait_all()
    assert deleted.remaining() == {}
