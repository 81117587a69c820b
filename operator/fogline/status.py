"""`fogline status`: ModelTrainings and EdgeDeployments, with per-site rollout state, as rich
tables or JSON, read straight from the API. Presentation only: it never writes to the cluster;
the summaries are pure functions of the objects and `now`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from fogline.api.crds import GROUP, VERSION
from fogline.api.digests import digest_text
from fogline.api.timestamps import parse_time
from fogline.cli import UsageParser

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
# Condition types that report a problem when True; any other condition does when False.
NEGATIVE_CONDITIONS = frozenset({"Degraded", "Failed", "Stalled", "RolledBack"})
# A table of one colour a row (the formatter would give each state a line of its own).
PHASE_STYLES = {
    "Succeeded": "green", "Available": "green", "Ready": "green",
    "Running": "cyan", "Progressing": "cyan", "Updating": "cyan", "Queued": "blue",
    "Failed": "bold red", "Degraded": "red", "RolledBack": "red", "Unreachable": "red",
    "Paused": "yellow", "Suspended": "yellow", "Skipped": "dim", "Pending": "dim",
    "Passed": "green", "Inconclusive": "yellow",
}  # fmt: skip


class StatusError(Exception):
    """The cluster could not be asked; printed as one `error:` line."""


# -- pure summaries ------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """kubectl-style: 45s, 3m12s, 2h5m, 3d4h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60}s" if seconds < 600 else f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def short_digest(digest: str | None) -> str:
    """A digest cell: the one short form, "-" for none."""
    return digest_text(digest)


def failing_message(conditions: Sequence[Mapping[str, Any]] | None) -> str | None:
    """The message of the first condition that reports a problem."""
    for condition in conditions or []:
        negative = condition.get("type") in NEGATIVE_CONDITIONS
        if condition.get("status") == ("True" if negative else "False"):
            return str(condition.get("message") or condition.get("reason") or condition["type"])
    return None


def _seconds_since(text: str | None, now: datetime) -> float | None:
    moment = parse_time(text)
    return None if moment is None else (now - moment).total_seconds()


