"""Where the control-plane binaries live: the project builds them (`make tools`) into a
cache outside the repository and links them at .tools/bin. This module only finds them."""

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


def _candidates() -> list[Path]:
    found = []
    if env := os.environ.get("FOGLINE_TOOLS_BIN"):
        found.append(Path(env))
    # The repository checkout this package runs from (editable install), then the cwd.
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if (parent / ".tools" / "bin").exists():
                found.append(parent / ".tools" / "bin")
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
