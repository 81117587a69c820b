"""A development-only node agent: it registers local nodes that kwok leaves alone and runs
the pods bound to them as local processes of Fogline's own images, reporting their real
status. Not a kubelet: no images, no isolation, no resource limits; never run it in production."""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from fogline.devcluster.localpods import (
    IMAGE_ENTRYPOINTS,
    LOCALHOST,
    PodAddresses,
    PodSpecError,
    PodView,
    bind_to_pod,
    container_env,
    expand,
    field_value,
    image_kind,
    pod_conditions,
    pod_folder_name,
    pod_phase,
    pod_ports,
    probe_port,
    resolve_command,
    unknown_image_message,
)
from fogline.devcluster.topology import local_nodes

log = logging.getLogger("fogline.nodeagent")

TICK_SECONDS = 0.2
HEARTBEAT_SECONDS = 10.0
PROBE_PERIOD_CAP_SECONDS = 2.0  # probes run at least this often, so the demo stays brisk
BACKOFF_BASE, BACKOFF_CAP, BACKOFF_RESET = 1.0, 30.0, 60.0
ADDRESS_ATTEMPTS = 16  # addresses tried for a pod whose ports are taken elsewhere
SHUTDOWN_GRACE_SECONDS = 5.0
TERMINATION_MESSAGE_LIMIT = 4096
MERGE_PATCH = "application/merge-patch+json"
# Variables of the agent's own environment that a local process needs to work at all.
PASSED_THROUGH = (
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "USER",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _can_listen(address: str, ports: list[int]) -> bool:
    """Whether every port is free on the address: nothing else on this machine (another dev
    cluster's pod, a process on 0.0.0.0) listens there."""
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


# Second octets the local pod networks never use: 127.0.0.0/16 holds the nodes' own address,
# 127.244.0.0/16 is kwok's pods' (cluster.KWOK_POD_CIDR).
RESERVED_OCTETS = frozenset({0, 244, 255})


def random_pod_network() -> str:
    """A /16 of the loopback network, drawn at random, so that two dev clusters on one machine
    (two test sessions) almost never hand out the same addresses; _can_listen catches the rest."""
    octet = random.choice([n for n in range(1, 255) if n not in RESERVED_OCTETS])
    return f"127.{octet}.0.0/16"


@dataclass(frozen=True)
class AgentConfig:
    root: Path  # every folder the agent makes lives here: pods/, pvc/, hostpath/, logs/
    server: str
    ca_file: str
    sites: tuple[str, ...] = ("site-01",)  # one local edge node in each
    gpus: int = 1
    configured_images: Mapping[str, str] = field(default_factory=dict)
    python: Path = Path(sys.executable)
    pod_network: str = field(default_factory=random_pod_network)  # each pod's address from it

    @property
    def bin_dir(self) -> Path:
        return self.python.parent


def container_log_path(root: Path, namespace: str, pod: str, container: str) -> Path:
    """Where a local container's stdout and stderr go (there is no `kubectl logs`)."""
    return root / "logs" / namespace / pod / f"{container}.log"


class LocalContainer:
    """One container of a pod: its launch plan, its process, the status the kubelet would show."""

    def __init__(self, spec: Mapping[str, Any], is_init: bool) -> None:
        self.spec, self.is_init = spec, is_init
        self.name: str = spec["name"]
        self.argv: list[str] = []
        self.env: dict[str, str] = {}
        self.cwd = Path()
        self.termination_file: Path | None = None
        self.log_file = Path()
        self.process: subprocess.Popen[bytes] | None = None
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.started_at, self.started_monotonic = "", 0.0
        self.restarts = self.failures = self.probe_ok = self.probe_failed = 0
        self.next_start = self.next_probe = 0.0
        self.finished = self.ready = self.broken = False

    def fail(self, err: PodSpecError, restart_policy: str) -> None:
        """It can never start: a terminal state when nothing restarts it, waiting otherwise."""
        self.broken = True
        if restart_policy == "Never":
            self.finished = True
            self.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": err.reason,
                    "message": err.message,
                    "finishedAt": _now(),
                }
            }
        else:
            self.state = {"waiting": {"reason": err.reason, "message": err.message}}

    def status(self) -> dict[str, Any]:
        result = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "restartCount": self.restarts,
            "started": "running" in self.state,
        }
        if self.process is not None:
            result["containerID"] = f"local://{self.process.pid}"
        return result


