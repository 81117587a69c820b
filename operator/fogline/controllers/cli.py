"""`fogline run`: runs the operator against the current cluster (in-cluster service account
or kubeconfig), cluster-wide or in chosen namespaces."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import socket
import sys

from fogline.settings import OperatorSettings, SettingsError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fogline run",
        description="Run the Fogline operator: reconcile ModelTrainings and EdgeDeployments.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeatable; globs like team-* work)")  # fmt: skip
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    parser.add_argument("--peering", default="fogline",
                        help="peering object shared by replicas; only the highest-priority one acts")  # fmt: skip
    parser.add_argument(
        "--priority", default="0", metavar="N|auto",
        help="this replica's peering priority; `auto` derives a distinct one from the pod "
        "name, so that of several replicas exactly one acts and the others stand by",
    )  # fmt: skip
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="no peering (a single replica, e.g. for development)",
    )
    parser.add_argument("--liveness", default=None, metavar="URL",
                        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz")  # fmt: skip
    parser.add_argument(
        "--metrics-port", type=int, default=None, metavar="PORT",
        help="serve Prometheus metrics at http://0.0.0.0:PORT/metrics",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def peering_priority(value: str, identity: str) -> int:
    """A number, or `auto`: a stable number in 1..999999 from this replica's identity.
    kopf freezes every operator of a peering when two share the highest priority, so
    replicas must differ; the one with the highest acts and the others take over when its
    peering record expires."""
    if value == "auto":
        return int(hashlib.sha256(identity.encode()).hexdigest(), 16) % 999_999 + 1
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"--priority: expected a number or auto, got {value!r}") from err


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        OperatorSettings.from_env()  # fail before connecting if the settings are wrong
        priority = peering_priority(
            args.priority, os.environ.get("POD_NAME") or socket.gethostname()
        )
    except (SettingsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import kopf

    if args.metrics_port is not None:
        os.environ["FOGLINE_METRICS_PORT"] = str(args.metrics_port)

    import fogline.controllers.edgedeployment
    import fogline.controllers.modeltraining
    import fogline.controllers.runtime  # noqa: F401 - registers the handlers

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=args.standalone,
            # Naming a peering makes it mandatory: kopf waits for the peering CRDs (the
            # chart installs them) rather than acting alongside another replica.
            peering_name=None if args.standalone else args.peering,
            priority=priority,
            liveness_endpoint=args.liveness,
        )
    )
    return 0
