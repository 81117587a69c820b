#!/usr/bin/env python3
"""Copies the canonical CRDs in crds/ into the package (operator/fogline/api/crds/) so the
wheel carries them; with --check it only reports drift and exits 1 when the copies differ."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CANONICAL = REPO / "crds"
PACKAGED = REPO / "operator" / "fogline" / "api" / "crds"


def differing() -> list[str]:
    """Names of CRD files that are missing from, or differ in, the package copy."""
    names = sorted(path.name for path in CANONICAL.glob("*.yaml"))
    stale = [
        name
        for name in names
        if not (PACKAGED / name).is_file()
        or (PACKAGED / name).read_bytes() != (CANONICAL / name).read_bytes()
    ]
    extra = sorted(
        path.name for path in PACKAGED.glob("*.yaml") if not (CANONICAL / path.name).exists()
    )
    return stale + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="report drift, copy nothing")
    args = parser.parse_args(argv)
    names = differing()
    if args.check:
        for name in names:
            print(
                f"error: {PACKAGED.relative_to(REPO) / name} differs from crds/{name}; "
                "run tools/sync_crds.py",
                file=sys.stderr,
            )
        return 1 if names else 0
    for name in names:
        source = CANONICAL / name
        if source.exists():
            shutil.copyfile(source, PACKAGED / name)
            print(f"copied crds/{name}")
        else:
            (PACKAGED / name).unlink()
            print(f"removed {PACKAGED.relative_to(REPO) / name} (not in crds/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
