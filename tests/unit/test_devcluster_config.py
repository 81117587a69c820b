"""The dev cluster's components are sized for a fleet of a thousand simulated nodes on a
loaded machine: no node flaps to Unknown because kwok's lease renewals run late, and kwok
keeps its stages with its own options in one config file."""

from __future__ import annotations

from typing import Any

import yaml

from fogline.devcluster.cluster import kwok_config, node_health_flags

FLEET = 1_000
# What one lease write may take on a loaded 2-core machine (measured: 50 to 200 ms).
WRITE_SECONDS = 0.1


def _flag(flags: list[str], name: str) -> str:
    values = [f.split("=", 1)[1] for f in flags if f.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} is set {len(values)} times in {flags}"
    return values[0]


def _renew_seconds() -> float:
    # kwok renews a lease every quarter of its duration, as a kubelet does.
    return int(_flag(node_health_flags()["kwok"], "node-lease-duration-seconds")) / 4


def _kwok_documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(kwok_config()) if d]


def test_a_simulated_node_stays_ready_through_a_minute_of_late_lease_renewals() -> None:
    grace = _flag(node_health_flags()["kube-controller-manager"], "node-monitor-grace-period")
    assert grace.endswith("s")
    assert float(grace[:-1]) - _renew_seconds() >= 60


def test_kwoks_lease_workers_keep_up_with_a_thousand_nodes() -> None:
    (options,) = [d["options"] for d in _kwok_documents() if d["kind"] == "KwokConfiguration"]
    writes_per_second = FLEET / _renew_seconds()
    assert options["nodeLeaseParallelism"] >= writes_per_second * WRITE_SECONDS


def test_kwoks_config_keeps_every_stage_beside_its_options() -> None:
    stages = [d["metadata"]["name"] for d in _kwok_documents() if d["kind"] == "Stage"]
    assert {"node-initialize", "node-heartbeat", "pod-start", "pod-delete"} <= set(stages)