def training_summary(obj: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """One ModelTraining as the table and `--output json` show it."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    progress = status.get("progress") or {}
    artifact = status.get("artifact") or {}
    metric = artifact.get("metric") or progress.get("metric")
    if not metric and (metrics := status.get("metrics")):
        name = "accuracy" if "accuracy" in metrics else next(iter(metrics))
        metric = {"name": name, "value": metrics[name]}
    eta_in = _seconds_since(progress.get("eta"), now)
    phase = status.get("phase") or "Pending"
    planned = ((obj.get("spec") or {}).get("hyperparameters") or {}).get("epochs")
    return {
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "phase": phase,
        "epoch": progress.get("epoch"),
        "epochs": progress.get("epochs") or planned,
        "eta": progress.get("eta") if phase == "Running" else None,
        "etaSeconds": None if eta_in is None or phase != "Running" else max(0.0, -eta_in),
        "metric": metric,
        "digest": artifact.get("digest"),
        "ageSeconds": _seconds_since(meta.get("creationTimestamp"), now),
        "message": failing_message(status.get("conditions")),
        "compression": status.get("compression"),
    }


def _sites_ready(status: Mapping[str, Any]) -> tuple[int | None, int | None]:
    counts = status.get("counts") or {}
    if counts.get("sites") is not None:
        return counts.get("sitesReady", 0), counts["sites"]
    ready, _, total = str(status.get("sitesReady") or "").partition("/")
    if ready.isdigit() and total.isdigit():
        return int(ready), int(total)
    sites = status.get("sites") or []
    if sites:
        return sum(1 for s in sites if s.get("state") == "Ready"), len(sites)
    return None, None


def deployment_summary(obj: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """One EdgeDeployment, with its sites, as the tables and `--output json` show it."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    ready, total = _sites_ready(status)
    sites = [
        {
            "site": site.get("name"),
            "state": site.get("state") or "Pending",
            "digest": site.get("digest"),
            "ready": site.get("ready"),
            "desired": site.get("desired"),
            "reachable": site.get("reachable"),
            "message": site.get("message"),
        }
        for site in status.get("sites") or []
    ]
    return {
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "phase": status.get("phase") or "Pending",
        "currentDigest": status.get("currentDigest"),
        "targetDigest": status.get("targetDigest"),
        "sitesReady": ready,
        "sitesTotal": total,
        "wave": (status.get("wave") or {}).get("index"),
        "ageSeconds": _seconds_since(meta.get("creationTimestamp"), now),
        "message": failing_message(status.get("conditions")) or status.get("message"),
        "sites": sites,
        "sitesOmitted": int(status.get("sitesOmitted") or 0),
        "analysis": _analysis_rows(status.get("analysis") or {}),
    }


ANALYSIS_KEYS = ("wave", "digest", "phase", "requests", "message", "results")


def _analysis_rows(analysis: Mapping[str, Any]) -> list[dict[str, Any]]:
    """status.analysis as one row per wave, the current (or last) one first: the verdict
    with each threshold's measured value. The current wave also heads ``waves`` once it
    ended, so it is listed once."""
    rows: list[dict[str, Any]] = []
    if analysis.get("phase"):
        rows.append({key: analysis.get(key) for key in ANALYSIS_KEYS})
    for wave in analysis.get("waves") or []:
        row = {key: wave.get(key) for key in ANALYSIS_KEYS}
        if rows and (rows[0]["wave"], rows[0]["digest"]) == (row["wave"], row["digest"]):
            rows[0] = row
            continue
        rows.append(row)
    return rows


# -- tables --------------------------------------------------------------------------------


def _phase(phase: str) -> Text:
    return Text(phase, style=PHASE_STYLES.get(phase, ""))


def _table(title: str, columns: Sequence[str], namespaced: bool) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", header_style="bold")
    for column in (["NAMESPACE"] if namespaced else []) + list(columns):
        table.add_column(column, overflow="fold", max_width=60 if column == "MESSAGE" else None)
    return table


def trainings_table(rows: Sequence[Mapping[str, Any]], all_namespaces: bool) -> Table:
    columns = ("NAME", "PHASE", "PROGRESS", "METRIC", "DIGEST", "AGE", "MESSAGE")
    table = _table("ModelTrainings", columns, all_namespaces)
    for row in rows:
        progress = "-"
        if row["epoch"] is not None:
            progress = f"{row['epoch']}/{row['epochs'] or '?'}"
            if row["etaSeconds"] is not None:
                progress += f"  ETA {duration(row['etaSeconds'])}"
        metric = row["metric"]
        metric_text = f"{metric['name']} {metric['value']:.3f}" if metric else "-"
        age = "-" if row["ageSeconds"] is None else duration(row["ageSeconds"])
        message = Text(row["message"] or "", style="red")
        cells = [
            row["name"],
            _phase(row["phase"]),
            progress,
            metric_text,
            short_digest(row["digest"]),
            age,
            message,
        ]
        table.add_row(*([row["namespace"]] if all_namespaces else []), *cells)
    return table


def compression_table(row: Mapping[str, Any]) -> Table:
    """The candidates of one training's compression: measured, and chosen or why not."""
    compression = row["compression"]
    budget = compression.get("budget") or {}
    limits = [f"batch {budget.get('batchSize', 1)}, {budget.get('threads', 1)} thread(s)"]
    if budget.get("maxSizeBytes") is not None:
        limits.append(f"size <= {budget['maxSizeBytes']:,} B")
    if budget.get("maxLatencyMs") is not None:
        limits.append(f"latency <= {budget['maxLatencyMs']:g} ms")
    if budget.get("minAccuracy"):
        limits.append(f"accuracy >= {budget['minAccuracy']:g}")
    title = f"Compression of {row['namespace']}/{row['name']} ({'; '.join(limits)})"
    columns = ("METHOD", "SIZE", "ACCURACY", "LATENCY P50", "CHOSEN", "MESSAGE")
    table = _table(title, columns, False)
    for candidate in compression.get("candidates") or []:
        chosen = bool(candidate.get("chosen"))
        size, accuracy = candidate.get("sizeBytes"), candidate.get("accuracy")
        latency = candidate.get("latencyMs")
        table.add_row(
            str(candidate.get("method") or "-"),
            "-" if size is None else f"{size:,} B",
            "-" if accuracy is None else f"{accuracy:.4f}",
            "-" if latency is None else f"{latency:.3f} ms",
            Text("yes", style="green") if chosen else Text("no", style="dim"),
            Text(str(candidate.get("reason") or ""), style="" if chosen else "dim"),
        )
    return table


def deployments_table(rows: Sequence[Mapping[str, Any]], all_namespaces: bool) -> Table:
    columns = ("NAME", "PHASE", "MODEL", "SITES READY", "AGE", "MESSAGE")
    table = _table("EdgeDeployments", columns, all_namespaces)
    for row in rows:
        current, target = short_digest(row["currentDigest"]), short_digest(row["targetDigest"])
        model = (
            current
            if row["targetDigest"] in (None, row["currentDigest"])
            else f"{current} → {target}"
        )
        sites = "-" if row["sitesTotal"] is None else f"{row['sitesReady']}/{row['sitesTotal']}"
        age = "-" if row["ageSeconds"] is None else duration(row["ageSeconds"])
        cells = [row["name"], _phase(row["phase"]), model, sites, age, Text(row["message"] or "")]
        table.add_row(*([row["namespace"]] if all_namespaces else []), *cells)
    return table


def sites_table(row: Mapping[str, Any]) -> Table:
    title = f"Sites of {row['namespace']}/{row['name']}"
    table = _table(title, ("SITE", "STATE", "DIGEST", "READY", "REACHABLE", "MESSAGE"), False)
    for site in row["sites"]:
        ready = "-" if site["desired"] is None else f"{site['ready'] or 0}/{site['desired']}"
        reachable = {True: Text("yes"), False: Text("no", style="red")}.get(
            site["reachable"], Text("-")
        )
        table.add_row(
            site["site"],
            _phase(site["state"]),
            short_digest(site["digest"]),
            ready,
            reachable,
            site["message"] or "",
        )
    if omitted := row.get("sitesOmitted"):
        table.caption = f"{omitted} more sites not listed: status keeps those that need a look"
    return table


def _result_text(result: Mapping[str, Any]) -> Text:
    """``p99LatencyRatio 3.4 > 1.2 at shop-a`` (green when within the threshold)."""
    value, threshold = result.get("value"), result.get("threshold")
    metric = str(result.get("metric") or "?")
    if value is None:
        why = result.get("message") or "not measured"
        return Text(f"{metric} -: {why}", style="dim")
    passed = bool(result.get("passed"))
    where = f" at {result['site']}" if result.get("site") else ""
    sign = "<=" if passed else ">"
    text = f"{metric} {value:.4g} {sign} {threshold:.4g}{where}"
    return Text(text, style="green" if passed else "red")


def analysis_table(row: Mapping[str, Any]) -> Table:
    """The metrics analysis of each wave, newest first."""
    title = f"Analysis of {row['namespace']}/{row['name']}"
    table = _table(title, ("WAVE", "DIGEST", "VERDICT", "REQUESTS", "RESULTS", "MESSAGE"), False)
    for wave in row["analysis"]:
        results = Text("\n").join(_result_text(r) for r in wave.get("results") or [])
        requests = "-" if wave.get("requests") is None else str(wave["requests"])
        table.add_row(
            str(wave.get("wave", "-")),
            short_digest(wave.get("digest")),
            _phase(str(wave.get("phase") or "-")),
            requests,
            results,
            str(wave.get("message") or ""),
        )
    return table


def render(
    trainings: Sequence[Mapping[str, Any]],
    deployments: Sequence[Mapping[str, Any]],
    now: datetime,
    scope: str,
    all_namespaces: bool,
) -> Group:
    """Everything `fogline status` prints for these objects, as one renderable."""
    parts: list[Any] = []
    training_rows = [training_summary(t, now) for t in trainings]
    deployment_rows = [deployment_summary(d, now) for d in deployments]
    if training_rows:
        parts.append(trainings_table(training_rows, all_namespaces))
        parts += [compression_table(row) for row in training_rows if row.get("compression")]
    else:
        parts.append(Text(f"No ModelTrainings {scope}.", style="dim"))
    if deployment_rows:
        parts.append(deployments_table(deployment_rows, all_namespaces))
        for row in deployment_rows:
            if row["sites"]:
                parts.append(sites_table(row))
            if row["analysis"]:
                parts.append(analysis_table(row))
    else:
        parts.append(Text(f"No EdgeDeployments {scope}.", style="dim"))
    return Group(*parts)


def as_json(
    trainings: Sequence[Mapping[str, Any]], deployments: Sequence[Mapping[str, Any]], now: datetime
) -> dict[str, Any]:
    return {
        "modelTrainings": [training_summary(t, now) for t in trainings],
        "edgeDeployments": [deployment_summary(d, now) for d in deployments],
    }


# -- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="fogline status",
        description="Show ModelTrainings and EdgeDeployments (with per-site rollout state).",
        epilog="Exit codes: 0 shown, 1 the cluster could not be read, 2 bad flags.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="namespace (default: the context's, or default)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("-w", "--watch", action="store_true", help="refresh until Ctrl-C")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    return parser


class ClusterReader:
    """Lists the two kinds through the kubernetes client, with errors turned into one line."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import client, config

        try:
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
            chosen = (
                next((c for c in contexts if c["name"] == context), None) if context else active
            )
            if chosen is None:
                raise StatusError(f"context {context!r} is not in the kubeconfig")
            self.default_namespace: str = chosen.get("context", {}).get("namespace") or "default"
            api = config.new_client_from_config(config_file=kubeconfig, context=context)
        except (config.ConfigException, OSError) as err:
            raise StatusError(
                f"no usable Kubernetes configuration ({err}); pass --kubeconfig or set KUBECONFIG"
            ) from err
        self.server = api.configuration.host
        self.objects = client.CustomObjectsApi(api)

    def list(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            if namespace is None:
                reply = self.objects.list_cluster_custom_object(
                    GROUP, VERSION, plural, _request_timeout=10
                )
            else:
                reply = self.objects.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, _request_timeout=10
                )
        except ApiException as err:
            if err.status == 404:
                raise StatusError(
                    f"{plural}.{GROUP} is not served by {self.server}; install Fogline's CRDs"
                ) from err
            raise StatusError(f"listing {plural}: {err.status} {err.reason}") from err
        except (HTTPError, OSError) as err:
            raise StatusError(f"cannot reach the cluster at {self.server}: {err}") from err
        items: list[dict[str, Any]] = reply.get("items") or []
        return sorted(
            items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.interval <= 0:
        print("error: --interval must be above 0", file=sys.stderr)
        return EXIT_USAGE
    console = Console()
    try:
        reader = ClusterReader(args.kubeconfig, args.context)
        namespace = None if args.all_namespaces else (args.namespace or reader.default_namespace)
        scope = "in any namespace" if namespace is None else f"in namespace {namespace}"

        def snapshot() -> tuple[list[dict[str, Any]], list[dict[str, Any]], datetime]:
            return (
                reader.list("modeltrainings", namespace),
                reader.list("edgedeployments", namespace),
                datetime.now(UTC),
            )

        if args.output == "json":
            print(json.dumps(as_json(*snapshot()), indent=2))
            return EXIT_OK
        if not args.watch:
            console.print(render(*snapshot(), scope, args.all_namespaces))
            return EXIT_OK
        from rich.live import Live

        with Live(render(*snapshot(), scope, args.all_namespaces), console=console) as live:
            while True:
                time.sleep(args.interval)
                live.update(render(*snapshot(), scope, args.all_namespaces))
    except StatusError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
