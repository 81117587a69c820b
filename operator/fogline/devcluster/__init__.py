"""The local control plane for development, the demo and the cluster tests: the real
upstream kube-apiserver, etcd, controller-manager and scheduler built from Go modules, with
kwok simulating a cloud GPU pool and K3s edge sites. Never used by the operator itself."""

from fogline.devcluster.cluster import DevCluster, DevClusterError
from fogline.devcluster.topology import Topology

__all__ = ["DevCluster", "DevClusterError", "Topology"]
