"""`fogline demo`: the whole story on the local real control plane. Starts the dev cluster
with its local nodes (a real edge node in each of three sites), installs the chart, runs the
operator as the chart's ServiceAccount, applies the samples, and shows a real training, a
first deployment, a second training rolled out canary first and in waves gated on the edge
servers' live metrics, a deliberately bad model rolled back by that analysis, and a real
inference. A load generator sends real inference requests to every Ready server throughout,
so that each wave's analysis has traffic to judge."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fogline.devcluster import DevCluster, DevClusterError, Topology
from fogline.devcluster.binaries import ToolsMissingError
from fogline.devcluster.loadgen import FollowingLoad, digits_rows
from fogline.devcluster.localpods import pod_endpoint, pod_folder_name
from fogline.devcluster.topology import EDGE_ROLE_LABEL, LOCAL_EDGE_NODE, LOCAL_NODE_LABEL

SYSTEM_NAMESPACE = "fogline-system"
DEMO_NAMESPACE = "fogline-demo"
TRAINER_IMAGE = "fogline.dev/trainer:local"
SERVER_IMAGE = "fogline.dev/server:local"
TRAINING, EDGE, SERVED_NAME = "digits-mlp-s3", "digits-edge-s3", "digits"
SAMPLES = ("modeltraining-digits-mlp-s3.yaml", "edgedeployment-digits-edge-s3.yaml")
SITES = 3  # each with a real local edge node
# Each wave is judged on 5 s of its servers' own metrics against the sites still on the
# stable model; the load generator gives every Ready server this many requests a second.
ANALYSIS = {
    "windowSeconds": 5,
    "minRequests": 20,
    "maxErrorRatio": 0.05,
    "maxP99LatencyRatio": 3.0,
    "maxPods": 3,
}
LOAD_RATE = 15
RETRAIN_EPOCHS = 30  # the second training: more epochs than the sample's
BAD_MODEL_PREFIX = "demo/lookup-bug"  # in the store's bucket


class DemoError(RuntimeError):
    pass


@dataclass
class DemoSummary:
    """What the demo shows at the end, and writes as JSON with --summary."""

    training: dict[str, Any] = field(default_factory=dict)
    rollout: dict[str, Any] = field(default_factory=dict)
    retraining: dict[str, Any] = field(default_factory=dict)  # the second training
    second_rollout: dict[str, Any] = field(default_factory=dict)
    bad_model: dict[str, Any] = field(default_factory=dict)  # its rollout, rolled back
    traffic: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def repo_root() -> Path:
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if (parent / "charts" / "fogline").is_dir() and (
                parent / "manifests" / "samples"
            ).is_dir():
                return parent
    raise DemoError(
        "run the demo from a Fogline checkout: charts/ and manifests/samples/ are needed"
    )


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(interval)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")


def rollout_line(status: Mapping[str, Any], digest: str) -> str:
    """One line of a rollout in progress: phase, the wave and its analysis, each site."""
    parts = [str(status.get("phase", "Pending"))]
    wave = status.get("wave") or {}
    if wave.get("index") is not None:
        parts.append(f"wave {wave['index']} ({', '.join(wave.get('sites') or [])})")
    analysis = status.get("analysis") or {}
    if analysis.get("digest") == digest and analysis.get("phase"):
        parts.append(f"analysis {analysis['phase']}, {analysis.get('requests') or 0} requests")
    sites = " ".join(
        f"{s['name']}:{s.get('state')}{'*' if s.get('digest') == digest else ''}"
        for s in status.get("sites") or []
    )
    return " · ".join([*parts, sites])


def settled(status: Mapping[str, Any], digest: str, expect: str) -> bool:
    """Whether the rollout of `digest` is over as expected: Available on it, or rolled back
    from it with every site on the stable model again (a site's state is RolledBack once its
    pods are Ready there; the phase is RolledBack as the sites start going back, and an earlier rollback reads RolledBack until the operator takes
    up the new digest: its analysis tells them apart)."""
    served = status.get("currentDigest")
    sites = status.get("sites") or []
    every_site_ready = bool(sites) and all(
        s.get("digest") == served and s.get("state") in ("Ready", "RolledBack") for s in sites
    )
    if expect == "Available":
        return served == digest and every_site_ready
    analysed = (status.get("analysis") or {}).get("digest") == digest
    return analysed and served != digest and every_site_ready


def wave_summary(wave: Mapping[str, Any]) -> dict[str, Any]:
    """A finished wave's analysis as the summary shows it."""
    results = wave.get("results") or []
    measured = ", ".join(
        f"{r['metric']} {_number(r.get('value'))} (≤ {_number(r.get('threshold'))}"
        + (f", baseline {_number(r['baseline'])}" if r.get("baseline") is not None else "")
        + (f", {r['site']}" if r.get("site") else "")
        + ")"
        if r.get("value") is not None
        else f"{r['metric']} not judged ({r.get('message') or 'nothing to compare'})"
        for r in results
    )
    text = f"analysis {wave.get('phase')} on {wave.get('requests')} requests: {measured}"
    return {
        "wave": wave.get("wave"),
        "phase": wave.get("phase"),
        "requests": wave.get("requests"),
        "results": results,
        "text": text,
    }


