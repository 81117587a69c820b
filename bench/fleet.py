"""The rig the controller benchmarks (and the scale test) share: a throwaway dev cluster with
Fogline's CRDs, the operator running as a ServiceAccount of its own so that the apiserver's
audit log can count its requests, watch-based waits and summary statistics. It measures;
it never judges."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import yaml
from kubernetes import client, config, watch
from tests.operator_process import OperatorProcess
from urllib3.exceptions import ProtocolError

from fogline.api.crds import GROUP
from fogline.devcluster import DevCluster, Topology

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO / "crds"
OPERATOR_NAMESPACE = "fogline-system"
OPERATOR_ACCOUNT = "fogline-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
# The images never run (kwok plays the pods); the names only have to be valid.
OPERATOR_ENV = {
    "FOGLINE_TRAINER_IMAGE": "registry.example/fogline-trainer:bench",
    "FOGLINE_SERVER_IMAGE": "registry.example/fogline-server:bench",
}


def audit_now() -> str:
    """Now, written as the audit log writes requestReceivedTimestamp (sortable as text)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def api_client(kubeconfig: Path, pool: int = 32) -> client.ApiClient:
    """A client with a connection pool wide enough for the benchmarks' worker threads."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = pool
    return client.ApiClient(configuration)


@dataclass
class MeasuredCluster:
    """A dev cluster, an admin client, and the operator acting as OPERATOR_USER."""

    devcluster: DevCluster
    api: client.ApiClient
    operator: OperatorProcess
    user: str = OPERATOR_USER

    def requests(self, since: str, until: str, user: str | None = None) -> list[ApiRequest]:
        return read_requests(self.devcluster.audit_log, user or self.user, since, until)


@contextlib.contextmanager
def measured_cluster(
    topology: Topology, directory: Path | None = None, start_operator: bool = True
) -> Iterator[MeasuredCluster]:
    """Start a dev cluster in `directory` (a temporary one by default), apply crds/, run the
    operator as its own ServiceAccount; stop and remove everything on the way out."""
    owned = directory is None
    root = Path(tempfile.mkdtemp(prefix="fogline-bench-")) if directory is None else directory
    devcluster = DevCluster(root / "cluster")
    try:
        devcluster.up(topology, timeout=300)
        api = api_client(devcluster.kubeconfig)
        try:
            _apply_crds(devcluster, api)
            kubeconfig = _operator_kubeconfig(devcluster, api, root / "operator.kubeconfig")
            log_dir = root / "operator-logs"
            log_dir.mkdir(exist_ok=True)
            operator = OperatorProcess(kubeconfig, log_dir, OPERATOR_ENV)
            if start_operator:
                operator.start()
            try:
                yield MeasuredCluster(devcluster, api, operator)
            finally:
                operator.stop()
        finally:
            api.close()
    finally:
        devcluster.down()
        if owned:
            shutil.rmtree(root, ignore_errors=True)


def _apply_crds(devcluster: DevCluster, api: client.ApiClient) -> None:
    devcluster.kubectl(
        "apply", "--server-side", "--field-manager=fogline-bench", "-f", str(CRD_DIR)
    )
    extensions = client.ApiextensionsV1Api(api)
    names = {f"{plural}.{GROUP}" for plural in ("modeltrainings", "edgedeployments")}

    def established() -> bool:
        for name in names:
            crd = extensions.read_custom_resource_definition(name)
            conditions = (crd.status.conditions if crd.status else None) or []
            if not any(c.type == "Established" and c.status == "True" for c in conditions):
                return False
        return True

    poll_until(established, timeout=60, what="the CRDs to be Established")


def _operator_kubeconfig(devcluster: DevCluster, api: client.ApiClient, path: Path) -> Path:
    """A ServiceAccount for the operator, bound to cluster-admin (what it may do is the RBAC
    tests' business; here only who asked matters), and a kubeconfig with its bound token."""
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    core.create_namespaced_service_account(
        OPERATOR_NAMESPACE, {"metadata": {"name": OPERATOR_ACCOUNT}}
    )
    client.RbacAuthorizationV1Api(api).create_cluster_role_binding(
        {
            "metadata": {"name": "fogline-bench-operator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": OPERATOR_ACCOUNT,
                    "namespace": OPERATOR_NAMESPACE,
                }
            ],
        }
    )
    token = core.create_namespaced_service_account_token(
        OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, {"spec": {"expirationSeconds": 7200}}
    )
    admin: dict[str, Any] = yaml.safe_load(devcluster.kubeconfig.read_text())
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fogline-dev", "cluster": admin["clusters"][0]["cluster"]}],
                "users": [{"name": OPERATOR_USER, "user": {"token": token.status.token}}],
                "contexts": [
                    {
                        "name": "operator",
                        "context": {"cluster": "fogline-dev", "user": OPERATOR_USER},
                    }
                ],
                "current-context": "operator",
            }
        )
    )
    return path


def create_namespace(api: client.ApiClient, name: str) -> None:
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})


# -- waiting -------------------------------------------------------------------------------


