"""The simulated fleet: which kwok nodes the dev cluster creates and how they are labelled.
Pure builders, node specs in, Node manifests out; the labels here are the ones the
operator's defaults and the documentation speak of."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

# The cloud GPU pool.
GPU_POOL_LABEL = "fogline.io/pool"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}

# K3s edge nodes, grouped into sites.
EDGE_ROLE_LABEL = "node-role.kubernetes.io/edge"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
SITE_LABEL = "topology.fogline.io/site"
ZONE_LABEL = "topology.kubernetes.io/zone"
EDGE_TAINT = {"key": "node-role.kubernetes.io/edge", "value": "true", "effect": "NoSchedule"}


@dataclass(frozen=True)
class Topology:
    """How many simulated nodes to create."""

    gpu_nodes: int = 2
    gpus_per_node: int = 4
    edge_sites: int = 3
    nodes_per_site: int = 2
    # With the node agent: how many sites (the first ones) get a real local edge node.
    local_edge_sites: int = 1

    def site_names(self) -> list[str]:
        return [site_name(i) for i in range(self.edge_sites)]

    def local_site_names(self) -> list[str]:
        return [site_name(i) for i in range(self.local_edge_sites)]


def site_name(index: int) -> str:
    return f"site-{index + 1:02d}"


def _node(
    name: str, labels: dict[str, str], taints: list[dict[str, str]], capacity: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def gpu_node(index: int, gpus: int) -> dict[str, Any]:
    return _node(
        f"gpu-{index + 1:02d}",
        {GPU_POOL_LABEL: "gpu", GPU_PRESENT_LABEL: "true", INSTANCE_TYPE_LABEL: "gpu-standard"},
        [GPU_TAINT],
        {"cpu": "16", "memory": "128Gi", "pods": "110", GPU_RESOURCE: str(gpus)},
    )


def edge_node(site: str, index: int) -> dict[str, Any]:
    return _node(
        f"edge-{site}-{index + 1}",
        {EDGE_ROLE_LABEL: "true", INSTANCE_TYPE_LABEL: "k3s", SITE_LABEL: site, ZONE_LABEL: site},
        [EDGE_TAINT],
        {"cpu": "4", "memory": "8Gi", "pods": "30"},
    )


def build_nodes(topology: Topology) -> list[dict[str, Any]]:
    """All kwok Node manifests for a topology: the GPU pool first, then each edge site."""
    nodes = [gpu_node(i, topology.gpus_per_node) for i in range(topology.gpu_nodes)]
    for site in topology.site_names():
        nodes += [edge_node(site, i) for i in range(topology.nodes_per_site)]
    return nodes


# Nodes the dev node agent runs for real (devcluster/nodeagent.py), not kwok.
LOCAL_NODE_LABEL = "devcluster.fogline.io/local"
LOCAL_GPU_NODE = "local-gpu"
LOCAL_EDGE_NODE = "local-edge"


def _as_local(node: dict[str, Any], name: str) -> dict[str, Any]:
    meta = node["metadata"]
    meta["name"] = name
    meta["annotations"] = {}
    meta["labels"] |= {"kubernetes.io/hostname": name, "type": "local", LOCAL_NODE_LABEL: "true"}
    return node


def local_edge_node_name(index: int) -> str:
    """local-edge for the first site (the name the docs and the demo use), then local-edge-2..."""
    return LOCAL_EDGE_NODE if index == 0 else f"{LOCAL_EDGE_NODE}-{index + 1}"


def local_nodes(*sites: str, gpus: int = 1) -> list[dict[str, Any]]:
    """The agent's nodes, labelled and tainted like their kwok siblings: one in the GPU pool
    and one edge node in each of `sites` (site-01 when none is named), beside that site's
    simulated nodes."""
    return [
        _as_local(gpu_node(0, gpus), LOCAL_GPU_NODE),
        *(
            _as_local(edge_node(site, 0), local_edge_node_name(index))
            for index, site in enumerate(sites or ("site-01",))
        ),
    ]
