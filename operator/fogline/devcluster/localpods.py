"""The pure half of the dev node agent: how a pod spec becomes local processes (image to
command, kubelet-style $(VAR) expansion, downward-API env, pod paths mapped to local ones, a
loopback address of its own for each pod) and how process states become pod status. No I/O,
no clock: see nodeagent.py."""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

LOCALHOST = "127.0.0.1"  # the local nodes' own address (status.hostIP)
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")

# Fogline's images hold one Python environment; the agent runs them from the local one.
# These are the images' entrypoints, used when a container gives no command.
IMAGE_ENTRYPOINTS: dict[str, tuple[str, ...]] = {
    "trainer": ("python", "-m", "fogline.workloads.trainer"),
    "server": ("fogline", "serve"),
    "operator": ("fogline", "run"),
}
_REPOSITORY_KINDS = {
    "trainer": "trainer",
    "fogline-trainer": "trainer",
    "server": "server",
    "fogline-server": "server",
    "fogline": "operator",
    "fogline-operator": "operator",
}
_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
MANAGED_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


class PodSpecError(ValueError):
    """A container the agent cannot start; `reason` becomes the container status reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# -- images and commands ------------------------------------------------------------------


def image_repository(image: str) -> str:
    """The repository of an image reference, without tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def image_kind(image: str, configured: Mapping[str, str] | None = None) -> str | None:
    """`trainer`, `server` or `operator` for Fogline's images, None for any other image.
    `configured` maps exact image references (the operator's settings) to a kind."""
    if configured and image in configured:
        return configured[image]
    last = image_repository(image).rsplit("/", 1)[-1]
    return _REPOSITORY_KINDS.get(last)


def unknown_image_message(image: str) -> str:
    names = ", ".join(sorted(_REPOSITORY_KINDS))
    return (
        f"image {image!r} cannot run on a local node: the dev node agent runs only Fogline's "
        f"own images (a repository whose last part is one of {names}); use a kwok node for "
        "anything else"
    )


def resolve_command(argv: Sequence[str], python: Path, bin_dir: Path) -> list[str]:
    """Map a container's command to the local Python environment: `python` is the agent's
    interpreter, any other program must be one of the environment's scripts (fogline, torchrun)."""
    if not argv:
        raise PodSpecError("StartError", "the container has no command and its image no entrypoint")
    name = posixpath.basename(argv[0])
    if _PYTHON.match(name):
        return [str(python), *argv[1:]]
    if (bin_dir / name).is_file():
        return [str(bin_dir / name), *argv[1:]]
    raise PodSpecError(
        "StartError",
        f"command {argv[0]!r} is not in the local Python environment ({bin_dir}); "
        "the agent runs python and the scripts installed beside it (fogline, torchrun)",
    )


# -- environment ----------------------------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubelet variable expansion: $(NAME) becomes env[NAME] when defined and stays as written
    otherwise; $$ is a literal $, so $$(NAME) is never expanded."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(" and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Mapping[str, Any], field_path: str, pod_ip: str = LOCALHOST) -> str:
    """A downward-API fieldRef of the pod."""
    meta, spec = pod["metadata"], pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": pod_ip,
        "status.hostIP": LOCALHOST,
    }
    if field_path in simple:
        return str(simple[field_path] or "")
    if match := _LABEL_REF.match(field_path):
        return str((meta.get(match[1]) or {}).get(match[2], ""))
    raise PodSpecError(
        "CreateContainerConfigError", f"fieldRef {field_path!r} is not supported locally"
    )


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    service_env: Mapping[str, str],
    env_from: Mapping[str, str] | None = None,
    pod_ip: str = LOCALHOST,
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: service variables first, then
    what envFrom brought (read by the caller), then env in order, each value expanded against
    the variables defined before it."""
    env = {**service_env, **(env_from or {})}
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = expand(var.get("value", ""), env)
        elif "fieldRef" in source:
            env[var["name"]] = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip)
        else:
            kind = next(iter(source), "?")
            raise PodSpecError(
                "CreateContainerConfigError",
                f"env {var['name']}: valueFrom.{kind} is not supported locally; "
                "use value or fieldRef",
            )
    return env


# -- paths: a container's view of the pod filesystem ------------------------------------


def pod_folder_name(namespace: str, name: str, uid: str) -> str:
    """The pod's folder under the agent's `pods/`; its volumes are in `volumes/<name>`."""
    return f"{namespace}_{name}_{uid[:8]}"


class PodView:
    """The pod paths a container can see (its mounts and termination message file) under one
    local folder: `/mnt/pvc/art/x` becomes `<root>/mnt/pvc/art/x`, where the agent places a
    link to the volume's folder. Paths outside every mount, such as /usr, are left alone."""

    def __init__(self, root: Path, pod_paths: Iterable[str]) -> None:
        self.root = root
        self.pod_paths = sorted({posixpath.normpath(p) for p in pod_paths})

    def covers(self, path: str) -> bool:
        """Inside a mount, or an ancestor folder of one (but never `/` itself)."""
        path = posixpath.normpath(path)
        if path == "/":
            return False
        return any(
            path == m or path.startswith(m + "/") or m.startswith(path + "/")
            for m in self.pod_paths
        )

    def local(self, path: str) -> str:
        return str(self.root) + posixpath.normpath(path) if self.covers(path) else path

    def rewrite_value(self, value: str) -> str:
        if value.startswith("file:///"):
            return "file://" + self.local(value.removeprefix("file://"))
        return self.local(value) if value.startswith("/") else value

    def rewrite_arg(self, arg: str) -> str:
        """An argument as a whole, or the value of a `--flag=value` argument."""
        if arg.startswith("-") and "=" in arg:
            flag, _, value = arg.partition("=")
            return f"{flag}={self.rewrite_value(value)}"
        return self.rewrite_value(arg)