class PodRunner(threading.Thread):
    """Runs one pod: init containers in order, then its containers with restarts, probes and
    status reports; on deletion stops the processes and finalizes the pod."""

    def __init__(self, agent: NodeAgent, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent, self.pod = agent, pod
        self.namespace, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.folder = agent.root_pods() / pod_folder_name(self.namespace, self.pod_name, self.uid)
        self.restart_policy: str = pod["spec"].get("restartPolicy", "Always")
        self.inits = [LocalContainer(c, True) for c in pod["spec"].get("initContainers") or []]
        self.mains = [LocalContainer(c, False) for c in pod["spec"]["containers"]]
        self.ip = ""  # the pod's own loopback address, once prepared
        self.published: dict[str, Any] | None = None
        self.start_time = pod.get("status", {}).get("startTime") or _now()
        # (grace seconds, delete the pod, keep its volumes)
        self.stop_request: tuple[float, bool, bool] | None = None
        self.stopping = False

    def request_stop(self, grace: float, delete: bool, keep_volumes: bool = False) -> None:
        """Stop the pod's processes; `keep_volumes` (the agent shutting down, as a node does)
        leaves its folder, so that its emptyDirs are there when the agent runs it again."""
        if self.stop_request is None:
            self.stop_request = (grace, delete, keep_volumes)

    def run(self) -> None:
        try:
            self._prepare()
        except (PodSpecError, ApiException, OSError) as err:
            failure = (
                err
                if isinstance(err, PodSpecError)
                else PodSpecError("CreateContainerConfigError", f"preparing the pod failed: {err}")
            )
            for container in [*self.inits, *self.mains]:
                if not container.broken:
                    container.fail(failure, self.restart_policy)
        while self.stop_request is None:
            self._step()
            self._publish()
            time.sleep(TICK_SECONDS)
        grace, delete, keep_volumes = self.stop_request
        self._stop_processes(grace)
        if delete:
            self._publish()
            self.agent.finalize(self.namespace, self.pod_name, self.uid)
        self.agent.release_address(self.uid)
        if not keep_volumes:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- preparing: volumes, ports, per-container launch plans ---------------------------
    def _prepare(self) -> None:
        previous = (self.pod.get("status") or {}).get("podIP")
        self.ip = self.agent.pod_address(self.uid, pod_ports(self.pod), previous)
        self.folder.mkdir(parents=True, exist_ok=True)
        volumes, token = self.agent.materialize_volumes(self.pod, self.folder / "volumes", self.ip)
        kubeconfig = self.folder / "kubeconfig" if token else None
        if kubeconfig is not None and token is not None:
            kubeconfig.write_text(yaml.safe_dump(self.agent.pod_kubeconfig(token)))
        host, _, port = self.agent.config.server.removeprefix("https://").partition(":")
        service_env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port or "443"}
        for container in [*self.inits, *self.mains]:
            try:
                self._plan(container, volumes, service_env, kubeconfig)
            except PodSpecError as err:
                container.fail(err, self.restart_policy)

    def _env_from(self, spec: Mapping[str, Any]) -> dict[str, str]:
        """envFrom's Secrets and ConfigMaps, read now as the kubelet does at container start."""
        namespace = self.pod["metadata"]["namespace"]
        values: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            try:
                if ref := source.get("secretRef"):
                    secret = self.agent.core.read_namespaced_secret(ref["name"], namespace)
                    data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
                elif ref := source.get("configMapRef"):
                    data = (
                        self.agent.core.read_namespaced_config_map(ref["name"], namespace).data
                        or {}
                    )
                else:
                    continue
            except ApiException as err:
                if err.status == 404 and ref.get("optional"):
                    continue
                raise PodSpecError(
                    "CreateContainerConfigError", f"envFrom {ref['name']!r}: {err.reason}"
                ) from None
            values |= {prefix + k: v for k, v in data.items()}
        return values

    def _plan(
        self,
        c: LocalContainer,
        volumes: Mapping[str, Path],
        service_env: Mapping[str, str],
        kubeconfig: Path | None,
    ) -> None:
        image = c.spec.get("image", "")
        kind = image_kind(image, self.agent.config.configured_images)
        if kind is None:
            raise PodSpecError("UnknownImage", unknown_image_message(image))
        root = self.folder / "containers" / c.name
        termination_path = c.spec.get("terminationMessagePath") or "/dev/termination-log"
        mounts = c.spec.get("volumeMounts") or []
        view = PodView(root, [m["mountPath"] for m in mounts] + [termination_path])
        for mount in sorted(mounts, key=lambda m: len(m["mountPath"])):
            if mount["name"] not in volumes:
                raise PodSpecError(
                    "CreateContainerConfigError", f"volumeMount {mount['name']!r}: no such volume"
                )
            link = Path(view.local(mount["mountPath"]))
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(volumes[mount["name"]] / mount.get("subPath", ""))
        c.termination_file = Path(view.local(termination_path))
        c.termination_file.parent.mkdir(parents=True, exist_ok=True)
        env = container_env(self.pod, c.spec, service_env, self._env_from(c.spec), self.ip)
        command = c.spec.get("command") or list(IMAGE_ENTRYPOINTS[kind])
        argv = bind_to_pod(
            [expand(a, env) for a in [*command, *(c.spec.get("args") or [])]], self.ip
        )
        c.argv = resolve_command(
            [view.rewrite_arg(a) for a in argv], self.agent.config.python, self.agent.config.bin_dir
        )
        local_env = {k: view.rewrite_value(v) for k, v in env.items()}
        local_env.setdefault("FOGLINE_PVC_ROOT", str(root) + "/mnt/pvc")
        local_env.setdefault("FOGLINE_TERMINATION_LOG", str(c.termination_file))
        local_env.setdefault("HOSTNAME", self.pod_name)
        if view.covers("/tmp"):
            local_env.setdefault("TMPDIR", view.local("/tmp"))
        if kubeconfig is not None:
            local_env.setdefault("KUBECONFIG", str(kubeconfig))
        base = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
        base["PATH"] = f"{self.agent.config.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        c.env = {**base, **local_env}
        working_dir = c.spec.get("workingDir")
        c.cwd = Path(view.local(working_dir)) if working_dir and view.covers(working_dir) else root
        c.log_file = container_log_path(
            self.agent.config.root, self.namespace, self.pod_name, c.name
        )

    # -- running ---------------------------------------------------------------------------
    def _step(self) -> None:
        for init in self.inits:
            if not (init.finished and init.state["terminated"]["exitCode"] == 0):
                if not init.finished:
                    self._drive(init)
                return
        for container in self.mains:
            self._drive(container)

    def _drive(self, c: LocalContainer) -> None:
        if c.broken or c.finished:
            return
        if c.process is None:
            if time.monotonic() >= c.next_start:
                self._start(c)
            return
        code = c.process.poll()
        if code is None:
            self._probe(c)
        else:
            self._exited(c, code)

    def _start(self, c: LocalContainer) -> None:
        assert c.termination_file is not None
        c.termination_file.write_text("")
        c.log_file.parent.mkdir(parents=True, exist_ok=True)
        with c.log_file.open("ab") as log_file:
            try:
                c.process = subprocess.Popen(
                    c.argv,
                    env=c.env,
                    cwd=c.cwd,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as err:
                c.fail(PodSpecError("StartError", f"{c.argv[0]}: {err}"), self.restart_policy)
                return
        c.started_at, c.started_monotonic = _now(), time.monotonic()
        c.state = {"running": {"startedAt": c.started_at}}
        c.ready = not c.spec.get("readinessProbe")
        c.probe_ok = c.probe_failed = 0
        c.next_probe = 0.0

    def _exited(self, c: LocalContainer, code: int) -> None:
        assert c.process is not None and c.termination_file is not None
        exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
        message = c.termination_file.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(
            errors="replace"
        )
        if (
            not message
            and exit_code
            and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            message = c.log_file.read_bytes()[-2048:].decode(errors="replace")
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": c.started_at,
            "finishedAt": _now(),
            "containerID": f"local://{c.process.pid}",
        }
        if message:
            terminated["message"] = message
        c.process, c.ready = None, False
        policy = self.restart_policy
        if c.is_init:
            restart = exit_code != 0 and policy != "Never"
        else:
            restart = policy == "Always" or (policy == "OnFailure" and exit_code != 0)
        if not restart or self.stopping:
            c.state, c.finished = {"terminated": terminated}, True
            return
        if time.monotonic() - c.started_monotonic > BACKOFF_RESET:
            c.failures = 0
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**c.failures)
        c.failures += 1
        c.restarts += 1
        c.last_state = {"terminated": terminated}
        message = f"back-off {delay:.0f}s restarting failed container={c.name} pod={self.pod_name}"
        c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
        c.next_start = time.monotonic() + delay

    def _probe(self, c: LocalContainer) -> None:
        probe = c.spec.get("readinessProbe")
        now = time.monotonic()
        if not probe or now < c.next_probe:
            return
        if now < c.started_monotonic + probe.get("initialDelaySeconds", 0):
            return
        c.next_probe = now + min(PROBE_PERIOD_CAP_SECONDS, probe.get("periodSeconds", 10))
        if self._check(probe, c):
            c.probe_ok, c.probe_failed = c.probe_ok + 1, 0
            c.ready = c.ready or c.probe_ok >= probe.get("successThreshold", 1)
        else:
            c.probe_ok, c.probe_failed = 0, c.probe_failed + 1
            c.ready = c.ready and c.probe_failed < probe.get("failureThreshold", 3)

    def _check(self, probe: Mapping[str, Any], c: LocalContainer) -> bool:
        """One real probe against the pod's address; exec and grpc probes pass while running."""
        timeout = probe.get("timeoutSeconds", 1)
        try:
            if action := probe.get("httpGet"):
                port = probe_port(action, c.spec)
                scheme = action.get("scheme", "HTTP").lower()
                url = f"{scheme}://{self.ip}:{port}{action.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as reply:
                    status: int = reply.status
                    return 200 <= status < 400
            if action := probe.get("tcpSocket"):
                port = probe_port(action, c.spec)
                with socket.create_connection((self.ip, port), timeout=timeout):
                    return True
        except (urllib.error.URLError, OSError, PodSpecError):
            return False
        return True

    def _stop_processes(self, grace: float) -> None:
        """SIGTERM every running process group, SIGKILL what outlives the grace period."""
        self.stopping = True
        running = [c for c in [*self.inits, *self.mains] if c.process is not None]
        for c in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.process.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + grace
        while any(c.process is not None for c in running) and time.monotonic() < deadline:
            for c in running:
                if c.process is not None and (code := c.process.poll()) is not None:
                    self._exited(c, code)
            time.sleep(0.05)
        for c in running:
            if c.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.process.pid, signal.SIGKILL)
                self._exited(c, c.process.wait())

    # -- reporting -------------------------------------------------------------------------
    def _publish(self) -> None:
        init_statuses = [c.status() for c in self.inits]
        statuses = [c.status() for c in self.mains]
        phase = pod_phase(self.restart_policy, init_statuses, statuses)
        existing = (self.published or self.pod.get("status") or {}).get("conditions") or []
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": pod_conditions(existing, phase, init_statuses, statuses, _now()),
            "hostIP": LOCALHOST,
            "hostIPs": [{"ip": LOCALHOST}],
            "startTime": self.start_time,
            "initContainerStatuses": init_statuses,
            "containerStatuses": statuses,
        }
        if self.ip:
            status |= {"podIP": self.ip, "podIPs": [{"ip": self.ip}]}
        if status == self.published:
            return
        try:
            self.agent.core.patch_namespaced_pod_status(
                self.pod_name, self.namespace, {"status": status}, _content_type=MERGE_PATCH
            )
            self.published = status
        except ApiException as err:
            if err.status == 404:
                self.request_stop(0, delete=False)
            else:
                log.warning("%s: status update failed: %s", self.name, err.reason)
        except HTTPError as err:
            log.warning("%s: status update failed: %s", self.name, err)


