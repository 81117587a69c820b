"""The rooms of the package and what each may import (docs/architecture.md): the pure rooms
never reach the network or the Kubernetes client, and the workloads that run in the trainer
and server images never import the operator's rooms."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "fogline"

# Room -> the fogline rooms it may import besides itself. `from fogline import __version__`
# is allowed everywhere. Imports under `if TYPE_CHECKING:` are for annotations only.
MAY_IMPORT: dict[str, set[str]] = {
    "api": set(),
    # The planner speaks the API's literal types and digest form: api is pure and imports
    # nothing, so the planner stays a pure function of its inputs.
    "rollout": {"api"},
    "training": {"api", "settings"},
    "edge": {"api", "settings", "rollout"},
    "controllers": {"api", "settings", "rollout", "training", "edge", "kube"},
    "workloads": {"api.digests", "cli"},
    # The dev cluster and the demo write and publish artifacts as the trainer does (its
    # manifest and its publish step: one home for the artifact format), never the reverse.
    "devcluster": {"workloads"},
    "demo": {"devcluster", "workloads"},
    "kube": {"api"},
    "settings": set(),
    "status": {"api", "cli"},
    "cli": set(),
}
# The pure rooms take data in and give data out: no client, no socket, no subprocess.
PURE = ("api", "rollout", "training", "edge")
IMPURE_MODULES = {
    "kopf",
    "kubernetes",
    "urllib3",
    "requests",
    "boto3",
    "botocore",
    "socket",
    "subprocess",
    "aiohttp",
    "time",
}


def room_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imports(tree: ast.AST) -> Iterator[str]:
    """Absolute module names imported at run time (TYPE_CHECKING blocks skipped)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            yield from (name for child in node.orelse for name in imports(child))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        yield from imports(node)


def fogline_target(module: str) -> str | None:
    """'fogline.api.digests' -> 'api.digests' (the room and, for api, the module)."""
    parts = module.split(".")
    if parts[0] != "fogline" or len(parts) == 1:
        return None
    return ".".join(parts[1:3]) if parts[1] == "api" else parts[1]


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if room_of(p) in MAY_IMPORT)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_room_imports_only_the_rooms_it_may(path: Path) -> None:
    room = room_of(path)
    allowed = MAY_IMPORT[room] | {room}
    wrong = []
    for module in imports(ast.parse(path.read_text())):
        target = fogline_target(module)
        if target is None:
            continue
        if target in allowed or target.partition(".")[0] in allowed - {"api.digests"}:
            continue
        wrong.append(module)
    assert not wrong, f"{room}/ may import only {sorted(allowed)}, not {wrong}"


@pytest.mark.parametrize(
    "path",
    [p for p in modules() if room_of(p) in PURE],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_pure_rooms_do_no_io(path: Path) -> None:
    found = {m.partition(".")[0] for m in imports(ast.parse(path.read_text()))}
    assert not found & IMPURE_MODULES, f"a pure room imports {sorted(found & IMPURE_MODULES)}"


def test_the_rule_catches_a_wrong_import() -> None:
    tree = ast.parse("from fogline.controllers.runtime import x\nimport kopf\n")
    assert [fogline_target(m) for m in imports(tree)] == ["controllers", None]
    guarded = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import kopf\n")
    assert "kopf" not in set(imports(guarded))
