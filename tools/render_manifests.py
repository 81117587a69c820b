#!/usr/bin/env python3
"""Renders manifests/install.yaml from the Helm chart (default values, namespace
fogline-system) and the argocd-cm patch from the Lua health checks, so neither drifts
from its source; --check only compares and exits 1 when a committed file is stale."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "fogline"
OUTPUT = REPO / "manifests" / "install.yaml"
ARGOCD = REPO / "manifests" / "argocd"
ARGOCD_PATCH = ARGOCD / "argocd-cm-patch.yaml"
#: Kind -> its health check, as Argo CD keys resource.customizations.
HEALTH_CHECKS = {
    "ModelTraining": "modeltraining-health.lua",
    "EdgeDeployment": "edgedeployment-health.lua",
}
RELEASE = "fogline"
NAMESPACE = "fogline-system"

HEADER = f"""\
# Fogline operator: CRDs, RBAC, ServiceAccount, peering and the operator Deployment in
# namespace {NAMESPACE}. Generated from charts/fogline with its default values by
# tools/render_manifests.py; edit the chart, never this file.
#   kubectl apply --server-side -f manifests/install.yaml
---
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    app.kubernetes.io/part-of: fogline
"""


def helm_binary() -> Path:
    """HELM, else the pinned helm that `make tools` links into .tools/bin."""
    found = Path(os.environ.get("HELM", REPO / ".tools" / "bin" / "helm"))
    if not found.exists():
        raise SystemExit(f"error: no helm at {found}; run `make tools` or set HELM")
    return found


def kubernetes_version() -> str:
    """The Kubernetes version the project pins (tools/k8s/go.mod), to render for."""
    text = (REPO / "tools" / "k8s" / "go.mod").read_text()
    match = re.search(r"^require k8s\.io/kubernetes v(\S+)", text, re.MULTILINE)
    if match is None:
        raise SystemExit("error: tools/k8s/go.mod does not require k8s.io/kubernetes")
    return match.group(1)


def render(helm: Path | None = None) -> str:
    result = subprocess.run(
        [
            str(helm or helm_binary()),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--include-crds",
            "--kube-version",
            kubernetes_version(),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"error: helm template failed:\n{result.stderr}")
    return HEADER + result.stdout


def render_argocd_patch() -> str:
    lines = [
        "# Merge into Argo CD's argocd-cm ConfigMap (e.g. as a kustomize patch) so that Argo CD",
        "# reports Fogline's kinds as Progressing, Healthy, Suspended or Degraded truthfully.",
        "# Generated from the .lua files beside it by tools/render_manifests.py.",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: argocd-cm",
        "  namespace: argocd",
        "data:",
    ]
    for kind, file_name in HEALTH_CHECKS.items():
        lines.append(f"  resource.customizations.health.fogline.io_{kind}: |")
        script = (ARGOCD / file_name).read_text()
        lines += [f"    {line}" if line else "" for line in script.splitlines()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare only, write nothing")
    args = parser.parse_args(argv)
    outputs = {OUTPUT: render(), ARGOCD_PATCH: render_argocd_patch()}
    stale = [
        path for path, text in outputs.items() if not path.exists() or path.read_text() != text
    ]
    if args.check:
        for path in stale:
            print(
                f"error: {path.relative_to(REPO)} is stale; run tools/render_manifests.py",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in stale:
        path.write_text(outputs[path])
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
