#!/usr/bin/env python3
"""Copies the canonical CRDs in crds/ into the package (operator/fogline/api/crds/) so the
wheel carries them, and into the Helm chart (charts/fogline/crds/, which also carries kopf's
peering CRDs); with --check it only reports drift and exits 1 when the copies differ."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CANONICAL = REPO / "crds"
PACKAGED = REPO / "operator" / "fogline" / "api" / "crds"
CHART = REPO / "charts" / "fogline" / "crds"
# Copies of crds/, each with the glob of the files it must mirror exactly (the chart's other
# CRDs, kopf's peerings, are its own).
COPIES = ((PACKAGED, "*.yaml"), (CHART, "*.fogline.io.yaml"))


def differing() -> list[str]:
    """Repository paths of CRD copies that are missing, differ from crds/, or are extra."""
    names = sorted(path.name for path in CANONICAL.glob("*.yaml"))
    found: list[str] = []
    for folder, pattern in COPIES:
        where = folder.relative_to(REPO)
        found += [
            str(where / name)
            for name in names
            if not (folder / name).is_file()
            or (folder / name).read_bytes() != (CANONICAL / name).read_bytes()
        ]
        found += sorted(
            str(where / path.name)
            for path in folder.glob(pattern)
            if not (CANONICAL / path.name).exists()
        )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="report drift, copy nothing")
    args = parser.parse_args(argv)
    paths = differing()
    if args.check:
        for path in paths:
            name = Path(path).name
            print(
                f"error: {path} differs from crds/{name}; run tools/sync_crds.py", file=sys.stderr
            )
        return 1 if paths else 0
    for path in paths:
        source, target = CANONICAL / Path(path).name, REPO / path
        if source.exists():
            shutil.copyfile(source, target)
            print(f"copied crds/{source.name} to {path}")
        else:
            target.unlink()
            print(f"removed {path} (not in crds/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
