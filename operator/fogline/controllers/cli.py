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
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; globs like team-* work)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    parser.add_argument(
        "--peering",
        default="fogline",
        help="peering object shared by replicas; only the highest-priority one acts",
    )
    parser.add_argument(
        "--priority",
        default="0",
        metavar="N|auto",
        help="this replica's peering priority; `auto` derives a distinct one from the pod "
        "name, so that of several replicas exactly one acts and the others stand by",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="no peering (a single replica, e.g. for development)",
    )
    parser.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics at http://0.0.0.0:PORT/metrics",
    )
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


def _peering_problem(name: str, namespaces: list[str]) -> str | None:
    """Why the operator cannot act with peering `name`, or None. kopf, asked for a peering
    object that does not exist, waits for it forever and says so only at DEBUG level; we
    say it at start, with the fix. The operator does not create the object itself, even
    where it may: the peering is how replicas find each other, and a replica started with
    a mistyped --peering would create a peering of its own and act beside the others."""
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    from fogline.kube import load_api_client, missing_peerings

    try:
        with load_api_client() as api:
            missing = missing_peerings(api, name, namespaces)
    except (ApiException, HTTPError, OSError) as err:
        return f"cannot check the kopf peering object {name!r}: {err}"
    if not missing:
        return None
    return (
        f"the kopf peering object {', '.join(missing)} does not exist, and without it the "
        "operator would wait for ever; install the chart (helm install fogline "
        "charts/fogline) or `kubectl apply -f manifests/install.yaml`, which create it, "
        f"or create it yourself with --peering={name}, or run a single replica with "
        "--standalone"
    )


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

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.standalone and (problem := _peering_problem(args.peering, args.namespace)):
        print(f"error: {problem}", file=sys.stderr)
        return 2
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
