"""The one place that talks to the Kubernetes API for the controllers: server-side apply
with Fogline's field manager, deletes, status patches of our CRs. Calls run in a worker
thread so that kopf's event loop never blocks on the network, and every call has a
connect and a read timeout, over sockets with TCP keepalive: a half-open connection or a
frozen API server fails the call within seconds (the work queue retries it) instead of
holding a worker thread, and the reconcile waiting on it, forever."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.utils.keepalive import tcp_keepalive_socket_options

from fogline import __version__
from fogline.api.crds import GROUP, VERSION

if TYPE_CHECKING:
    from fogline.controllers.metrics import OperatorMetrics

FIELD_MANAGER = "fogline"

# apiVersion/kind -> (path prefix, plural, namespaced) for the kinds the operator manages.
_KINDS: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs", True),
    ("v1", "Service"): ("/api/v1", "services", True),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts", True),
    ("v1", "Pod"): ("/api/v1", "pods", True),
    ("apps/v1", "DaemonSet"): ("/apis/apps/v1", "daemonsets", True),
    ("networking.k8s.io/v1", "NetworkPolicy"): (
        "/apis/networking.k8s.io/v1",
        "networkpolicies",
        True,
    ),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): (
        "/apis/rbac.authorization.k8s.io/v1",
        "rolebindings",
        True,
    ),
    (f"{GROUP}/{VERSION}", "ModelTraining"): (f"/apis/{GROUP}/{VERSION}", "modeltrainings", True),
    (f"{GROUP}/{VERSION}", "EdgeDeployment"): (f"/apis/{GROUP}/{VERSION}", "edgedeployments", True),
}


USER_AGENT = f"fogline/{__version__}"

# Seconds to connect, and to wait for an answer once connected. No request of ours is a
# watch or a long list (those are kopf's), so 30 s of silence means the server is away.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
# An idle connection is probed after 15 s and dropped after 3 unanswered probes 5 s apart.
KEEPALIVE = {"idle": 15, "interval": 5, "count": 3}


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the usual kubeconfig (or the
    one named); sockets with TCP keepalive."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.socket_options = tcp_keepalive_socket_options(**KEEPALIVE)
    api = client.ApiClient(configuration)
    # Our own name in the API server's audit log and its fairness rules, not the generated
    # client's, which every other Python tool sends too.
    api.user_agent = USER_AGENT
    return api


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

    def __init__(
        self,
        api: client.ApiClient | None = None,
        metrics: OperatorMetrics | None = None,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    ) -> None:
        self.api = api or load_api_client()
        self.calls = 0  # API requests made, for benchmarks and scale tests
        self.metrics = metrics
        self.timeout = timeout

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        self.calls += 1
        if self.metrics is not None:
            self.metrics.api_requests.inc()
        try:
            return await asyncio.to_thread(
                self._request, method, path, body, query or [], content_type
            )
        except ApiException as err:
            if self.metrics is not None:
                self.metrics.api_errors.labels(str(err.status or 0)).inc()
            raise
        except Exception:
            if self.metrics is not None:
                self.metrics.api_errors.labels("0").inc()
            raise

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
        response = self.api.call_api(*serialized, _request_timeout=self.timeout)
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
            "PATCH",
            path,
            dict(body),
            [("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        return result

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
    ) -> dict[str, Any]:
        """A JSON merge patch: for single fields whose owner is not us alone (a Job's suspend)."""
        result: dict[str, Any] = await self._call(
            "PATCH",
            _path(api_version, kind, namespace, name),
            dict(patch),
            content_type="application/merge-patch+json",
        )
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

    async def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        propagation: str = "Background",
    ) -> bool:
        """Delete an object; False when it was already gone."""
        try:
            await self._call(
                "DELETE",
                _path(api_version, kind, namespace, name),
                {"propagationPolicy": propagation},
            )
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> str | None:
        """Merge-patch the status subresource of one of our CRs; the resourceVersion the
        object has after it."""
        path = _path(f"{GROUP}/{VERSION}", kind, namespace, name) + "/status"
        result = await self._call(
            "PATCH", path, {"status": dict(status)}, content_type="application/merge-patch+json"
        )
        version = ((result or {}).get("metadata") or {}).get("resourceVersion")
        return str(version) if version is not None else None

    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result = await self._call("GET", _path(api_version, kind, namespace), query=query)
        items: list[dict[str, Any]] = result.get("items") or []
        return items


def missing_peerings(api: client.ApiClient, name: str, namespaces: list[str]) -> list[str]:
    """The kopf peering objects an operator with peering `name` needs and the cluster
    lacks: the ClusterKopfPeering when it watches the whole cluster, else a KopfPeering in
    each named namespace (globs cannot be checked and are skipped). A list, the verb kopf
    itself uses on them, so that the check needs no extra RBAC."""
    base = "/apis/kopf.dev/v1"
    if not namespaces:
        where = [(f"{base}/clusterkopfpeerings", f"ClusterKopfPeering {name!r}")]
    else:
        where = [
            (f"{base}/namespaces/{ns}/kopfpeerings", f"KopfPeering {name!r} in namespace {ns!r}")
            for ns in namespaces
            if not any(c in ns for c in "*?[!")
        ]
    missing = []
    for path, what in where:
        serialized = api.param_serialize(
            "GET",
            path,
            query_params=[("fieldSelector", f"metadata.name={name}")],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = api.call_api(*serialized, _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        data = response.read()
        if response.status == 404:
            missing.append(f"{what} (the kopf.dev peering CRDs are not installed either)")
        elif not 200 <= response.status < 300:
            error = ApiException(status=response.status, reason=response.reason)
            error.body = data.decode(errors="replace") if isinstance(data, bytes) else data
            raise error
        elif not (json.loads(data) if data else {}).get("items"):
            missing.append(what)
    return missing