# -- addresses and ports --------------------------------------------------------------


class PodAddresses:
    """A loopback address for each local pod, as a cluster gives each pod an IP of its own.
    Linux routes the whole of 127.0.0.0/8 to the loopback device, so a server bound to
    127.42.0.7:8080 listens on its container's own port, beside other pods on 8080, and is
    reachable from this machine only; whoever reads status.podIP reaches it at
    podIP:containerPort as in a real cluster. Addresses are handed out in turn (a released
    one comes back only after the rest of the network), so a client still holding a deleted
    pod's address does not reach its successor at once."""

    def __init__(self, network: str) -> None:
        net = ipaddress.IPv4Network(network)
        if not net.subnet_of(LOOPBACK):
            raise ValueError(f"pod network {network}: must lie inside 127.0.0.0/8")
        if ipaddress.IPv4Address(LOCALHOST) in net:
            raise ValueError(
                f"pod network {network}: must not hold {LOCALHOST}, the nodes' own address"
            )
        if net.num_addresses < 4:
            raise ValueError(f"pod network {network}: too small, use a /30 or larger")
        self.network = net
        self._held: dict[str, str] = {}  # pod uid -> address
        self._next = 1  # offset in the network of the next address to try

    def _usable(self, address: ipaddress.IPv4Address) -> bool:
        # No network or broadcast address, and none ending in .0 or .255, which read as such.
        last = int(address) & 0xFF
        return address not in (self.network[0], self.network[-1]) and last not in (0, 255)

    def claim(self, uid: str, address: str | None = None) -> str | None:
        """Give the pod `address` again (what its status says, after an agent restart) when it
        is in the network and free; returns it, or None (then allocate)."""
        if uid in self._held:
            return self._held[uid]
        if address is None:
            return None
        try:
            wanted = ipaddress.IPv4Address(address)
        except ValueError:
            return None
        if wanted not in self.network or not self._usable(wanted):
            return None
        if str(wanted) in self._held.values():
            return None
        self._held[uid] = str(wanted)
        return str(wanted)

    def allocate(self, uid: str, refused: Collection[str] = ()) -> str:
        """The pod's address: the one it holds, or the next free one that is not `refused`
        (addresses whose ports turned out to be taken on this machine)."""
        if uid in self._held:
            return self._held[uid]
        held = set(self._held.values())
        size = self.network.num_addresses
        for step in range(size):
            offset = (self._next + step) % size
            candidate = self.network[offset]
            text = str(candidate)
            if self._usable(candidate) and text not in held and text not in refused:
                self._next = offset + 1
                self._held[uid] = text
                return text
        raise PodSpecError(
            "CreateContainerConfigError",
            f"no free address left in the local pod network {self.network} "
            f"({len(held)} pods hold one)",
        )

    def release(self, uid: str) -> None:
        self._held.pop(uid, None)

    def held(self) -> dict[str, str]:
        return dict(self._held)


