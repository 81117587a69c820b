"""The optional NetworkPolicy of an EdgeDeployment's servers: ingress only to the inference
port, only from the CIDRs the administrator sets (operator setting edgeIngressCIDRs). Pure:
the EdgeDeployment and the CIDRs in, the object out; the controller applies it.

One policy per EdgeDeployment, kept by the operator rather than shipped by the chart: the
chart knows neither the namespaces EdgeDeployments live in nor their ports
(spec.runtime.port), and an owned object follows its EdgeDeployment (a new port, a new
name, deletion) with nothing left behind."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from fogline.api.edgedeployment import EdgeDeployment
from fogline.edge.daemonsets import COMPONENT_LABEL, EDGE_LABEL, MANAGED_BY

POLICY_SUFFIX = "-ingress"
NAME_LIMIT = 253


def network_policy_name(edge_name: str) -> str:
    """`<edge>-ingress`; a name too long for that is cut and ends in a hash of the whole."""
    name = edge_name + POLICY_SUFFIX
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(edge_name.encode()).hexdigest()[:8]
    keep = NAME_LIMIT - len(POLICY_SUFFIX) - len(digest) - 1
    return f"{edge_name[:keep].rstrip('-.')}-{digest}{POLICY_SUFFIX}"


def build_edge_network_policy(edge: EdgeDeployment, cidrs: Sequence[str]) -> dict[str, Any]:
    """Every pod of the EdgeDeployment, in every site, admits TCP to the inference port from
    `cidrs` and nothing else (no CIDRs: nothing at all). Egress is left alone: the fetch
    step must reach the store, wherever the site's network puts it."""
    ingress: list[dict[str, Any]] = []
    if cidrs:
        ingress.append(
            {
                "from": [{"ipBlock": {"cidr": cidr}} for cidr in cidrs],
                "ports": [{"protocol": "TCP", "port": edge.spec.runtime.port}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(edge.name),
            "namespace": edge.namespace,
            "labels": {**MANAGED_BY, COMPONENT_LABEL: "edge-server", EDGE_LABEL: edge.name},
        },
        "spec": {
            "podSelector": {"matchLabels": {**MANAGED_BY, EDGE_LABEL: edge.name}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
