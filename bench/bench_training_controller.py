"""The ModelTraining controller's speed from CR to Job: create-to-Job latency against the
physical limit (the same Job created directly with the same client), and the throughput of
200 CRs created at once. Both seen by one watch, side by side in one run.

Run: .venv/bin/python bench/bench_training_controller.py [--samples 30] [--burst 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet import (
    OPERATOR_ENV,
    FirstSeen,
    MeasuredCluster,
    audit_now,
    by_verb_and_resource,
    create_namespace,
    format_counts,
    label,
    measured_cluster,
    ms,
    object_name,
    percentile,
)
from kubernetes import client

from fogline.api.crds import GROUP, VERSION
from fogline.api.modeltraining import ModelTraining
from fogline.devcluster import Topology
from fogline.settings import OperatorSettings
from fogline.training.jobs import TRAINING_LABEL, build_training_job, plan_run

# One GPU a run and a GPU for every run of the burst, so every pod runs as in a sized pool.
TOPOLOGY = Topology(gpu_nodes=26, gpus_per_node=8, edge_sites=0, nodes_per_site=0)
PLURAL = "modeltrainings"


def training(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelTraining",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"architecture": "mlp"},
            "dataset": {"uri": "builtin:digits"},
            "hyperparameters": {"epochs": 4},
            "resources": {"gpus": 1},
            "evaluation": {"threshold": 0.9},
            "output": {"uri": "file:///var/lib/fogline/artifacts"},
        },
    }


def direct_job(name: str, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """The Job the operator would build for this CR, built by the same builder; only the
    ownerReference is missing (there is no CR to own it)."""
    parsed = ModelTraining.from_body(
        {
            **training(name, namespace),
            "metadata": {"name": name, "namespace": namespace, "generation": 1, "uid": "none"},
        }
    )
    return build_training_job(parsed, plan_run(parsed), settings)


def has_phase(obj: dict[str, Any]) -> bool:
    return bool((obj.get("status") or {}).get("phase"))


def latency(rig: MeasuredCluster, samples: int) -> None:
    """Sequential: a CR then its Job, and a Job created directly, alternating."""
    namespace = "latency"
    create_namespace(rig.api, namespace)
    custom, batch = client.CustomObjectsApi(rig.api), client.BatchV1Api(rig.api)
    settings = OperatorSettings.from_env(OPERATOR_ENV)
    via_operator: list[float] = []
    direct_seen: list[float] = []
    direct_call: list[float] = []
    with FirstSeen(batch.list_namespaced_job, label(TRAINING_LABEL), namespace=namespace) as jobs:
        # A warm-up run: the first CR of a namespace also gets the trainer's RBAC.
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, training("warmup", namespace)
        )
        jobs.wait(["warmup"], timeout=60)
        for i in range(samples):
            name = f"cr-{i:03d}"
            started = time.monotonic()
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, training(name, namespace)
            )
            via_operator.append(jobs.wait([name], timeout=60)[name] - started)

            name = f"direct-{i:03d}"
            job = direct_job(name, namespace, settings)
            started = time.monotonic()
            batch.create_namespaced_job(namespace, job)
            direct_call.append(time.monotonic() - started)
            direct_seen.append(jobs.wait([name], timeout=60)[name] - started)

    print(f"\n(a) latency, {samples} sequential samples each (seen by the same watch)")
    rows = [
        ("ModelTraining create -> Job in watch", via_operator),
        ("Job create -> Job in watch (limit)", direct_seen),
        ("Job create call round trip", direct_call),
    ]
    for title, values in rows:
        print(
            f"  {title:<40} p50 {ms(percentile(values, 50)):>10}   p95 {ms(percentile(values, 95)):>10}"
        )
    for q in (50, 95):
        ratio = percentile(via_operator, q) / percentile(direct_seen, q)
        call = percentile(via_operator, q) / percentile(direct_call, q)
        print(
            f"  ratio p{q}: operator / direct-in-watch {ratio:.1f}x, operator / create call {call:.1f}x"
        )


def throughput(rig: MeasuredCluster, burst: int) -> None:
    """`burst` CRs created at once by 16 threads: when every Job exists, when every
    status shows a phase, and what the operator asked of the apiserver meanwhile."""
    namespace = "burst"
    create_namespace(rig.api, namespace)
    custom, batch = client.CustomObjectsApi(rig.api), client.BatchV1Api(rig.api)
    names = [f"run-{i:03d}" for i in range(burst)]
    with (
        FirstSeen(batch.list_namespaced_job, label(TRAINING_LABEL), namespace=namespace) as jobs,
        FirstSeen(
            custom.list_namespaced_custom_object,
            object_name,
            has_phase,
            group=GROUP,
            version=VERSION,
            namespace=namespace,
            plural=PLURAL,
        ) as phases,
    ):
        since = audit_now()
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda n: custom.create_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, training(n, namespace)
                    ),
                    names,
                )
            )
        created = time.monotonic() - started
        all_jobs = max(jobs.wait(names, timeout=300).values()) - started
        all_phases = max(phases.wait(names, timeout=300).values()) - started
        until = audit_now()
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    requests = rig.requests(since, until)
    # Trainings whose pod started inside the window made a second transition there (one
    # status patch and one Event); the first transition's cost is the rest.
    running = sum(1 for o in listed["items"] if (o.get("status") or {}).get("phase") == "Running")
    first = len(requests) - 2 * running
    print(f"\n(b) throughput, {burst} ModelTrainings created at once (16 threads)")
    print(
        f"  all CRs created                  {created:6.2f} s  ({burst / created:6.1f} CRs/s offered)"
    )
    print(f"  all Jobs exist                   {all_jobs:6.2f} s  ({burst / all_jobs:6.1f} CRs/s)")
    print(
        f"  all statuses show a phase        {all_phases:6.2f} s  ({burst / all_phases:6.1f} CRs/s)"
    )
    print(f"  operator requests: {len(requests)} ({len(requests) / burst:.2f} a CR)")
    print(
        f"  of which to the first phase: {first} ({first / burst:.2f} a CR); {running} CRs "
        "also reached Running inside the window (a status patch and an Event each)"
    )
    print(f"    {format_counts(by_verb_and_resource(requests))}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    os.environ.update(OPERATOR_ENV)
    started = time.monotonic()
    with measured_cluster(TOPOLOGY) as rig:
        print(
            f"dev cluster up: {TOPOLOGY.gpu_nodes} GPU nodes x {TOPOLOGY.gpus_per_node} GPUs; "
            f"operator as {rig.user}"
        )
        latency(rig, args.samples)
        throughput(rig, args.burst)
    print(f"\ntotal {time.monotonic() - started:.0f} s, cluster included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
