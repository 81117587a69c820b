"""Where the control-plane binaries live: the project builds them (`make tools`) into a
cache outside the repository and links them at .tools/bin (the artifact stores at
.tools/stores-bin, Prometheus at .tools/prometheus-bin). This module only finds them."""

from __future__ import annotations

import os
from pathlib import Path

REQUIRED = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "etcd",
    "kwok",
)


class ToolsMissingError(RuntimeError):
    pass


STORES = ("versitygw", "registry")


def _candidates(variable: str = "FOGLINE_TOOLS_BIN", link: str = "bin") -> list[Path]:
    found = []
    if env := os.environ.get(variable):
        found.append(Path(env))
    # The repository checkout this package runs from (editable install), then the cwd.
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if (parent / ".tools" / link).exists():
                found.append(parent / ".tools" / link)
                break
    return found


def find_tools_dir() -> Path:
    """The folder holding every binary the dev cluster needs, or a clear error."""
    for candidate in _candidates():
        if all(os.access(candidate / name, os.X_OK) for name in REQUIRED):
            return candidate.resolve()
    raise ToolsMissingError(
        "the control-plane binaries were not found; build them with `make tools` "
        "(or point FOGLINE_TOOLS_BIN at a folder holding " + ", ".join(REQUIRED) + ")"
    )


def find_stores_dir() -> Path:
    """The folder holding versitygw and registry, or a clear error."""
    for candidate in _candidates("FOGLINE_STORES_BIN", "stores-bin"):
        if all(os.access(candidate / name, os.X_OK) for name in STORES):
            return candidate.resolve()
    raise ToolsMissingError(
        "the artifact stores were not found; build them with `make tools` "
        "(or point FOGLINE_STORES_BIN at a folder holding " + ", ".join(STORES) + ")"
    )


def find_prometheus_dir() -> Path:
    """The folder holding prometheus, or a clear error."""
    for candidate in _candidates("FOGLINE_PROMETHEUS_BIN", "prometheus-bin"):
        if os.access(candidate / "prometheus", os.X_OK):
            return candidate.resolve()
    raise ToolsMissingError(
        "prometheus was not found; install it with `make tools` "
        "(or point FOGLINE_PROMETHEUS_BIN at a folder holding prometheus)"
    )
