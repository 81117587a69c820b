"""Training progress for the operator: a JSON annotation on the trainer's own pod, patched
at most once per epoch and per interval. Reporting is best effort; nothing here may ever
fail or stall training, and without POD_NAME nothing is reported."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ANNOTATION = "fogline.io/progress"
INTERVAL_VARIABLE = "FOGLINE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_SECONDS = 5.0
API_TIMEOUT_SECONDS = 5.0
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

PatchAnnotations = Callable[[Mapping[str, str]], None]


@dataclass(frozen=True)
class EpochReport:
    """What one finished epoch measured; the loop's output and the reporter's input."""

    epoch: int
    epochs: int
    train_loss: float
    validation_loss: float
    accuracy: float
    samples_per_second: float
    seconds: float

    def log_line(self) -> str:
        return (
            f"epoch {self.epoch}/{self.epochs}  loss {self.train_loss:.4f}  "
            f"val_loss {self.validation_loss:.4f}  accuracy {self.accuracy:.4f}  "
            f"{self.samples_per_second:,.0f} samples/s  {self.seconds:.2f}s"
        )


def progress_payload(report: EpochReport, now: datetime) -> dict[str, Any]:
    return {
        "epoch": report.epoch,
        "epochs": report.epochs,
        "loss": round(report.train_loss, 6),
        "metric": {"name": "accuracy", "value": round(report.accuracy, 6)},
        "samplesPerSecond": round(report.samples_per_second, 1),
        "updatedAt": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


class ProgressReporter:
    """Patches the progress annotation through an injected function (the Kubernetes API in a
    pod, a recorder in tests). Throttled by a monotonic clock; failures are logged once."""

    def __init__(
        self,
        patch: PatchAnnotations | None,
        *,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._patch = patch
        self._interval = interval_seconds
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._last_sent: float | None = None
        self._last_epoch: int | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._patch is not None

    def report(self, report: EpochReport) -> bool:
        """Sends the epoch's progress unless throttled; returns whether a patch went out."""
        if self._patch is None or report.epoch == self._last_epoch:
            return False
        now = self._monotonic()
        if self._last_sent is not None and now - self._last_sent < self._interval:
            return False
        try:
            payload = json.dumps(
                progress_payload(report, self._wall_clock()), separators=(",", ":"), allow_nan=False
            )
        except ValueError:  # a non-finite number is no progress; the loop reports divergence
            return False
        self._last_sent = now
        self._last_epoch = report.epoch
        try:
            self._patch({ANNOTATION: payload})
        except Exception as err:  # any API or network failure; training must go on
            if not self._warned:
                log.warning("progress reporting failed (training continues): %s", err)
                self._warned = True
            else:
                log.debug("progress reporting failed again: %s", err)
            return False
        return True


def interval_from_environment(env: Mapping[str, str]) -> float:
    raw = env.get(INTERVAL_VARIABLE)
    if not raw:
        return DEFAULT_INTERVAL_SECONDS
    try:
        value = float(raw)
    except ValueError:
        log.warning(
            "%s=%r is not a number; using %ss", INTERVAL_VARIABLE, raw, DEFAULT_INTERVAL_SECONDS
        )
        return DEFAULT_INTERVAL_SECONDS
    return max(0.0, value)


def reporter_from_environment(env: Mapping[str, str]) -> ProgressReporter:
    """A reporter for the pod named by POD_NAME/POD_NAMESPACE (downward API), or a disabled
    one when there is no pod name or no reachable API configuration."""
    interval = interval_from_environment(env)
    pod = env.get("POD_NAME")
    if not pod:
        return ProgressReporter(None, interval_seconds=interval)
    namespace = env.get("POD_NAMESPACE") or _namespace_from_service_account()
    try:
        patch = kubernetes_pod_patcher(pod, namespace, env.get("KUBECONFIG"))
    except Exception as err:  # no config or a broken one; report nothing, train anyway
        log.warning("progress reporting is off: no Kubernetes API configuration (%s)", err)
        return ProgressReporter(None, interval_seconds=interval)
    return ProgressReporter(patch, interval_seconds=interval)


def kubernetes_pod_patcher(pod: str, namespace: str, kubeconfig: str | None) -> PatchAnnotations:
    from kubernetes import client, config

    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
    else:
        config.load_incluster_config()
    api = client.CoreV1Api()

    def patch(annotations: Mapping[str, str]) -> None:
        api.patch_namespaced_pod(
            pod,
            namespace,
            {"metadata": {"annotations": dict(annotations)}},
            _request_timeout=API_TIMEOUT_SECONDS,
        )

    return patch


def _namespace_from_service_account() -> str:
    try:
        return _NAMESPACE_FILE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"
