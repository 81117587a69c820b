"""The simulated fleet is built as documented: a tainted GPU pool and K3s edge sites."""

from __future__ import annotations

import pytest

from fogline.devcluster.topology import Topology, build_nodes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("topology", "gpu", "edge"),
    [
        (Topology(gpu_nodes=2, edge_sites=3, nodes_per_site=2), 2, 6),
        (Topology(gpu_nodes=0, edge_sites=1, nodes_per_site=5), 0, 5),
        (Topology(gpu_nodes=3, edge_sites=0, nodes_per_site=1), 3, 0),
    ],
)
def test_node_counts_follow_the_topology(topology: Topology, gpu: int, edge: int) -> None:
    nodes = build_nodes(topology)
    labels = [n["metadata"]["labels"] for n in nodes]
    assert sum(1 for lab in labels if lab.get("fogline.io/pool") == "gpu") == gpu
    assert sum(1 for lab in labels if lab.get("node-role.kubernetes.io/edge") == "true") == edge
    assert len({n["metadata"]["name"] for n in nodes}) == len(nodes)


def test_gpu_nodes_advertise_gpus_and_carry_the_gpu_taint() -> None:
    node = build_nodes(Topology(gpu_nodes=1, gpus_per_node=8, edge_sites=0))[0]
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}


def test_edge_nodes_are_k3s_nodes_labelled_with_their_site() -> None:
    nodes = build_nodes(Topology(gpu_nodes=0, edge_sites=2, nodes_per_site=1))
    assert [n["metadata"]["labels"]["topology.fogline.io/site"] for n in nodes] == [
        "site-01",
        "site-02",
    ]
    for node in nodes:
        assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "k3s"
        assert node["spec"]["taints"][0]["key"] == "node-role.kubernetes.io/edge"
