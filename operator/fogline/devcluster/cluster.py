"""Starts and stops the dev cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok as background processes on free loopback ports, all state in one
folder, and optionally the artifact stores beside them (devcluster/stores.py). `up` returns
once the API is healthy and every simulated node is Ready."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fogline.devcluster.binaries import find_tools_dir
from fogline.devcluster.pki import ClientCert, ClusterPKI, create_pki
from fogline.devcluster.stores import ArtifactStores
from fogline.devcluster.topology import Topology, build_nodes, local_nodes

# Start order; `down` stops them in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# Optional: the dev node agent that runs the pods of the local nodes (devcluster/nodeagent.py).
NODE_AGENT = "nodeagent"
SERVICE_CIDR = "10.96.0.0/16"
# kwok's simulated pods get loopback addresses nothing listens on: whatever reaches for one (a
# rollout analysis scraping a simulated server) is refused at once and never leaves this
# machine, as a pod whose server cannot be reached. The local pods' networks lie elsewhere
# in 127.0.0.0/8 (nodeagent.random_pod_network).
KWOK_POD_CIDR = "127.244.0.0/16"

# Sized for a fleet of a thousand simulated nodes on a small shared machine, where a real
# cluster of that size would have a control plane sized for it. The client limits of the
# controller manager and the scheduler default to 20 and 50 requests a second: at 1,000
# nodes the node controller alone took four minutes to lift the not-ready taint of new
# nodes (a get, a patch and an Event each), and no DaemonSet pod lands on a node before.
CONTROL_PLANE_CLIENT_LIMITS = ("--kube-api-qps=500", "--kube-api-burst=1000")
# kwok renews a lease every LEASE_SECONDS / 4 (a kubelet: 40 s, so every 10 s): at 1,000
# nodes 100 lease writes a second, the largest load on the API server and more than kwok's
# default 4 lease workers kept up with on a loaded machine (renewals came 40 to 80 s
# apart), so that nodes flapped to Unknown and the node controller marked their pods
# NotReady, which kwok never reverts (no kubelet reports them again). Leases every 30 s
# and a grace of 120 s keep a simulated node Ready under load; a node that really stops
# (a NotReady annotation) goes NotReady at once, by its stage, not by its lease.
LEASE_SECONDS = 120
NODE_MONITOR_GRACE_SECONDS = 120
# kwok's own options (its defaults: 4 workers each for leases, node and pod stages).
KWOK_CONFIGURATION = {
    "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
    "kind": "KwokConfiguration",
    "options": {
        "nodeLeaseParallelism": 16,
        "nodePlayStageParallelism": 16,
        "podPlayStageParallelism": 16,
    },
}
# The taint the node controller puts on a node until it has seen it Ready.
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


def kwok_config() -> str:
    """kwok's --config: the stages (devcluster/stages.yaml), then kwok's own options."""
    stages = resources.files("fogline.devcluster").joinpath("stages.yaml").read_text()
    return stages + "---\n" + yaml.safe_dump(KWOK_CONFIGURATION)


def node_health_flags() -> dict[str, list[str]]:
    """The flags that decide when a simulated node counts as gone, by component."""
    return {
        "kube-controller-manager": [f"--node-monitor-grace-period={NODE_MONITOR_GRACE_SECONDS}s"],
        "kwok": [f"--node-lease-duration-seconds={LEASE_SECONDS}"],
    }


class DevClusterError(RuntimeError):
    pass


@dataclass
class ClusterState:
    """What `up` leaves in DIR/state.json so that `status` and `down` can find it."""

    server: str
    pids: dict[str, int] = field(default_factory=dict)
    topology: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    ready_seconds: float = 0.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def kubeconfig_for(server: str, ca: Path, client: ClientCert, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "fogline-dev",
                "cluster": {"server": server, "certificate-authority": str(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(client.cert), "client-key": str(client.key)},
            }
        ],
        "contexts": [{"name": "fogline-dev", "context": {"cluster": "fogline-dev", "user": user}}],
        "current-context": "fogline-dev",
    }


class DevCluster:
    """One dev cluster living in `directory`."""

    def __init__(self, directory: Path, tools_dir: Path | None = None) -> None:
        self.directory = directory.resolve()
        self._tools_dir = tools_dir

    # -- paths -------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    @property
    def log_dir(self) -> Path:
        return self.directory / "logs"

    @property
    def local_root(self) -> Path:
        """The node agent's folder: pods/, pvc/<namespace>/<claim>/, hostpath/, logs/."""
        return self.directory / NODE_AGENT

    @property
    def stores(self) -> ArtifactStores:
        """The S3 store and OCI registry beside this cluster (started by `up(stores=True)`)."""
        return ArtifactStores(self.directory / "stores")

    @property
    def tools_dir(self) -> Path:
        if self._tools_dir is None:
            self._tools_dir = find_tools_dir()
        return self._tools_dir

    def read_state(self) -> ClusterState | None:
        if not self.state_file.exists():
            return None
        return ClusterState(**json.loads(self.state_file.read_text()))

    def _write_state(self, state: ClusterState) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2))

    # -- lifecycle -----------------------------------------------------------------------
    def up(
        self,
        topology: Topology,
        timeout: float = 120.0,
        local_nodes: bool = False,
        stores: bool = False,
    ) -> ClusterState:
        """Start every component and create the simulated nodes; with `local_nodes`, also the
        node agent and its real nodes (local-gpu, local-edge); with `stores`, the S3 store and
        the OCI registry. Idempotent for a running cluster; a folder left by a dead cluster is
        cleaned and started afresh."""
        existing = self.read_state()
        if existing is not None:
            if self.is_running(existing):
                if local_nodes and NODE_AGENT not in existing.pids:
                    self._start_node_agent(existing, time.monotonic() + timeout)
                if stores:
                    self.stores.up()
                return existing
            self.down()
        started = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        pki = create_pki(self.directory / "pki")
        api_port = free_port()
        server = f"https://127.0.0.1:{api_port}"
        state = ClusterState(server=server, topology=asdict(topology), started_at=time.time())
        kubeconfigs = {
            name: self._write_kubeconfig(name, server, pki, client)
            for name, client in pki.clients.items()
        }
        try:
            etcd_url = self._start_etcd(state)
            self._start(state, "kube-apiserver", self._apiserver_args(pki, api_port, etcd_url))
            self._wait_healthy(state, pki, deadline=started + timeout)
            self._start(
                state,
                "kube-controller-manager",
                [
                    f"--kubeconfig={kubeconfigs['controller-manager']}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    "--leader-elect=false",
                    "--use-service-account-credentials=true",
                    f"--service-account-private-key-file={pki.sa_private_key}",
                    f"--root-ca-file={pki.ca_cert}",
                    "--cluster-name=fogline-dev",
                    "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle",
                    *CONTROL_PLANE_CLIENT_LIMITS,
                    *node_health_flags()["kube-controller-manager"],
                ],
            )
            self._start(
                state,
                "kube-scheduler",
                [
                    f"--kubeconfig={kubeconfigs['scheduler']}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    *CONTROL_PLANE_CLIENT_LIMITS,
                ],
            )
            stages = self.directory / "kwok-stages.yaml"
            stages.write_text(kwok_config())
            self._start(
                state,
                "kwok",
                [
                    f"--kubeconfig={kubeconfigs['kwok']}",
                    f"--config={stages}",
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    *node_health_flags()["kwok"],
                    f"--cidr={KWOK_POD_CIDR}",
                    f"--server-address=127.0.0.1:{free_port()}",
                ],
            )
            # Admin credentials are written last: their presence means the cluster is usable.
            shutil.copyfile(kubeconfigs["admin"], self.kubeconfig)
            self._create_nodes(topology, deadline=started + timeout)
            if local_nodes:
                self._start_node_agent(state, deadline=started + timeout)
            if stores:
                self.stores.up()
        except BaseException:
            self._stop_processes(state)
            self.stores.down()
            raise
        state.ready_seconds = round(time.monotonic() - started, 2)
        self._write_state(state)
        return state

    def down(self) -> None:
        """Stop every process `up` started and remove what it made in the folder."""
        state = self.read_state()
        if state is not None:
            self._stop_processes(state)
        self.stores.down()
        with contextlib.suppress(OSError):
            (self.directory / "stores").rmdir()
        for name in ("etcd-data", "pki", "logs", "kubeconfigs", NODE_AGENT):
            shutil.rmtree(self.directory / name, ignore_errors=True)
        for name in ("kubeconfig", "state.json", "kwok-stages.yaml"):
            (self.directory / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()  # only when empty: never remove what we did not make

    def is_running(self, state: ClusterState | None = None) -> bool:
        state = state or self.read_state()
        if state is None:
            return False
        return all(
            _pid_alive(state.pids.get(name, -1))
            for name in (*COMPONENTS, *([NODE_AGENT] if NODE_AGENT in state.pids else []))
        )

    def status(self) -> dict[str, Any]:
        state = self.read_state()
        if state is None:
            return {"running": False, "directory": str(self.directory)}
        return {
            "running": self.is_running(state),
            "directory": str(self.directory),
            "server": state.server,
            "kubeconfig": str(self.kubeconfig),
            "processes": {name: _pid_alive(pid) for name, pid in state.pids.items()},
            "topology": state.topology,
            "startupSeconds": state.ready_seconds,
            "stores": (endpoints := self.stores.read())
            and {
                "s3Endpoint": endpoints.s3_endpoint,
                "bucket": endpoints.bucket,
                "registry": endpoints.registry,
                "file": str(self.stores.state_file),
            },
        }

    # -- faults, for chaos tests ---------------------------------------------------------
    def signal_component(self, name: str, signum: int) -> None:
        """Send `signum` (SIGSTOP, SIGCONT) to one component this cluster started."""
        state = self.read_state()
        pid = state.pids.get(name) if state else None
        if pid is None or not _pid_alive(pid):
            raise DevClusterError(f"{name} is not running in this cluster")
        os.killpg(pid, signum)

    def restart_component(
        self, name: str, down_seconds: float = 0.0, signum: int = signal.SIGKILL
    ) -> None:
        """Stop one component this cluster started (SIGKILL: a crash; SIGTERM: a shutdown,
        such as the node agent's, which stops its pods as a node going down does), leave it
        down for `down_seconds`, and start it again with the same command line, so that it
        listens where it did (etcd's data survives in its folder)."""
        state = self.read_state()
        pid = state.pids.get(name) if state else None
        if state is None or pid is None or not _pid_alive(pid):
            raise DevClusterError(f"{name} is not running in this cluster")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        os.killpg(pid, signum)
        end = time.monotonic() + (10 if signum == signal.SIGKILL else 30)
        while _pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(down_seconds)
        program, *args = (a.decode() for a in argv)
        self._start(state, name, args, program=program)

    # -- clients -----------------------------------------------------------------------
    def api_client(self) -> Any:
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        return client.ApiClient(configuration)

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """Write a kubeconfig that authenticates as ServiceAccount namespace/name with a bound
        token from the TokenRequest API, trusting the cluster's own CA."""
        from kubernetes import client

        with self.api_client() as api:
            token = client.CoreV1Api(api).create_namespaced_service_account_token(
                name, namespace, {"spec": {"expirationSeconds": 3600}}
            )
        admin: dict[str, Any] = yaml.safe_load(self.kubeconfig.read_text())
        user = f"system:serviceaccount:{namespace}:{name}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fogline-dev", "cluster": admin["clusters"][0]["cluster"]}],
            "users": [{"name": user, "user": {"token": token.status.token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "fogline-dev", "user": user}}],
            "current-context": "sa",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.tools_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise DevClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    # -- internals -----------------------------------------------------------------------
    def _write_kubeconfig(
        self, name: str, server: str, pki: ClusterPKI, client: ClientCert
    ) -> Path:
        folder = self.directory / "kubeconfigs"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(kubeconfig_for(server, pki.ca_cert, client, name)))
        return path

    def _start(
        self, state: ClusterState, name: str, args: list[str], program: str | None = None
    ) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [program or str(self.tools_dir / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so `down` can stop it whole
            cwd=self.directory,
        )
        log.close()
        state.pids[name] = process.pid
        self._write_state(state)

    def _start_etcd(self, state: ClusterState) -> str:
        client_port, peer_port = free_port(), free_port()
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._start(
            state,
            "etcd",
            [
                "--name=fogline-dev",
                f"--data-dir={self.directory / 'etcd-data'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=fogline-dev={peer_url}",
                # A throwaway cluster: durability buys nothing and fsync costs seconds.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
                "--quota-backend-bytes=2147483648",
            ],
        )
        return client_url

    @property
    def audit_log(self) -> Path:
        """Every request's metadata (who did what to which resource), for RBAC tests."""
        return self.log_dir / "audit.log"

    def _apiserver_args(self, pki: ClusterPKI, port: int, etcd_url: str) -> list[str]:
        policy = self.directory / "pki" / "audit-policy.yaml"
        policy.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived"],
                    "rules": [
                        {"level": "None", "userGroups": ["system:nodes"]},
                        {"level": "Metadata"},
                    ],
                }
            )
        )
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=200",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.directory / 'pki'}",
            f"--tls-cert-file={pki.serving.cert}",
            f"--tls-private-key-file={pki.serving.key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            "--enable-priority-and-fairness=false",
        ]

    def _wait_healthy(self, state: ClusterState, pki: ClusterPKI, deadline: float) -> None:
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        admin = pki.clients["admin"]
        context.load_cert_chain(str(admin.cert), str(admin.key))
        last_error = "not started"
        while time.monotonic() < deadline:
            for name, pid in state.pids.items():
                if not _pid_alive(pid):
                    raise DevClusterError(
                        f"{name} exited during start-up; see {self.log_dir / name}.log"
                    )
            try:
                with urllib.request.urlopen(
                    f"{state.server}/readyz", context=context, timeout=2
                ) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as err:
                last_error = str(err)
            time.sleep(0.2)
        raise DevClusterError(f"kube-apiserver did not become ready in time: {last_error}")

    def _start_node_agent(self, state: ClusterState, deadline: float) -> None:
        """Run the agent (as this Python) and wait until it has registered its Ready nodes."""
        sites = Topology(**state.topology).local_site_names() or ["site-01"]
        self._start(
            state,
            NODE_AGENT,
            [
                "-m",
                "fogline.devcluster.nodeagent",
                f"--kubeconfig={self.directory / 'kubeconfigs' / 'admin.yaml'}",
                f"--root={self.local_root}",
                *(f"--site={site}" for site in sites),
            ],
            program=sys.executable,
        )
        self._wait_nodes_ready({n["metadata"]["name"] for n in local_nodes(*sites)}, deadline)

    def _create_nodes(self, topology: Topology, deadline: float) -> None:
        from kubernetes import client

        with self.api_client() as api:
            core = client.CoreV1Api(api)
            for node in build_nodes(topology):
                core.create_node(node)
        self._wait_nodes_ready({n["metadata"]["name"] for n in build_nodes(topology)}, deadline)

    def _wait_nodes_ready(self, wanted: set[str], deadline: float) -> None:
        from kubernetes import client

        ready: set[str] = set()
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            while time.monotonic() < deadline:
                # Ready, and the node controller has lifted the not-ready taint it puts on
                # a new node: before that, neither the scheduler nor the DaemonSet
                # controller places a pod there.
                ready = {
                    n.metadata.name
                    for n in core.list_node().items
                    if any(
                        c.type == "Ready" and c.status == "True" for c in n.status.conditions or []
                    )
                    and not any(t.key == NOT_READY_TAINT for t in n.spec.taints or [])
                }
                if wanted <= ready:
                    return
                time.sleep(0.3)
        raise DevClusterError(
            f"the nodes did not become Ready in time: waiting for {sorted(wanted - ready)}"
        )

    def _stop_processes(self, state: ClusterState) -> None:
        for name in (NODE_AGENT, *reversed(COMPONENTS)):
            pid = state.pids.get(name)
            if pid is None or not _pid_alive(pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            end = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < end:
                time.sleep(0.05)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