class NodeAgent:
    """Registers the local nodes, keeps them Ready, and runs one PodRunner per bound pod."""

    def __init__(self, config: AgentConfig, api: client.ApiClient) -> None:
        self.config = config
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.nodes = local_nodes(*config.sites, gpus=config.gpus)
        self.runners: dict[str, PodRunner] = {}
        self.lock = threading.Lock()
        self.addresses = PodAddresses(config.pod_network)
        self.stopped = threading.Event()
        self.started = _now()

    def run(self) -> None:
        self.register_nodes()
        self.sweep_pod_folders()
        names = [n["metadata"]["name"] for n in self.nodes]
        threads = [threading.Thread(target=self._heartbeat, daemon=True)]
        threads += [threading.Thread(target=self._watch, args=(n,), daemon=True) for n in names]
        for thread in threads:
            thread.start()
        log.info("local nodes %s registered; running their pods under %s", names, self.config.root)
        self.stopped.wait()
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            # A node that goes down keeps its disk: when the agent starts again, a pod still
            # bound here runs its init steps again over the emptyDirs it had (as the kubelet
            # recreates a pod's sandbox after a reboot), and a pod cache needs no network.
            runner.request_stop(SHUTDOWN_GRACE_SECONDS, delete=False, keep_volumes=True)
        for runner in runners:
            runner.join(SHUTDOWN_GRACE_SECONDS + 2)

    def sweep_pod_folders(self) -> None:
        """Remove the folders (volumes) of pods that left these nodes while the agent was
        down; those of pods still bound here stay for their runners."""
        pods = self.root_pods()
        if not pods.is_dir():
            return
        keep: set[str] = set()
        for node in self.nodes:
            listed = self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node['metadata']['name']}"
            )
            keep |= {
                pod_folder_name(p.metadata.namespace, p.metadata.name, p.metadata.uid)
                for p in listed.items
            }
        for folder in pods.iterdir():
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def root_pods(self) -> Path:
        return self.config.root / "pods"

    # -- nodes -----------------------------------------------------------------------------
    def _node_status(self, node: Mapping[str, Any]) -> dict[str, Any]:
        now = _now()
        checks = (
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        )
        conditions = [
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "lastHeartbeatTime": now,
                "message": "the dev node agent runs this node's pods as local processes",
                "lastTransitionTime": self.started,
            }
            for kind, status, reason in checks
        ]
        name = node["metadata"]["name"]
        return {
            **node["status"],
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": LOCALHOST},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "kubeletVersion": "v0.0.0-fogline-local",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "local-process://",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "local",
                "kernelVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    def register_nodes(self) -> None:
        for node in self.nodes:
            body = {**node, "status": self._node_status(node)}
            name = node["metadata"]["name"]
            try:
                self.core.create_node(body)
            except ApiException as err:
                if err.status != 409:
                    raise
                patch = {"metadata": {"labels": node["metadata"]["labels"]}, "spec": node["spec"]}
                self.core.patch_node(name, patch, _content_type=MERGE_PATCH)
            self._renew(node)

    def _renew(self, node: Mapping[str, Any]) -> None:
        name = node["metadata"]["name"]
        self.core.patch_node_status(
            name, {"status": self._node_status(node)}, _content_type=MERGE_PATCH
        )
        renew = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        try:
            self.coordination.patch_namespaced_lease(
                name, "kube-node-lease", {"spec": {"renewTime": renew}}, _content_type=MERGE_PATCH
            )
        except ApiException as err:
            if err.status != 404:
                raise
            uid = self.core.read_node(name).metadata.uid
            self.coordination.create_namespaced_lease(
                "kube-node-lease",
                {
                    "metadata": {
                        "name": name,
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}
                        ],
                    },
                    "spec": {
                        "holderIdentity": name,
                        "leaseDurationSeconds": 40,
                        "renewTime": renew,
                    },
                },
            )

    def _heartbeat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            for node in self.nodes:
                try:
                    self._renew(node)
                except (ApiException, HTTPError) as err:
                    log.warning("heartbeat of %s failed: %s", node["metadata"]["name"], err)

    # -- pods ------------------------------------------------------------------------------
    def _watch(self, node: str) -> None:
        selector = f"spec.nodeName={node}"
        while not self.stopped.is_set():
            try:
                reply = self.core.list_pod_for_all_namespaces(
                    field_selector=selector, _preload_content=False
                )
                listing = json.loads(reply.data)
                for pod in listing["items"]:
                    self.sync(pod)
                self._forget_missing(node, {p["metadata"]["uid"] for p in listing["items"]})
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=30,
                )
                for event in stream:
                    if event["type"] == "ERROR":
                        break
                    if event["type"] == "DELETED":
                        self.forget(event["raw_object"])
                    else:
                        self.sync(event["raw_object"])
            except (ApiException, HTTPError, OSError) as err:
                log.warning("watching pods on %s: %s; listing again", node, err)
                self.stopped.wait(1.0)

    def sync(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        deleting = meta.get("deletionTimestamp") is not None
        with self.lock:
            runner = self.runners.get(meta["uid"])
            if runner is None:
                if deleting:
                    self.finalize(meta["namespace"], meta["name"], meta["uid"])
                    return
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    return  # finished before this agent started
                runner = self.runners[meta["uid"]] = PodRunner(self, pod)
                runner.start()
            runner.pod = pod
        if deleting:
            runner.request_stop(float(meta.get("deletionGracePeriodSeconds") or 0), delete=True)

    def _forget_missing(self, node: str, present: set[str]) -> None:
        """Pods deleted while no watch was open never send a DELETED event."""
        with self.lock:
            missing = [
                uid
                for uid, runner in self.runners.items()
                if runner.pod["spec"].get("nodeName") == node and uid not in present
            ]
        for uid in missing:
            self.forget({"metadata": {"uid": uid}})

    def forget(self, pod: Mapping[str, Any]) -> None:
        with self.lock:
            runner = self.runners.pop(pod["metadata"]["uid"], None)
        if runner is not None:
            runner.request_stop(SHUTDOWN_GRACE_SECONDS, delete=False)

    def finalize(self, namespace: str, name: str, uid: str) -> None:
        """What the kubelet does once a pod's containers stopped: delete it for good."""
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(
                name, namespace, body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
            )

    def pod_address(self, uid: str, ports: list[int], previous: str | None) -> str:
        """The pod's own loopback address: the one its status names (the agent restarted) when
        still free, else the next one whose ports nothing on this machine holds."""
        refused: set[str] = set()
        with self.lock:
            address = self.addresses.claim(uid, previous)
        for _ in range(ADDRESS_ATTEMPTS):
            if address is not None:
                if _can_listen(address, ports):
                    return address
                refused.add(address)
                with self.lock:
                    self.addresses.release(uid)
            with self.lock:
                address = self.addresses.allocate(uid, refused)
        with self.lock:
            self.addresses.release(uid)
        message = (
            f"ports {ports} are taken on {len(refused)} addresses of the local pod network "
            f"{self.addresses.network}; stop what listens there (another dev cluster?)"
        )
        raise PodSpecError("CreateContainerConfigError", message)

    def release_address(self, uid: str) -> None:
        with self.lock:
            self.addresses.release(uid)

    # -- volumes ---------------------------------------------------------------------------
    def materialize_volumes(
        self, pod: Mapping[str, Any], folder: Path, pod_ip: str = LOCALHOST
    ) -> tuple[dict[str, Path], str | None]:
        """A local folder per volume, and the service-account token when one is projected."""
        namespace = pod["metadata"]["namespace"]
        paths: dict[str, Path] = {}
        token: str | None = None
        for volume in pod["spec"].get("volumes") or []:
            name = volume["name"]
            path = folder / name
            if "emptyDir" in volume:
                path.mkdir(parents=True, exist_ok=True)
            elif host := volume.get("hostPath"):
                path = self.config.root / "hostpath" / host["path"].lstrip("/")
                if host.get("type") in ("File", "FileOrCreate"):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
                else:
                    path.mkdir(parents=True, exist_ok=True)
            elif claim := volume.get("persistentVolumeClaim"):
                path = self.config.root / "pvc" / namespace / claim["claimName"]
                path.mkdir(parents=True, exist_ok=True)
            elif image := volume.get("image"):
                path = self.pull_image_volume(image["reference"], self._pull_credentials(pod))
            elif "projected" in volume or "configMap" in volume or "secret" in volume:
                path.mkdir(parents=True, exist_ok=True)
                sources = (volume.get("projected") or {}).get("sources") or [volume]
                for source in sources:
                    token = self._project(pod, source, path, pod_ip) or token
            else:
                kind = next((k for k in volume if k != "name"), "?")
                raise PodSpecError(
                    "CreateContainerConfigError",
                    (
                        f"volume {name!r}: {kind} volumes do not run locally; use emptyDir, hostPath, "
                        "persistentVolumeClaim, configMap, secret, projected or image"
                    ),
                )
            paths[name] = path
        return paths, token

    def _pull_credentials(self, pod: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
        """Registry host -> (user, password) from the pod's imagePullSecrets, as the kubelet
        reads them (kubernetes.io/dockerconfigjson Secrets); a missing Secret is skipped, as the
        kubelet does, and the pull then fails on the registry's refusal."""
        found: dict[str, tuple[str, str]] = {}
        for ref in pod["spec"].get("imagePullSecrets") or []:
            try:
                secret = self.core.read_namespaced_secret(ref["name"], pod["metadata"]["namespace"])
            except ApiException:
                continue
            raw = (secret.data or {}).get(".dockerconfigjson")
            if not raw:
                continue
            for host, entry in json.loads(base64.b64decode(raw)).get("auths", {}).items():
                if "username" in entry:
                    found[host] = (entry["username"], entry.get("password", ""))
                elif "auth" in entry:
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                    found[host] = (user, password)
        return found

    def pull_image_volume(
        self, reference: str, credentials: Mapping[str, tuple[str, str]] | None = None
    ) -> Path:
        """An image volume as the kubelet makes one: the OCI artifact pulled once into the
        node's image folder (each layer a file, named by its title) and shared read-only, with
        the imagePullSecrets' credentials for its registry (Basic, as the dev registry asks).
        Only a registry on loopback is reached, over plain HTTP: the dev cluster's own."""
        import oras.provider

        host = reference.split("/", 1)[0]
        if not host.startswith(("127.0.0.1:", "localhost:")):
            raise PodSpecError(
                "ErrImagePull",
                f"image volume {reference!r}: only a registry "
                "on loopback (the dev cluster's) is reached locally",
            )
        folder = self.config.root / "images" / hashlib.sha256(reference.encode()).hexdigest()[:16]
        if folder.is_dir():
            return folder
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            login = (credentials or {}).get(host)
            registry = oras.provider.Registry(
                host, insecure=True, auth_backend="basic" if login else "token"
            )
            if login:
                registry.auth.set_basic_auth(*login)
            registry.pull(target=reference, outdir=str(partial))
        except Exception as err:  # oras raises requests' and its own errors alike
            shutil.rmtree(partial, ignore_errors=True)
            raise PodSpecError("ErrImagePull", f"image volume {reference!r}: {err}") from err
        for file in partial.rglob("*"):
            if file.is_file():
                file.chmod(0o444)
        partial.rename(folder)
        return folder

    @staticmethod
    def _read_optional(ref: Mapping[str, Any], read: Any, name: str, namespace: str) -> Any:
        """The object a volume source names; None when it is absent and the source optional."""
        try:
            return read(name, namespace)
        except ApiException as err:
            if err.status == 404 and ref.get("optional"):
                return None
            raise

    def _project(
        self, pod: Mapping[str, Any], source: Mapping[str, Any], path: Path, pod_ip: str
    ) -> str | None:
        meta = pod["metadata"]
        namespace = meta["namespace"]
        if sa := source.get("serviceAccountToken"):
            token = self.request_token(pod, sa.get("audience"), sa.get("expirationSeconds", 3607))
            (path / sa["path"]).write_text(token)
            return token
        # Bytes, as the kubelet writes them: a Secret may hold binary keys that are no UTF-8.
        data: dict[str, bytes] = {}
        if ref := source.get("configMap"):
            read_map = self.core.read_namespaced_config_map
            if config_map := self._read_optional(ref, read_map, ref["name"], namespace):
                data = {k: v.encode() for k, v in (config_map.data or {}).items()}
        elif ref := source.get("secret"):
            name = ref.get("secretName") or ref["name"]
            if secret := self._read_optional(
                ref, self.core.read_namespaced_secret, name, namespace
            ):
                data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        elif ref := source.get("downwardAPI"):
            data = {
                item["path"]: field_value(pod, item["fieldRef"]["fieldPath"], pod_ip).encode()
                for item in ref.get("items") or []
                if "fieldRef" in item
            }
            ref = {"items": [{"key": k, "path": k} for k in data]}
        items = ref.get("items") if ref else None
        for key, relative in (
            ((i["key"], i["path"]) for i in items) if items else ((k, k) for k in data)
        ):
            if key not in data and ref and ref.get("optional"):
                continue  # the kubelet leaves out the missing keys of an optional source
            target = path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.get(key, b""))
        return None

    def request_token(self, pod: Mapping[str, Any], audience: str | None, seconds: int) -> str:
        """A real token for the pod's ServiceAccount, bound to the pod (the TokenRequest API)."""
        meta = pod["metadata"]
        body = {
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            }
        }
        reply = self.core.create_namespaced_service_account_token(
            pod["spec"].get("serviceAccountName") or "default",
            meta["namespace"],
            body,
            _preload_content=False,
        )
        token: str = json.loads(reply.data)["status"]["token"]
        return token

    def pod_kubeconfig(self, token: str) -> dict[str, Any]:
        """In-cluster config reads fixed paths a local process cannot have; a kubeconfig with
        the pod's own token gives it the same identity."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "pod",
            "clusters": [
                {
                    "name": "dev",
                    "cluster": {
                        "server": self.config.server,
                        "certificate-authority": self.config.ca_file,
                    },
                }
            ],
            "users": [{"name": "pod", "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "dev", "user": "pod"}}],
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fogline.devcluster.nodeagent",
        description="Development only: run the pods of the local nodes as local processes.",
    )
    parser.add_argument("--kubeconfig", required=True, help="credentials of the agent")
    parser.add_argument("--root", required=True, type=Path, help="folder for pods and volumes")
    parser.add_argument(
        "--site",
        action="append",
        help="a site that gets a local edge node (repeatable; default: site-01)",
    )
    parser.add_argument("--gpus", type=int, default=1, help="nvidia.com/gpu of the local GPU node")
    parser.add_argument(
        "--pod-network",
        default=None,
        help="loopback network the pods' addresses come from (default: a random 127.N.0.0/16)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configuration = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    images = {
        os.environ[var]: kind
        for var, kind in (("FOGLINE_TRAINER_IMAGE", "trainer"), ("FOGLINE_SERVER_IMAGE", "server"))
        if os.environ.get(var)
    }
    agent_config = AgentConfig(
        root=args.root.resolve(),
        server=configuration.host,
        ca_file=configuration.ssl_ca_cert,
        sites=tuple(args.site or ("site-01",)),
        gpus=args.gpus,
        configured_images=images,
        pod_network=args.pod_network or random_pod_network(),
    )
    agent = NodeAgent(agent_config, client.ApiClient(configuration))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.stopped.set())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