def poll_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Informer:
    """Watches one collection in a thread and keeps its objects (plain dicts) by name, as a
    controller's cache would; `changed(kind, obj)` runs under the lock on every event."""

    def __init__(self, list_call: Callable[..., Any], **list_args: Any) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self._list_call, self._list_args = list_call, list_args
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._watch = watch.Watch()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the watch did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._watch.stop()
        self._thread.join(timeout=1)  # a stream blocked until its timeout ends on its own

    def changed(self, kind: str, obj: dict[str, Any]) -> None:
        """A hook for subclasses."""

    def _run(self) -> None:
        resource_version = ""
        while not self._stop.is_set():
            if not resource_version:
                listing = self._list_call(**self._list_args, _preload_content=False)
                body = json.loads(listing.data)
                resource_version = body["metadata"]["resourceVersion"]
                for item in body.get("items") or []:
                    self._apply("ADDED", item)
                self._ready.set()
            # The server ends each watch after a while; the loop then resumes from there.
            stream = self._watch.stream(
                self._list_call,
                **self._list_args,
                resource_version=resource_version,
                timeout_seconds=30,
                allow_watch_bookmarks=True,
            )
            try:
                for event in stream:
                    obj = event.get("raw_object") or {}
                    if event.get("type") == "ERROR":
                        resource_version = ""  # expired: list again
                        break
                    metadata = obj.get("metadata", {})
                    resource_version = metadata.get("resourceVersion", resource_version)
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self._apply(event["type"], obj)
            except ProtocolError:
                if self._stop.is_set():
                    return
                resource_version = ""  # the connection broke: list again

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with self._changed:
            if kind == "DELETED":
                self.objects.pop(name, None)
            else:
                self.objects[name] = obj
            self.changed(kind, obj)
            self._changed.notify_all()

    def wait_until(self, predicate: Callable[[], Any], timeout: float, what: str) -> None:
        """Block until predicate() (called under the lock, after each event) is truthy."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout=timeout):
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class FirstSeen(Informer):
    """An Informer that records, per key, the monotonic time an object first satisfied
    `accept`; `key(obj)` names it (None: not counted)."""

    def __init__(
        self,
        list_call: Callable[..., Any],
        key: Callable[[dict[str, Any]], str | None],
        accept: Callable[[dict[str, Any]], bool] = lambda _: True,
        **list_args: Any,
    ) -> None:
        super().__init__(list_call, **list_args)
        self.seen: dict[str, float] = {}
        self._key, self._accept = key, accept

    def changed(self, kind: str, obj: dict[str, Any]) -> None:
        name = self._key(obj)
        if kind != "DELETED" and name is not None and name not in self.seen and self._accept(obj):
            self.seen[name] = time.monotonic()

    def wait(self, names: Iterable[str], timeout: float) -> dict[str, float]:
        """Block until every name has been seen; their first-seen times."""
        wanted = set(names)
        self.wait_until(lambda: wanted <= self.seen.keys(), timeout, f"{len(wanted)} objects")
        return {n: self.seen[n] for n in wanted}


def label(name: str) -> Callable[[dict[str, Any]], str | None]:
    def key(obj: dict[str, Any]) -> str | None:
        value = (obj.get("metadata", {}).get("labels") or {}).get(name)
        return str(value) if value is not None else None

    return key


def object_name(obj: dict[str, Any]) -> str | None:
    name = obj.get("metadata", {}).get("name")
    return str(name) if name is not None else None


# -- the audit log -------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiRequest:
    """One audited request, as much of it as the benchmarks count."""

    verb: str
    resource: str  # with "/subresource" where there is one; "" for non-resource URLs
    user_agent: str
    code: int
    # When the apiserver received it and when it had sent the whole answer (audit_now's
    # format): a request received before another's answer was complete overlapped it.
    received: str = ""
    completed: str = ""

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS

    @property
    def from_kopf(self) -> bool:
        """kopf's own machinery (watches, Events) rather than the controllers' KubeClient,
        which names itself fogline/<version>."""
        return self.user_agent.startswith("kopf/")


def read_requests(audit_log: Path, user: str, since: str, until: str) -> list[ApiRequest]:
    """Requests by `user` received in [since, until], audit timestamps as audit_now()."""
    settle_audit_log(audit_log)
    found: list[ApiRequest] = []
    with audit_log.open() as lines:
        for line in lines:
            if user not in line:
                continue  # cheap filter before parsing; the log holds every component's calls
            event = json.loads(line)
            received = event.get("requestReceivedTimestamp", "")
            if event["user"]["username"] != user or not since <= received <= until:
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "")
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            found.append(
                ApiRequest(
                    verb=event["verb"],
                    resource=resource,
                    user_agent=event.get("userAgent", ""),
                    code=int((event.get("responseStatus") or {}).get("code", 0)),
                    received=received,
                    completed=event.get("stageTimestamp", ""),
                )
            )
    return found


def settle_audit_log(audit_log: Path, timeout: float = 5.0) -> None:
    """The apiserver writes an event when the response completes; wait for a quiet moment."""
    deadline = time.monotonic() + timeout
    size = -1
    while time.monotonic() < deadline:
        current = audit_log.stat().st_size
        if current == size:
            return
        size = current
        time.sleep(0.5)


def by_verb(requests: Iterable[ApiRequest]) -> Counter[str]:
    return Counter(r.verb for r in requests)


def by_verb_and_resource(requests: Iterable[ApiRequest]) -> Counter[str]:
    return Counter(f"{r.verb} {r.resource}" for r in requests)


def format_counts(counts: Counter[str]) -> str:
    return ", ".join(
        f"{key} {n}" for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    )


# -- statistics ----------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def events_relist(request: ApiRequest) -> bool:
    """The apiserver keeps no watch cache for Events (kube-apiserver's default), so the
    watch on Warnings about DaemonSets gets no bookmarks: kopf reopens it after 70 s of
    silence, and lists it again once its resourceVersion is compacted (every 5 min at
    most). A periodic read of one filtered list, not a reconcile's."""
    return request.verb == "list" and request.resource == "events"
