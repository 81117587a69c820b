"""Chaos on the real control plane, on a dev cluster of its own (one GPU node, three
one-node edge sites) so that no other test shares its faults; the operator runs as its own
ServiceAccount, so the apiserver's audit log tells its requests apart. Every fault is
bounded and undone by the test itself: the operator is killed with SIGKILL and started
again, the apiserver is frozen with SIGSTOP for 20 s and resumed, etcd is killed and
started again 20 s later; only processes this module's cluster started are signalled, by
PID. The long parts are what the proof needs: a 60 s idle soak and 2,000 objects."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from bench.fleet import (
    FirstSeen,
    MeasuredCluster,
    audit_now,
    by_verb_and_resource,
    events_relist,
    measured_cluster,
    object_name,
)
from kubernetes import client

from fogline.api.crds import GROUP, VERSION
from fogline.devcluster import Topology
from tests.conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OLD = "sha256:" + "a1" * 32
NEW = "sha256:" + "b2" * 32
DIGEST = "sha256:" + "ab" * 32
SITES = ["site-01", "site-02", "site-03"]
FREEZE_SECONDS = 20
THIRD = "sha256:" + "c3" * 32
SOAK_SECONDS = 60
ETCD_DOWN_SECONDS = 20
CHURN = 2000


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeasuredCluster]:
    topology = Topology(gpu_nodes=1, gpus_per_node=2, edge_sites=3, nodes_per_site=1)
    with measured_cluster(topology, directory=tmp_path_factory.mktemp("chaos")) as measured:
        yield measured


class Api:
    def __init__(self, rig: MeasuredCluster, namespace: str) -> None:
        self.rig, self.namespace = rig, namespace
        self.custom = client.CustomObjectsApi(rig.api)
        self.core = client.CoreV1Api(rig.api)
        self.batch = client.BatchV1Api(rig.api)
        self.apps = client.AppsV1Api(rig.api)
        self.core.create_namespace({"metadata": {"name": namespace}})

    def create(self, plural: str, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, body)

    def status(self, plural: str, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name
        )
        result: dict[str, Any] = body.get("status") or {}
        return result

    def jobs(self, training: str) -> list[Any]:
        return self.batch.list_namespaced_job(
            self.namespace, label_selector=f"fogline.io/modeltraining={training}"
        ).items

    def running_pod(self, training: str) -> Any:
        def find() -> Any:
            pods = self.core.list_namespaced_pod(
                self.namespace, label_selector=f"fogline.io/modeltraining={training}"
            ).items
            return next((p for p in pods if p.status.phase == "Running"), None)

        return wait_for(find, timeout=60, what=f"a Running pod of {training}")

    def succeed(self, pod: Any) -> None:
        """kwok ends the pod as a trainer that passed its gate would (devcluster/stages.yaml)."""
        message = {
            "phase": "Succeeded",
            "metrics": {"accuracy": 0.97},
            "evaluation": {"metric": "accuracy", "value": 0.97},
            "artifact": {"uri": "pvc://artifacts/x", "digest": DIGEST, "format": "onnx"},
        }
        self.core.patch_namespaced_pod(
            pod.metadata.name,
            self.namespace,
            {
                "metadata": {
                    "annotations": {
                        "sim.fogline.io/outcome": "succeed",
                        "sim.fogline.io/termination-message": json.dumps(message),
                    }
                }
            },
        )

    def daemonset_generations(self, edge: str) -> dict[str, int]:
        items = self.apps.list_namespaced_daemon_set(
            self.namespace, label_selector=f"fogline.io/edgedeployment={edge}"
        ).items
        return {d.metadata.labels["fogline.io/site"]: d.metadata.generation for d in items}

    def reasons(self, name: str) -> list[str]:
        items = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [e.reason for e in items]


def training(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelTraining",
        "metadata": {"name": name},
        "spec": {
            "model": {"architecture": "mlp"},
            "dataset": {"uri": "builtin:digits"},
            "evaluation": {"threshold": 0.9},
            "output": {"uri": "file:///var/lib/fogline/artifacts"},
        },
    }


def edge(name: str, digest: str = OLD, **rollout: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EdgeDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "https://models.example/digits", "digest": digest},
            "placement": {"sites": SITES},
            "rollout": {
                "canarySites": 1,
                "maxUnavailable": 1,
                "progressDeadlineSeconds": 60,
                **rollout,
            },
        },
    }


def available_on(api: Api, name: str, digest: str) -> Any:
    status = api.status("edgedeployments", name)
    return status.get("phase") == "Available" and status.get("currentDigest") == digest and status


def test_operator_killed_mid_training_creates_no_second_job(rig: MeasuredCluster) -> None:
    api = Api(rig, "chaos-train")
    api.create("modeltrainings", training("survivor"))
    pod = api.running_pod("survivor")
    wait_for(
        lambda: api.status("modeltrainings", "survivor").get("phase") == "Running",
        what="survivor Running",
    )
    rig.operator.kill()
    rig.operator.start()
    api.succeed(pod)
    wait_for(
        lambda: api.status("modeltrainings", "survivor").get("phase") == "Succeeded",
        timeout=60,
        what="survivor Succeeded after the restart",
    )
    assert len(api.jobs("survivor")) == 1


def test_operator_killed_mid_rollout_continues_from_its_wave(rig: MeasuredCluster) -> None:
    api = Api(rig, "chaos-rollout")
    api.create("edgedeployments", edge("fleet", pauseSeconds=4))
    wait_for(lambda: available_on(api, "fleet", OLD), timeout=90, what="fleet Available")
    assert set(api.daemonset_generations("fleet").values()) == {1}
    api.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        api.namespace,
        "edgedeployments",
        "fleet",
        {"spec": {"model": {"digest": NEW}}},
    )

    def canary_done() -> bool:
        rollout = api.status("edgedeployments", "fleet").get("rollout") or {}
        return bool(rollout.get("targetDigest") == NEW and rollout.get("completedSites"))

    wait_for(canary_done, timeout=60, what="the canary wave to complete")
    rig.operator.kill()  # in the pause between the canary and the next wave
    rig.operator.start()
    wait_for(lambda: available_on(api, "fleet", NEW), timeout=90, what="fleet Available on NEW")
    # Each site's DaemonSet changed exactly once: no site was updated twice or rolled back.
    assert api.daemonset_generations("fleet") == dict.fromkeys(SITES, 2)
    # The Event is posted after the status that says Available: wait for it to land.
    wait_for(
        lambda: api.reasons("fleet").count("RolloutComplete") >= 2,
        timeout=30,
        what="the RolloutComplete Event of NEW",
    )
    reasons = api.reasons("fleet")
    assert reasons.count("RolloutComplete") == 2, reasons  # the first deploy, then NEW
    assert "WaveFailed" not in reasons and "RolledBack" not in reasons


def _api_answers(api: Api) -> bool:
    try:
        api.core.list_namespace(limit=1, _request_timeout=2)
    except Exception:
        return False
    return True


def test_frozen_apiserver_and_restarted_etcd_are_survived_and_the_operator_goes_quiet(
    rig: MeasuredCluster,
) -> None:
    api = Api(rig, "chaos-outage")
    api.create("edgedeployments", edge("steady", pauseSeconds=3))
    wait_for(lambda: available_on(api, "steady", OLD), timeout=90, what="steady Available")
    api.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        api.namespace,
        "edgedeployments",
        "steady",
        {"spec": {"model": {"digest": NEW}}},
    )
    # The outage falls into the rollout: a wave must not be judged by time it spent frozen.
    devcluster = rig.devcluster
    devcluster.signal_component("kube-apiserver", signal.SIGSTOP)
    try:
        time.sleep(FREEZE_SECONDS)  # the fault itself, not a wait for a result
    finally:
        devcluster.signal_component("kube-apiserver", signal.SIGCONT)
    wait_for(lambda: _api_answers(api), timeout=60, what="the API server to answer again")

    # A CR created after the outage gets its Job within seconds.
    api.create("modeltrainings", training("after"))
    wait_for(lambda: api.jobs("after"), timeout=30, what="a Job for a training created after")
    status = wait_for(
        lambda: available_on(api, "steady", NEW), timeout=120, what="steady Available on NEW"
    )
    assert status["currentDigest"] == NEW
    assert "RolledBack" not in api.reasons("steady")
    assert set(api.daemonset_generations("steady").values()) == {2}

    # etcd is down for 20 s in the pause between two waves, longer than the pause: the next
    # wave is planned during the outage, and its deadline (25 s) must count from when its
    # DaemonSets were written, not from a `now` read before the calls that waited it out.
    rollout = {"pauseSeconds": 2, "progressDeadlineSeconds": 25}
    api.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        api.namespace,
        "edgedeployments",
        "steady",
        {"spec": {"model": {"digest": THIRD}, "rollout": rollout}},
    )

    def in_the_pause() -> Any:
        rollout = api.status("edgedeployments", "steady").get("rollout") or {}
        pausing = (
            rollout.get("targetDigest") == THIRD
            and rollout.get("completedSites")
            and not rollout.get("waveSites")
            and rollout.get("nextWaveNotBefore")
        )
        return pausing and rollout

    pause = wait_for(in_the_pause, interval=0.05, timeout=60, what="the pause after the canary")
    devcluster.restart_component("etcd", down_seconds=ETCD_DOWN_SECONDS)
    wait_for(lambda: _api_answers(api), timeout=60, what="the API server to answer after etcd")
    assert pause["completedSites"] == SITES[:1]  # the outage began between two waves
    status = wait_for(
        lambda: available_on(api, "steady", THIRD), timeout=120, what="steady Available on THIRD"
    )
    reasons = api.reasons("steady")
    assert "WaveFailed" not in reasons and "RolledBack" not in reasons, reasons
    assert set(api.daemonset_generations("steady").values()) == {3}

    # Back to idle: the training goes, then nothing the operator watches changes, and the
    # operator writes nothing and reads nothing (its watches carry on).
    api.custom.delete_namespaced_custom_object(
        GROUP, VERSION, api.namespace, "modeltrainings", "after"
    )
    wait_for(lambda: not api.jobs("after"), timeout=60, what="the training's Job to go")
    time.sleep(3)  # let the deletion's last events settle before the soak starts
    since = audit_now()
    time.sleep(SOAK_SECONDS)  # the soak: an observation window, not a wait
    requests = rig.requests(since, audit_now())
    writes = [r for r in requests if r.is_write]
    assert writes == [], f"writes while idle: {by_verb_and_resource(writes)}"
    reads = [r for r in requests if r.verb in ("get", "list") and not events_relist(r)]
    assert reads == [], f"reads while idle: {by_verb_and_resource(reads)}"
    assert sum(1 for r in requests if events_relist(r)) <= 1, by_verb_and_resource(requests)


def _tracked(rig: MeasuredCluster) -> float:
    for line in rig.operator.metrics().splitlines():
        if line.startswith("fogline_tracked_objects "):
            return float(line.split()[1])
    raise AssertionError("the operator exposes no fogline_tracked_objects")


def test_per_object_memory_returns_to_its_size_after_many_objects_come_and_go(
    rig: MeasuredCluster,
) -> None:
    """2,000 EdgeDeployments, created and deleted by a pool of threads: half find no site,
    half wait for a training that does not exist (a held status and an Event each)."""
    api = Api(rig, "chaos-churn")
    before = _tracked(rig)

    def body(index: int) -> dict[str, Any]:
        created = edge(f"e{index:04d}")
        if index % 2:
            created["spec"]["model"] = {"fromTraining": "missing"}
        else:
            created["spec"]["placement"] = {"sites": ["nowhere"]}
        return created

    def reconciled(obj: dict[str, Any]) -> bool:
        return bool((obj.get("status") or {}).get("phase"))

    # Every one gets a status: seen on a watch opened before the first is created (a list
    # of 2,000 objects is megabytes, too heavy to poll on a loaded machine).
    with FirstSeen(
        api.custom.list_namespaced_custom_object,
        object_name,
        reconciled,
        group=GROUP,
        version=VERSION,
        namespace=api.namespace,
        plural="edgedeployments",
    ) as seen:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda i: api.create("edgedeployments", body(i)), range(CHURN)))
        seen.wait([f"e{index:04d}" for index in range(CHURN)], timeout=600)
    assert _tracked(rig) >= before + CHURN

    def delete(index: int) -> None:
        api.custom.delete_namespaced_custom_object(
            GROUP, VERSION, api.namespace, "edgedeployments", f"e{index:04d}"
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(delete, range(CHURN)))
    # Back to what it was (objects of the earlier tests may only have settled further).
    wait_for(
        lambda: _tracked(rig) <= before,
        timeout=300,
        interval=1,
        what=f"per-object memory back to {before}",
    )