def failure_text(site: str | None, failure: Mapping[str, Any]) -> str:
    return (
        f"failed at {site}: {failure.get('metric')} {_number(failure.get('value'))} "
        f"> threshold {_number(failure.get('threshold'))}; every site back on the stable model"
    )


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "-"


class Demo:
    def __init__(self, root: Path, workdir: Path, console: Console) -> None:
        self.root = root
        self.workdir = workdir
        self.console = console
        self.cluster = DevCluster(workdir / "cluster")
        self.operator: subprocess.Popen[bytes] | None = None
        self.summary = DemoSummary()
        self._api: Any = None

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = self.cluster.api_client()
        return self._api

    def custom(self, plural: str, name: str) -> dict[str, Any]:
        from kubernetes import client

        result: dict[str, Any] = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            "fogline.io", "v1alpha1", DEMO_NAMESPACE, plural, name
        )
        return result

    def helm(self, *args: str) -> None:
        result = subprocess.run(
            [
                str(self.cluster.tools_dir / "helm"),
                *args,
                f"--kubeconfig={self.cluster.kubeconfig}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if result.returncode != 0:
            raise DemoError(f"helm {args[0]} failed: {result.stderr.strip()}")

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        started = time.monotonic()
        with self.console.status(f"[bold]{title}…"):
            yield
        took = time.monotonic() - started
        self.summary.seconds[title] = round(took, 1)
        self.console.print(f"[green]✓[/] {title} [dim]({took:.1f} s)[/]")

    # -- the story --------------------------------------------------------------------------
    def run(self) -> DemoSummary:
        with self.step(
            "Start the local control plane (a local GPU node, a local edge node a site)"
        ):
            topology = Topology(
                gpu_nodes=0, edge_sites=SITES, nodes_per_site=1, local_edge_sites=SITES
            )
            self.cluster.up(topology, local_nodes=True, stores=True)
        with self.step("Install Fogline with the Helm chart"):
            self.helm(
                "install",
                "fogline",
                str(self.root / "charts" / "fogline"),
                f"--namespace={SYSTEM_NAMESPACE}",
                "--create-namespace",
                # The operator runs on this machine below, as the chart's ServiceAccount.
                "--set",
                "replicaCount=0",
                "--set",
                f"settings.trainerImage={TRAINER_IMAGE}",
                "--set",
                f"settings.serverImage={SERVER_IMAGE}",
            )
        with self.step("Run the operator as the chart's ServiceAccount"):
            self.start_operator()
        with self.step("Create the store's Secrets and apply the S3 samples"):
            endpoint = self.prepare_namespace()
            for sample in SAMPLES:
                # The samples name a conventional endpoint; the demo's store has a port of its own.
                body = yaml.safe_load((self.root / "manifests" / "samples" / sample).read_text())
                place = body["spec"]["output" if body["kind"] == "ModelTraining" else "model"]
                place["access"]["endpoint"] = endpoint
                if body["kind"] == "EdgeDeployment":
                    self.gate_on_live_metrics(body["spec"])
                self.cluster.kubectl(
                    "apply", "-n", DEMO_NAMESPACE, "-f", "-", input=yaml.safe_dump(body)
                )
        with self.traffic():
            self.summary.training = self.follow_training("Train digits-mlp on the local GPU node")
            self.summary.rollout = self.follow_rollout(
                "First deployment", self.summary.training["digest"]
            )
            self.retrain()
            self.summary.retraining = self.follow_training(f"Train again, {RETRAIN_EPOCHS} epochs")
            self.summary.second_rollout = self.follow_rollout(
                "Roll out the second training", self.summary.retraining["digest"]
            )
            digest = self.publish_bad_model(endpoint)
            self.summary.bad_model = self.follow_rollout(
                "Roll out a deliberately bad model", digest, expect="RolledBack"
            )
        with self.step("Send an inference request to the server on the local edge node"):
            self.infer()
        return self.summary

    @staticmethod
    def gate_on_live_metrics(spec: dict[str, Any]) -> None:
        """The sample EdgeDeployment as the demo runs it: on the local edge nodes only (their
        servers are real and can be measured; kwok's pods would leave every wave
        inconclusive), waves one after another without the sample's pause, each gated on
        its servers' live metrics, and a short drain."""
        spec.setdefault("placement", {})["nodeSelector"] = {
            EDGE_ROLE_LABEL: "true",
            LOCAL_NODE_LABEL: "true",
        }
        spec["rollout"] |= {"pauseSeconds": 0, "analysis": ANALYSIS}
        # One node a site: the new server replaces the old in place, after its drain.
        spec["runtime"]["drainSeconds"] = 1

    @contextlib.contextmanager
    def traffic(self) -> Iterator[FollowingLoad]:
        """Real inference requests to every Ready server of the EdgeDeployment, following
        the pods as the rollouts replace them; bounded in rate and time, loopback only."""
        load = FollowingLoad(
            self.ready_servers, SERVED_NAME, digits_rows(), rate=LOAD_RATE, seconds=600
        )
        with load:
            yield load
        results = load.snapshot()
        self.summary.traffic = {
            "requests": sum(r.sent for r in results.values()),
            "errors": sum(r.errors for r in results.values()),
            "servers": len(results),
        }

    def ready_servers(self) -> list[str]:
        from kubernetes import client

        pods = client.CoreV1Api(self.api).list_namespaced_pod(
            DEMO_NAMESPACE, label_selector=f"fogline.io/edgedeployment={EDGE}"
        )
        return [
            pod_endpoint(self.api.sanitize_for_serialization(pod))
            for pod in pods.items
            if pod.metadata.deletion_timestamp is None
            and pod.status.pod_ip
            and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        ]

    def retrain(self) -> None:
        """A second training of the same ModelTraining, with more epochs: a new run, a new
        artifact, which the EdgeDeployment (following the training) rolls out."""
        from kubernetes import client

        client.CustomObjectsApi(self.api).patch_namespaced_custom_object(
            "fogline.io",
            "v1alpha1",
            DEMO_NAMESPACE,
            "modeltrainings",
            TRAINING,
            {"spec": {"hyperparameters": {"epochs": RETRAIN_EPOCHS}}},
        )
        first = self.summary.training["digest"]
        wait(
            lambda: (
                (self.custom("modeltrainings", TRAINING).get("status") or {}).get("phase")
                not in ("Succeeded", None)
                or self.custom("modeltrainings", TRAINING)["status"]["artifact"]["digest"] != first
            ),
            60,
            "the second training to start",
        )

    def publish_bad_model(self, endpoint: str) -> str:
        """A model with a bug no gate before the edge sees: it has the right signature, loads
        and becomes Ready, and fails every real request (fogline.devcluster.rollout_models).
        Published to the bucket as the trainer publishes; the EdgeDeployment is pointed at it."""
        from kubernetes import client

        from fogline.devcluster.rollout_models import failing_onnx, write_onnx_artifact
        from fogline.workloads.trainer.publish import publish

        stores = self.cluster.stores.read()
        assert stores is not None  # prepare_namespace checked it
        folder = self.workdir / "bad-model"
        digest = write_onnx_artifact(folder, failing_onnx(), name=SERVED_NAME)
        uri = f"s3://{stores.bucket}/{BAD_MODEL_PREFIX}"
        publish(
            folder,
            uri,
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": stores.writer_access_key,
                "AWS_SECRET_ACCESS_KEY": stores.writer_secret_key,
            },
        )
        client.CustomObjectsApi(self.api).patch_namespaced_custom_object(
            "fogline.io",
            "v1alpha1",
            DEMO_NAMESPACE,
            "edgedeployments",
            EDGE,
            {"spec": {"model": {"fromTraining": None, "uri": uri, "digest": digest}}},
        )
        return digest

    def start_operator(self) -> None:
        kubeconfig = self.cluster.service_account_kubeconfig(
            SYSTEM_NAMESPACE, "fogline", self.workdir / "operator.kubeconfig"
        )
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "FOGLINE_TRAINER_IMAGE": TRAINER_IMAGE,
            "FOGLINE_SERVER_IMAGE": SERVER_IMAGE,
        }
        log = (self.workdir / "operator.log").open("ab")
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "fogline.cli", "run", "--all-namespaces", "--peering=fogline"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        (self.workdir / "operator.pid").write_text(str(self.operator.pid))

    def prepare_namespace(self) -> str:
        """The namespace with a writer Secret for the trainer and a read-only one for the edge;
        returns the S3 endpoint. No volume is shared between the GPU and the edge node."""
        import base64

        from kubernetes import client

        stores = self.cluster.stores.read()
        if stores is None:
            raise DemoError("the artifact stores did not start; see the cluster's stores/logs")
        core = client.CoreV1Api(self.api)
        core.create_namespace({"metadata": {"name": DEMO_NAMESPACE}})
        wait(
            lambda: (
                core.list_namespaced_service_account(
                    DEMO_NAMESPACE, field_selector="metadata.name=default"
                ).items
            ),
            30,
            "the namespace's default ServiceAccount",
        )
        for name, (key, secret) in {
            "artifact-writer": (stores.writer_access_key, stores.writer_secret_key),
            "artifact-reader": (stores.reader_access_key, stores.reader_secret_key),
        }.items():
            data = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
            encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
            core.create_namespaced_secret(
                DEMO_NAMESPACE, {"metadata": {"name": name}, "data": encoded}
            )
        return stores.s3_endpoint

    def follow_training(self, title: str) -> dict[str, Any]:
        started = time.monotonic()
        columns = (
            TextColumn("[bold]Train {task.fields[phase]:<9}"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task("waiting for the training pod", total=None, phase="Pending")
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                status = self.custom("modeltrainings", TRAINING).get("status") or {}
                phase = status.get("phase", "Pending")
                report = status.get("progress") or {}
                if report.get("epochs"):
                    metric = (report.get("metric") or {}).get("value")
                    text = f"epoch {report['epoch']}/{report['epochs']}"
                    text += f"  loss {report.get('loss', 0):.3f}"
                    text += f"  accuracy {metric:.3f}" if metric is not None else ""
                    progress.update(
                        task,
                        total=report["epochs"],
                        completed=report["epoch"],
                        description=text,
                        phase=phase,
                    )
                else:
                    progress.update(task, phase=phase)
                if phase in ("Succeeded", "Failed"):
                    if phase == "Succeeded" and report.get("epochs"):
                        progress.update(
                            task, completed=report["epochs"], description="done", phase=phase
                        )
                    break
                time.sleep(0.5)
            else:
                raise DemoError("the training did not finish within 15 minutes")
        if phase != "Succeeded":
            failed: dict[str, Any] = next(
                (c for c in status.get("conditions", []) if c["type"] == "Succeeded"), {}
            )
            raise DemoError(
                f"the training ended {phase}: {failed.get('reason')}: {failed.get('message')}"
            )
        artifact = status["artifact"]
        spec = self.custom("modeltrainings", TRAINING)["spec"]
        training = {
            "phase": phase,
            "epochs": spec["hyperparameters"]["epochs"],
            "accuracy": artifact["metric"]["value"],
            "threshold": spec["evaluation"]["threshold"],
            "digest": artifact["digest"],
            "digestShort": status["artifactDigestShort"],
            "uri": artifact["uri"],
            "quantized": artifact.get("quantized"),
            "sizeBytes": artifact.get("sizeBytes"),
        }
        self.summary.seconds[title] = round(time.monotonic() - started, 1)
        self.console.print(
            f"[green]✓[/] {title}: accuracy {artifact['metric']['value']:.4f} "
            f"(gate {training['threshold']}), artifact {training['digestShort']}"
        )
        return training

    def follow_rollout(self, title: str, digest: str, expect: str = "Available") -> dict[str, Any]:
        """Show the rollout of `digest` live (phase, wave, its analysis, each site) until it
        is `expect` (Available, or RolledBack for a model the analysis must stop); return
        what happened at each wave."""
        started = time.monotonic()
        with self.console.status(f"[bold]{title}…") as shown:

            def finished() -> dict[str, Any] | None:
                status = self.custom("edgedeployments", EDGE).get("status") or {}
                shown.update(f"[bold]{title}: [/]{rollout_line(status, digest)}")
                if status.get("phase") == expect and settled(status, digest, expect):
                    return status
                if status.get("phase") in ("RolledBack", "Failed") and expect == "Available":
                    raise DemoError(f"{title}: {status.get('phase')}: {status.get('message')}")
                return None

            status = wait(finished, 300, f"the EdgeDeployment to be {expect}")
        took = time.monotonic() - started
        self.summary.seconds[title] = round(took, 1)
        analysis = status.get("analysis") or {}
        # status.analysis.waves lists the newest first; the summary tells them in order.
        ours = [w for w in analysis.get("waves") or [] if w.get("digest") == digest]
        waves = [wave_summary(w) for w in sorted(ours, key=lambda w: int(w.get("wave") or 0))]
        result = {
            "digest": digest,
            "phase": status["phase"],
            "currentDigest": status.get("currentDigest"),
            "currentDigestShort": status.get("currentDigestShort"),
            "sitesReady": status.get("sitesReady"),
            "failedSite": status.get("failedSite"),
            "failure": analysis.get("failure") if expect == "RolledBack" else None,
            "message": status.get("message"),
            "waves": waves,
            "sites": [
                {k: s.get(k) for k in ("name", "state", "ready", "desired")}
                for s in status.get("sites") or []
            ],
        }
        mark = "[green]✓[/]"
        self.console.print(f"{mark} {title}: {status['phase']} [dim]({took:.1f} s)[/]")
        for wave in waves:
            self.console.print(f"    wave {wave['wave']}: {wave['text']}")
        if result["failure"]:
            self.console.print(f"    {failure_text(result['failedSite'], result['failure'])}")
        return result

    def infer(self) -> None:
        from kubernetes import client
        from sklearn.datasets import load_digits

        core = client.CoreV1Api(self.api)

        def ready_on_local_edge() -> Any:
            pods = core.list_namespaced_pod(
                DEMO_NAMESPACE, label_selector=f"fogline.io/edgedeployment={EDGE}"
            ).items
            return next(
                (
                    p
                    for p in pods
                    if p.spec.node_name == LOCAL_EDGE_NODE
                    and p.metadata.deletion_timestamp is None
                    and any(
                        c.type == "Ready" and c.status == "True" for c in p.status.conditions or []
                    )
                ),
                None,
            )

        pod = wait(ready_on_local_edge, 60, f"a Ready server on {LOCAL_EDGE_NODE}")
        base = pod_endpoint(self.api.sanitize_for_serialization(pod))
        with urllib.request.urlopen(f"{base}/v2/models/{SERVED_NAME}", timeout=10) as reply:
            metadata = json.load(reply)
        digits = load_digits()
        index = 1234 % len(digits.target)
        request = {
            "inputs": [
                {
                    "name": metadata["inputs"][0]["name"],
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "data": [float(v) for v in digits.data[index]],
                }
            ]
        }
        posted = urllib.request.Request(
            f"{base}/v2/models/{SERVED_NAME}/infer",
            data=json.dumps(request).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(posted, timeout=10) as reply:
            answer = json.load(reply)
        scores = answer["outputs"][0]["data"]
        predicted = max(range(len(scores)), key=scores.__getitem__)
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
        served = next(
            line for line in metrics.splitlines() if line.startswith("fogline_model_info{")
        )
        labels = dict(
            part.split("=", 1)
            for part in served[served.index("{") + 1 : served.index("}")].split(",")
        )
        served_digest = labels["digest"].strip('"')
        # The manifest is written canonically, so its bytes hash to the artifact digest, and it
        # lists the sha256 of every file the server verified before it loaded them.
        # The copy the server verified and loaded: the pod's model volume (the node agent's
        # folder for it), whichever cache the fetch step used.
        meta = pod.metadata
        folder = pod_folder_name(meta.namespace, meta.name, meta.uid)
        # The volume is mounted at /models; the fetch step installs into /models/current.
        model_volume = self.cluster.local_root / "pods" / folder / "volumes" / "model"
        manifest = model_volume / "current" / "manifest.json"
        manifest_digest = "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
        self.summary.inference = {
            "pod": pod.metadata.name,
            "node": pod.spec.node_name,
            "sample": index,
            "label": int(digits.target[index]),
            "predicted": predicted,
            "correct": predicted == int(digits.target[index]),
            "servedDigest": served_digest,
            "servedManifestSha256": manifest_digest,
        }

    # -- the end ----------------------------------------------------------------------------
    def report(self) -> None:
        s = self.summary
        table = Table(title="Fogline demo", show_header=False)
        for label, training in (("Training", s.training), ("Second training", s.retraining)):
            table.add_row(
                label,
                f"{training['phase']}, {training['epochs']} epochs: accuracy "
                f"{training['accuracy']:.4f} ≥ gate {training['threshold']}, INT8 "
                f"{training['quantized']}, {training['sizeBytes']} bytes\n{training['digest']}",
            )
        rollouts = (
            ("First deployment", s.rollout),
            ("Second rollout", s.second_rollout),
            ("Bad model", s.bad_model),
        )
        for label, rollout in rollouts:
            table.add_row(
                label,
                f"{rollout['phase']}, serving {rollout['currentDigestShort']}, sites ready "
                f"{rollout['sitesReady']}",
            )
            for wave in rollout["waves"]:
                table.add_row("", f"wave {wave['wave']}: {wave['text']}")
            if rollout["failure"]:
                table.add_row("", failure_text(rollout["failedSite"], rollout["failure"]))
        table.add_row(
            "Traffic",
            f"{s.traffic['requests']} inference requests to {s.traffic['servers']} servers, "
            f"{s.traffic['errors']} answered 5xx or not at all (the bad model's, and servers "
            "stopped while a request was on its way)",
        )
        verdict = "correct" if s.inference["correct"] else "wrong"
        table.add_row(
            "Inference",
            f"digit {s.inference['label']} → predicted {s.inference['predicted']} ({verdict}) "
            f"by {s.inference['pod']} on {s.inference['node']}",
        )
        served = s.retraining["digest"]
        match = "equals" if s.inference["servedManifestSha256"] == served else "DIFFERS FROM"
        table.add_row(
            "Digest check",
            f"sha256 of the manifest the server verified {match} the second training's digest",
        )
        self.console.print(table)

    def stop(self) -> None:
        stop_operator(self.workdir)
        if self._api is not None:
            self._api.close()
        self.cluster.down()


def stop_operator(workdir: Path) -> None:
    pid_file = workdir / "operator.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
    pid_file.unlink()


NEXT_STEPS = """Try next (with --keep):
  export KUBECONFIG={kubeconfig}
  fogline status -n fogline-demo
  kubectl -n fogline-demo get mt,ed
  kubectl -n fogline-demo patch mt digits-mlp --type=merge -p '{{"spec":{{"hyperparameters":{{"epochs":30}}}}}}'
Stop it with `make demo-down`."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fogline demo", description=__doc__)
    parser.add_argument(
        "--dir", type=Path, default=Path(".demo"), help="working folder (default: %(default)s)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the cluster and operator running"
    )
    parser.add_argument("--down", action="store_true", help="stop a demo left running with --keep")
    parser.add_argument("--summary", type=Path, help="also write the summary as JSON to this file")
    args = parser.parse_args(argv)
    console = Console()
    workdir = args.dir.resolve()
    if args.down:
        stop_operator(workdir)
        DevCluster(workdir / "cluster").down()
        console.print("demo stopped")
        return 0
    try:
        root = repo_root()
    except DemoError as err:
        console.print(f"[red]error:[/] {err}")
        return 1
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(root, workdir, console)
    ok = False
    try:
        demo.run()
        demo.report()
        if args.summary:
            args.summary.write_text(json.dumps(demo.summary.__dict__, indent=2))
        ok = True
    except (DemoError, DevClusterError, ToolsMissingError) as err:
        console.print(f"[red]error:[/] {err}\n[dim]operator log: {workdir / 'operator.log'}[/]")
    finally:
        if args.keep and ok:
            console.print(NEXT_STEPS.format(kubeconfig=demo.cluster.kubeconfig))
        else:
            demo.stop()
    return 0 if ok else 1
