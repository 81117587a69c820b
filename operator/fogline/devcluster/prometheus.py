"""A real Prometheus on loopback for the rollout analysis tests: the binary `make tools`
installs (tools/prometheus/build.sh), its own data folder, a short scrape interval, and the
targets to scrape in a file_sd file that can be rewritten while it runs, each with the
labels kubernetes_sd relabeling would give a pod (Debian's build has no kubernetes_sd).
Development only: plain HTTP on 127.0.0.1, no authentication."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fogline.devcluster.binaries import find_prometheus_dir
from fogline.devcluster.cluster import free_port
from fogline.devcluster.stores import _alive, _terminate

JOB = "fogline-edge"
READY_TIMEOUT_SECONDS = 30.0


class PrometheusError(RuntimeError):
    pass


@dataclass(frozen=True)
class ScrapeTarget:
    """One server to scrape, `host:port`, with the labels its series get (a pod's `pod` and
    `namespace`, as kubernetes_sd relabeling usually names them)."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


class PrometheusServer:
    """A Prometheus living in `directory` (config, targets file, TSDB, log)."""

    def __init__(
        self,
        directory: Path,
        scrape_interval_seconds: float = 1.0,
        bin_dir: Path | None = None,
    ) -> None:
        self.directory = directory.resolve()
        self.scrape_interval_seconds = scrape_interval_seconds
        self._bin_dir = bin_dir
        self.port = 0
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets_file(self) -> Path:
        return self.directory / "targets.json"

    @property
    def log(self) -> Path:
        return self.directory / "prometheus.log"

    def set_targets(self, targets: Sequence[ScrapeTarget]) -> None:
        """Replace what is scraped; a running Prometheus notices the file within a second
        (file_sd watches it). Written whole, then renamed, so it never reads half a file."""
        groups = [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]
        partial = self.targets_file.with_suffix(".partial")
        partial.write_text(json.dumps(groups))
        partial.replace(self.targets_file)

    def up(self, targets: Sequence[ScrapeTarget] = ()) -> str:
        """Start Prometheus scraping `targets` and wait until /-/ready answers; returns its
        URL."""
        if self.pid is not None and _alive(self.pid):
            return self.url
        bin_dir = self._bin_dir or find_prometheus_dir()
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        self.set_targets(targets)
        interval = f"{self.scrape_interval_seconds:g}s"
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "file_sd_configs": [
                        {"files": [str(self.targets_file)], "refresh_interval": "1s"}
                    ],
                }
            ],
        }
        config_file = self.directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.port = free_port()
        with self.log.open("ab") as log:
            process = subprocess.Popen(
                [
                    str(bin_dir / "prometheus"),
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    "--storage.tsdb.retention.time=1h",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.directory,
            )
        self.pid = process.pid
        try:
            self._wait_ready(process)
        except BaseException:
            self.down()
            raise
        return self.url

    def down(self) -> None:
        """Stop the Prometheus this object started, by its PID."""
        if self.pid is not None:
            _terminate(self.pid)
            self.pid = None

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise PrometheusError(f"prometheus exited during start-up; see {self.log}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.05)
        raise PrometheusError(
            f"prometheus was not ready at {self.url} within {READY_TIMEOUT_SECONDS:g} s; "
            f"see {self.log}"
        )