def _probes(container: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [container[k] for k in ("readinessProbe", "livenessProbe") if container.get(k)]


def pod_ports(pod: Mapping[str, Any]) -> list[int]:
    """Every port the pod's containers declare or probe by number, first seen first."""
    ports: list[int] = []
    for container in pod["spec"]["containers"]:
        numbers = [p["containerPort"] for p in container.get("ports") or []]
        for probe in _probes(container):
            action = probe.get("httpGet") or probe.get("tcpSocket") or {}
            if isinstance(action.get("port"), int):
                numbers.append(action["port"])
        ports += [n for n in numbers if n not in ports]
    return ports


# Programs of Fogline's images that listen on every address (0.0.0.0) unless told otherwise,
# and the flag that tells them: in a pod that means the pod's own address, here its loopback one.
LISTENERS: dict[tuple[str, ...], str] = {
    ("fogline", "serve"): "--host",
    ("python", "-m", "fogline.workloads.server"): "--host",
}


def _listen_flag(argv: Sequence[str]) -> str | None:
    program = [posixpath.basename(argv[0]), *argv[1:]] if argv else []
    if program and _PYTHON.match(program[0]):
        program[0] = "python"
    for prefix, flag in LISTENERS.items():
        if tuple(program[: len(prefix)]) == prefix:
            return flag
    return None


def bind_to_pod(argv: Sequence[str], pod_ip: str) -> list[str]:
    """`--host 0.0.0.0` (every address of the pod) becomes the pod's address, so that nothing
    listens beyond this machine and pods do not take each other's ports; a server given no
    listen address at all gets the pod's."""
    out: list[str] = []
    for index, arg in enumerate(argv):
        previous = argv[index - 1] if index else ""
        flag, eq, value = arg.partition("=")
        if eq and flag == "--host" and value == "0.0.0.0":
            out.append(f"--host={pod_ip}")
        elif previous == "--host" and arg == "0.0.0.0":
            out.append(pod_ip)
        else:
            out.append(arg)
    listen_flag = _listen_flag(argv)
    if listen_flag and not any(a == listen_flag or a.startswith(listen_flag + "=") for a in argv):
        out.append(f"{listen_flag}={pod_ip}")
    return out


def probe_port(probe_action: Mapping[str, Any], container: Mapping[str, Any]) -> int:
    """The port a probe's httpGet/tcpSocket targets (a number or a named port)."""
    port = probe_action.get("port")
    if isinstance(port, str):
        named = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
        if port not in named:
            raise PodSpecError("CreateContainerConfigError", f"probe port {port!r} is not declared")
        port = named[port]
    if not isinstance(port, int):
        raise PodSpecError("CreateContainerConfigError", "a probe needs a port")
    return port


def pod_endpoint(pod: Mapping[str, Any], port: str | int = "http") -> str:
    """`http://podIP:containerPort` of a local pod (a dict as the API returns it), the port
    named or numbered: where its server is reached, as in a cluster."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        raise ValueError(f"pod {pod['metadata']['name']} has no address yet (status.podIP)")
    if isinstance(port, str):
        declared = {
            p.get("name"): p["containerPort"]
            for c in pod["spec"]["containers"]
            for p in c.get("ports") or []
        }
        if port not in declared:
            raise ValueError(f"pod {pod['metadata']['name']} declares no port {port!r}")
        port = declared[port]
    return f"http://{ip}:{port}"


# -- status --------------------------------------------------------------------------------


def pod_phase(
    restart_policy: str,
    init_statuses: Sequence[Mapping[str, Any]],
    statuses: Sequence[Mapping[str, Any]],
) -> str:
    """The pod phase the kubelet would report for these container statuses."""
    for status in init_statuses:
        done = status["state"].get("terminated")
        if done is None or done["exitCode"] != 0:
            failed = done is not None and restart_policy == "Never"
            return "Failed" if failed else "Pending"
    states = [s["state"] for s in statuses]
    if all("waiting" in s for s in states) and not any(s.get("lastState") for s in statuses):
        return "Pending"
    if all("terminated" in s for s in states) and restart_policy != "Always":
        codes = [s["terminated"]["exitCode"] for s in states]
        if all(code == 0 for code in codes):
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
    return "Running"


def pod_conditions(
    existing: Sequence[Mapping[str, Any]],
    phase: str,
    init_statuses: Sequence[Mapping[str, Any]],
    statuses: Sequence[Mapping[str, Any]],
    now: str,
) -> list[dict[str, Any]]:
    """The pod's conditions: those of others (PodScheduled) kept, the kubelet's recomputed,
    lastTransitionTime moved only when a condition flips."""
    initialized = all(s["state"].get("terminated", {}).get("exitCode") == 0 for s in init_statuses)
    ready = phase == "Running" and all(s["ready"] for s in statuses)
    mine = {
        "PodReadyToStartContainers": phase not in ("Succeeded", "Failed"),
        "Initialized": initialized,
        "ContainersReady": ready,
        "Ready": ready,
    }
    before = {c["type"]: c for c in existing}
    result = [dict(c) for c in existing if c["type"] not in MANAGED_CONDITIONS]
    for kind in MANAGED_CONDITIONS:
        status = "True" if mine[kind] else "False"
        old = before.get(kind) or {}
        condition: dict[str, Any] = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": (
                old["lastTransitionTime"]
                if old.get("status") == status and old.get("lastTransitionTime")
                else now
            ),
        }
        if kind in ("ContainersReady", "Ready") and not ready and phase == "Running":
            not_ready = sorted(s["name"] for s in statuses if not s["ready"])
            condition["reason"] = "ContainersNotReady"
            condition["message"] = f"containers with unready status: [{' '.join(not_ready)}]"
        result.append(condition)
    return result
