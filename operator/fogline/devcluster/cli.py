"""`fogline devcluster up|status|down`: the command-line face of the dev cluster."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fogline.devcluster.binaries import ToolsMissingError
from fogline.devcluster.cluster import DevCluster, DevClusterError
from fogline.devcluster.stores import StoreError
from fogline.devcluster.topology import Topology, local_nodes

DEFAULT_DIR = Path(".devcluster")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fogline devcluster",
        description="A real local control plane (etcd, kube-apiserver, controller-manager, "
        "scheduler) with kwok nodes: a cloud GPU pool and K3s edge sites. For development only.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    for action, text in (
        ("up", "start the cluster (returns when the API is healthy and the nodes are Ready)"),
        ("status", "show whether the cluster in DIR is running"),
        ("down", "stop every process and remove what `up` made"),
    ):
        p = sub.add_parser(action, help=text, description=text)
        p.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help="state folder (default: %(default)s)"
        )
        p.add_argument("--json", action="store_true", help="print machine-readable output")
        if action == "up":
            defaults = Topology()
            p.add_argument(
                "--gpu-nodes",
                type=int,
                default=defaults.gpu_nodes,
                help="GPU pool nodes (default: %(default)s)",
            )
            p.add_argument(
                "--gpus-per-node",
                type=int,
                default=defaults.gpus_per_node,
                help="nvidia.com/gpu per node (default: %(default)s)",
            )
            p.add_argument(
                "--edge-sites",
                type=int,
                default=defaults.edge_sites,
                help="edge sites (default: %(default)s)",
            )
            p.add_argument(
                "--nodes-per-site",
                type=int,
                default=defaults.nodes_per_site,
                help="K3s nodes per site (default: %(default)s)",
            )
            p.add_argument(
                "--timeout", type=float, default=120.0, help="seconds to wait for readiness"
            )
            p.add_argument(
                "--local-nodes",
                action="store_true",
                help="also start the dev node agent: real nodes local-gpu and local-edge whose "
                "pods of Fogline's images run as local processes (development only)",
            )
            p.add_argument(
                "--local-edge-sites",
                type=int,
                default=defaults.local_edge_sites,
                help="with --local-nodes: sites (the first ones) that get a real local edge "
                "node, local-edge, local-edge-2, ... (default: %(default)s)",
            )
            p.add_argument(
                "--no-stores",
                action="store_true",
                help="do not start the S3 store (versitygw) and OCI registry beside the cluster",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cluster = DevCluster(args.dir)
    try:
        if args.action == "up":
            counts = (args.gpu_nodes, args.gpus_per_node, args.edge_sites, args.nodes_per_site)
            if (
                min(counts) < 0
                or args.nodes_per_site < 1
                or args.gpus_per_node < 1
                or args.local_edge_sites < 1
            ):
                print(
                    "error: node counts must be >= 0 (and --nodes-per-site, --gpus-per-node, "
                    "--local-edge-sites >= 1)",
                    file=sys.stderr,
                )
                return 2
            topology = Topology(*counts, local_edge_sites=args.local_edge_sites)
            state = cluster.up(
                topology,
                timeout=args.timeout,
                local_nodes=args.local_nodes,
                stores=not args.no_stores,
            )
            endpoints = cluster.stores.read()
            if args.json:
                print(json.dumps(cluster.status(), indent=2))
            else:
                print(f"dev cluster up in {state.ready_seconds} s at {state.server}")
                print(f"  export KUBECONFIG={cluster.kubeconfig}")
                if args.local_nodes:
                    logs = cluster.local_root / "logs"
                    names = [
                        n["metadata"]["name"] for n in local_nodes(*topology.local_site_names())
                    ]
                    print(f"  local nodes {', '.join(names)}; pod logs in {logs}")
                if endpoints is not None:
                    print(f"  S3 {endpoints.s3_endpoint} bucket {endpoints.bucket}")
                    print(f"  OCI registry {endpoints.registry} (plain HTTP)")
                    print(f"  endpoints and credentials in {cluster.stores.state_file}")
            return 0
        if args.action == "status":
            status = cluster.status()
            if args.json:
                print(json.dumps(status, indent=2))
            elif status["running"]:
                print(f"running at {status['server']}; kubeconfig {status['kubeconfig']}")
            else:
                print(f"not running (folder {status['directory']})")
            return 0 if status["running"] else 3
        cluster.down()
        if not args.json:
            print("dev cluster stopped")
        return 0
    except (DevClusterError, ToolsMissingError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
