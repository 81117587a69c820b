"""The Argo CD health checks in manifests/argocd/, run by a Lua 5.1 interpreter (the
version Argo CD's embedded gopher-lua speaks) against a status sample of every phase."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

lua51 = pytest.importorskip("lupa.lua51")

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "manifests" / "argocd"


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Runs a health script as Argo CD does: `obj` is a global, the chunk returns hs."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    assert runtime.eval("_VERSION") == "Lua 5.1"
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    chunk = runtime.eval("loadstring")(script)
    assert chunk is not None, "the script does not compile under Lua 5.1"
    result = chunk()
    return str(result["status"]), str(result["message"])


def resource(kind: str, status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "fogline.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "generation": generation},
        "spec": {},
    }
    if status is not None:
        body["status"] = {"observedGeneration": generation, **status}
    return body


DIGEST = "sha256:" + "ab" * 32
FAILED = {
    "type": "Succeeded",
    "status": "False",
    "reason": "BackoffLimitExceeded",
    "message": "pod failed 3 times",
}

# Case tables, one case a row: (case, status, expected health, words of its message).
MODELTRAINING_CASES = [
    ("no status yet", None, "Progressing", "pick up"),
    ("Pending", {"phase": "Pending"}, "Progressing", "start"),
    ("Queued", {"phase": "Queued"}, "Progressing", "queue"),
    ("Running", {"phase": "Running", "progress": {"epoch": 3, "epochs": 10}}, "Progressing", "epoch 3 of 10"),
    ("Succeeded", {"phase": "Succeeded", "artifact": {"digest": DIGEST}}, "Healthy", DIGEST),
    ("Failed", {"phase": "Failed", "conditions": [FAILED]}, "Degraded", "pod failed 3 times"),
    ("Failed below the gate", {"phase": "Failed", "conditions": [
        {"type": "Succeeded", "status": "False", "message": "0.42 is below the threshold 0.9"}]},
     "Degraded", "below the threshold"),
    ("Suspended", {"phase": "Suspended"}, "Suspended", "suspend"),
    ("an unknown phase", {"phase": "Exploded"}, "Unknown", "Exploded"),
]  # fmt: skip

EDGEDEPLOYMENT_CASES = [
    ("no status yet", None, "Progressing", "pick up"),
    ("Pending", {"phase": "Pending"}, "Progressing", "Rolling out"),
    ("Progressing", {"phase": "Progressing", "sitesReady": "1/3", "message": "wave 1 of 2"}, "Progressing",
     "wave 1 of 2 (1/3 sites ready)"),
    ("Available", {"phase": "Available", "sitesReady": "3/3"}, "Healthy", "3/3 sites ready"),
    ("Degraded", {"phase": "Degraded", "sitesReady": "2/3"}, "Degraded", "2/3"),
    ("Paused", {"phase": "Paused"}, "Suspended", "paused"),
    ("RolledBack", {"phase": "RolledBack", "failedSite": "site-02"}, "Degraded", "site site-02 failed"),
    ("Failed", {"phase": "Failed", "message": "no edge node matches"}, "Degraded", "no edge node matches"),
    ("an unknown phase", {"phase": "Exploded"}, "Unknown", "Exploded"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "status", "expected", "says"),
    MODELTRAINING_CASES,
    ids=[c[0] for c in MODELTRAINING_CASES],
)
def test_modeltraining_health_follows_the_phase(
    case: str, status: Any, expected: str, says: str
) -> None:
    script = (ARGOCD / "modeltraining-health.lua").read_text()
    got, message = health(script, resource("ModelTraining", status))
    assert got == expected
    assert says in message


@pytest.mark.parametrize(
    ("case", "status", "expected", "says"),
    EDGEDEPLOYMENT_CASES,
    ids=[c[0] for c in EDGEDEPLOYMENT_CASES],
)
def test_edgedeployment_health_follows_the_phase(
    case: str, status: Any, expected: str, says: str
) -> None:
    script = (ARGOCD / "edgedeployment-health.lua").read_text()
    got, message = health(script, resource("EdgeDeployment", status))
    assert got == expected
    assert says in message


@pytest.mark.parametrize(
    ("kind", "file_name", "terminal"),
    [
        (
            "ModelTraining",
            "modeltraining-health.lua",
            {"phase": "Succeeded", "artifact": {"digest": DIGEST}},
        ),
        ("ModelTraining", "modeltraining-health.lua", {"phase": "Failed", "conditions": [FAILED]}),
        ("EdgeDeployment", "edgedeployment-health.lua", {"phase": "Available"}),
        ("EdgeDeployment", "edgedeployment-health.lua", {"phase": "RolledBack"}),
    ],
)
def test_a_spec_the_operator_has_not_observed_is_progressing_whatever_the_old_phase(
    kind: str, file_name: str, terminal: dict[str, Any]
) -> None:
    body = resource(kind, terminal, generation=2)
    body["status"]["observedGeneration"] = 1
    got, message = health((ARGOCD / file_name).read_text(), body)
    assert (got, message) == ("Progressing", "The operator has not yet observed generation 2")
    del body["status"]["observedGeneration"]
    assert health((ARGOCD / file_name).read_text(), body)[0] == "Progressing"


def test_the_argocd_cm_patch_carries_the_scripts_unchanged() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())
    assert patch["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    for kind, file_name in (
        ("ModelTraining", "modeltraining-health.lua"),
        ("EdgeDeployment", "edgedeployment-health.lua"),
    ):
        key = f"resource.customizations.health.fogline.io_{kind}"
        assert patch["data"][key] == (ARGOCD / file_name).read_text()
