"""The pure half of the dev node agent: how a pod spec becomes local processes (image to
command, kubelet-style $(VAR) expansion, downward-API env, pod paths and ports mapped to
local ones) and how process states become pod status. No I/O, no clock: see nodeagent.py."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

LOCAL_PORT_ANNOTATION = "devcluster.fogline.io/local-port"
LOCAL_PORTS_ANNOTATION = "devcluster.fogline.io/local-ports"
LOCALHOST = "127.0.0.1"

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


def field_value(pod: Mapping[str, Any], field_path: str) -> str:
    """A downward-API fieldRef of the pod."""
    meta, spec = pod["metadata"], pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": LOCALHOST,
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
            env[var["name"]] = field_value(pod, source["fieldRef"]["fieldPath"])
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


# -- ports ---------------------------------------------------------------------------------


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


def rewrite_ports(args: Sequence[str], ports: Mapping[int, int]) -> list[str]:
    """`--port N` and `--port=N` of a mapped port get the local port; `--host 0.0.0.0`
    becomes loopback so that nothing listens beyond this machine."""
    out: list[str] = []
    replacements = {str(k): str(v) for k, v in ports.items()}
    for index, arg in enumerate(args):
        previous = args[index - 1] if index else ""
        flag, eq, value = arg.partition("=")
        if eq and flag == "--port" and value in replacements:
            out.append(f"--port={replacements[value]}")
        elif eq and flag == "--host" and value == "0.0.0.0":
            out.append(f"--host={LOCALHOST}")
        elif previous == "--port" and arg in replacements:
            out.append(replacements[arg])
        elif previous == "--host" and arg == "0.0.0.0":
            out.append(LOCALHOST)
        else:
            out.append(arg)
    return out


def probe_port(
    probe_action: Mapping[str, Any], container: Mapping[str, Any], ports: Mapping[int, int]
) -> int:
    """The local port a probe's httpGet/tcpSocket targets (a number or a named port)."""
    port = probe_action.get("port")
    if isinstance(port, str):
        named = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
        if port not in named:
            raise PodSpecError("CreateContainerConfigError", f"probe port {port!r} is not declared")
        port = named[port]
    if not isinstance(port, int):
        raise PodSpecError("CreateContainerConfigError", "a probe needs a port")
    return ports.get(port, port)


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
