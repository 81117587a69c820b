"""The one place that talks to the Kubernetes API for the controllers: server-side apply
with Fogline's field manager, deletes, status patches of our CRs. Calls run in a worker
thread so that kopf's event loop never blocks on the network."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

FIELD_MANAGER = "fogline"
GROUP = "fogline.io"
VERSION = "v1alpha1"

# apiVersion/kind -> (path prefix, plural, namespaced) for the kinds the operator manages.
_KINDS: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs", True),
    ("v1", "Service"): ("/api/v1", "services", True),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts", True),
    ("v1", "Pod"): ("/api/v1", "pods", True),
    ("apps/v1", "DaemonSet"): ("/apis/apps/v1", "daemonsets", True),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): (
        "/apis/rbac.authorization.k8s.io/v1",
        "rolebindings",
        True,
    ),
    (f"{GROUP}/{VERSION}", "ModelTraining"): (f"/apis/{GROUP}/{VERSION}", "modeltrainings", True),
    (f"{GROUP}/{VERSION}", "EdgeDeployment"): (f"/apis/{GROUP}/{VERSION}", "edgedeployments", True),
}


def load_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the usual kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    try:
        prefix, plural, namespaced = _KINDS[(api_version, kind)]
    except KeyError as err:
        raise ValueError(f"the operator does not manage {api_version} {kind}") from err
    path = prefix
    if namespaced and namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    return path


class KubeClient:
    """Async facade over the synchronous kubernetes client."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api or load_api_client()
        self.calls = 0  # API requests made, for benchmarks and scale tests
        self.metrics: Any = None  # OperatorMetrics, when the operator exposes them

    async def _call(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
                    content_type: str = "application/json") -> Any:  # fmt: skip
        self.calls += 1
        if self.metrics is not None:
            self.metrics.api_requests += 1
        return await asyncio.to_thread(self._request, method, path, body, query or [], content_type)

    def _request(
        self, method: str, path: str, body: Any, query: list[tuple[str, str]], content_type: str
    ) -> Any:
        serialized = self.api.param_serialize(
            method,
            path,
            query_params=query,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*serialized)
        data = response.read()
        if not 200 <= response.status < 300:
            error = ApiException(status=response.status, reason=response.reason)
            error.body = data.decode(errors="replace") if isinstance(data, bytes) else data
            raise error
        return json.loads(data) if data else None

    async def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply with force: the operator owns the fields it sets, so drift on
        them is corrected and fields others own are left alone."""
        meta = body["metadata"]
        path = _path(body["apiVersion"], body["kind"], meta.get("namespace"), meta["name"])
        result: dict[str, Any] = await self._call(
            "PATCH", path, dict(body), [("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )  # fmt: skip
        return result

    async def patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                    patch: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
        """A JSON merge patch: for single fields whose owner is not us alone (a Job's suspend)."""
        result: dict[str, Any] = await self._call(
            "PATCH", _path(api_version, kind, namespace, name), dict(patch),
            content_type="application/merge-patch+json",
        )  # fmt: skip
        return result

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._call(
                "GET", _path(api_version, kind, namespace, name)
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return result

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str,
                     propagation: str = "Background") -> bool:  # fmt: skip
        """Delete an object; False when it was already gone."""
        try:
            await self._call("DELETE", _path(api_version, kind, namespace, name),
                             {"propagationPolicy": propagation})  # fmt: skip
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Merge-patch the status subresource of one of our CRs."""
        path = _path(f"{GROUP}/{VERSION}", kind, namespace, name) + "/status"
        await self._call(
            "PATCH", path, {"status": dict(status)}, content_type="application/merge-patch+json"
        )

    async def list(self, api_version: str, kind: str, namespace: str | None,
                   label_selector: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
        query = [("labelSelector", label_selector)] if label_selector else []
        result = await self._call("GET", _path(api_version, kind, namespace), query=query)
        items: list[dict[str, Any]] = result.get("items") or []
        return items
