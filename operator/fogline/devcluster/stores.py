"""The artifact stores beside the dev cluster: versitygw (S3 over a local folder) and the CNCF
distribution registry (OCI), on loopback ports, with a bucket, a writer and a read-only user
made on the fly. Endpoints and credentials go to DIR/stores.json for tests and the demo.
Development only: both speak plain HTTP on loopback, and the registry has no authentication
unless asked for htpasswd (one user, who may push and pull: htpasswd cannot scope a user to
pulls, which a production registry's tokens do)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fogline.devcluster.binaries import find_stores_dir

BUCKET = "fogline-artifacts"
REGION = "us-east-1"
STORE_PROCESSES = ("versitygw", "registry")


class StoreError(RuntimeError):
    pass


@dataclass
class StoreEndpoints:
    """What a client needs to reach the stores: written to DIR/stores.json."""

    s3_endpoint: str
    region: str
    bucket: str
    writer_access_key: str
    writer_secret_key: str
    reader_access_key: str
    reader_secret_key: str
    registry: str  # host:port, plain HTTP
    pids: dict[str, int] = field(default_factory=dict)
    # Set when the registry runs with htpasswd authentication.
    registry_username: str = ""
    registry_password: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def s3_client(self, reader: bool = False) -> Any:
        """A boto3 client as writer (default) or as the read-only user."""
        import boto3
        from botocore.config import Config

        access, secret = (
            (self.reader_access_key, self.reader_secret_key)
            if reader
            else (self.writer_access_key, self.writer_secret_key)
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name=self.region,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StoreError(f"{name} exited during start-up; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise StoreError(f"{name} did not listen on 127.0.0.1:{port} within 30 s; see {log}")


class ArtifactStores:
    """The two stores living in `directory` (data, logs, stores.json)."""

    def __init__(
        self, directory: Path, bin_dir: Path | None = None, registry_auth: bool = False
    ) -> None:
        self.directory = directory.resolve()
        self._bin_dir = bin_dir
        self.registry_auth = registry_auth

    @property
    def state_file(self) -> Path:
        return self.directory / "stores.json"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_stores_dir()
        return self._bin_dir

    def read(self) -> StoreEndpoints | None:
        if not self.state_file.exists():
            return None
        return StoreEndpoints(**json.loads(self.state_file.read_text()))

    def up(self) -> StoreEndpoints:
        """Start both stores, make the bucket and the users; idempotent while they run."""
        existing = self.read()
        if existing is not None:
            if all(_alive(existing.pids.get(n, -1)) for n in STORE_PROCESSES):
                return existing
            self.down()
        for folder in ("s3", "iam", "registry", "logs"):
            (self.directory / folder).mkdir(parents=True, exist_ok=True)
        endpoints = StoreEndpoints(
            s3_endpoint="",
            region=REGION,
            bucket=BUCKET,
            writer_access_key="writer" + secrets.token_hex(6),
            writer_secret_key=secrets.token_urlsafe(24),
            reader_access_key="reader" + secrets.token_hex(6),
            reader_secret_key=secrets.token_urlsafe(24),
            registry="",
        )
        try:
            s3_port = _free_port()
            endpoints.s3_endpoint = f"http://127.0.0.1:{s3_port}"
            # The gateway's root account is the trainer's writer; versitygw wants absolute
            # folders (relative --iam-dir paths fail).
            self._start(
                endpoints,
                "versitygw",
                [
                    "--port",
                    f"127.0.0.1:{s3_port}",
                    "--iam-dir",
                    str(self.directory / "iam"),
                    "posix",
                    str(self.directory / "s3"),
                ],
                {
                    "ROOT_ACCESS_KEY": endpoints.writer_access_key,
                    "ROOT_SECRET_KEY": endpoints.writer_secret_key,
                },
                s3_port,
            )
            registry_port = _free_port()
            endpoints.registry = f"127.0.0.1:{registry_port}"
            config = self.directory / "registry.yml"
            settings: dict[str, Any] = {
                "version": 0.1,
                "log": {"level": "warn", "accesslog": {"disabled": True}},
                "storage": {
                    "filesystem": {"rootdirectory": str(self.directory / "registry")},
                    "delete": {"enabled": True},
                },
                "http": {"addr": endpoints.registry},
            }
            if self.registry_auth:
                settings["auth"] = {
                    "htpasswd": {"realm": "fogline", "path": self._htpasswd(endpoints)}
                }
            config.write_text(yaml.safe_dump(settings))
            # The registry starts an OTLP exporter unless told not to; nothing listens for it.
            self._start(
                endpoints,
                "registry",
                ["serve", str(config)],
                {"OTEL_TRACES_EXPORTER": "none"},
                registry_port,
            )
            self._make_bucket_and_reader(endpoints)
        except BaseException:
            self._stop(endpoints)
            raise
        self.state_file.write_text(json.dumps(endpoints.to_json(), indent=2))
        return endpoints

    def _htpasswd(self, endpoints: StoreEndpoints) -> str:
        """A user and its bcrypt entry, the one hash the registry's htpasswd accepts. The
        registry checks the hash on every request: the lowest cost keeps that cheap, which a
        random password of 18 bytes on loopback can afford."""
        import bcrypt

        endpoints.registry_username = "puller" + secrets.token_hex(4)
        endpoints.registry_password = secrets.token_urlsafe(18)
        hashed = bcrypt.hashpw(
            endpoints.registry_password.encode(), bcrypt.gensalt(rounds=4)
        ).decode()
        path = self.directory / "htpasswd"
        path.write_text(f"{endpoints.registry_username}:{hashed}\n")
        return str(path)

    def down(self) -> None:
        endpoints = self.read()
        if endpoints is not None:
            self._stop(endpoints)
        for name in ("s3", "iam", "registry", "logs"):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.directory / name)
        for name in ("stores.json", "registry.yml", "htpasswd"):
            (self.directory / name).unlink(missing_ok=True)

    def stop_process(self, name: str) -> None:
        """Stop one store (a test takes the store away from the edge)."""
        endpoints = self.read()
        if endpoints is not None and name in endpoints.pids:
            _terminate(endpoints.pids[name])

    def _start(
        self,
        endpoints: StoreEndpoints,
        name: str,
        args: list[str],
        env: dict[str, str],
        port: int,
    ) -> None:
        log_path = self.directory / "logs" / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                start_new_session=True,
                cwd=self.directory,
            )
        endpoints.pids[name] = process.pid
        self.state_file.write_text(json.dumps(endpoints.to_json(), indent=2))
        _wait_listening(port, name, process, log_path)

    def _make_bucket_and_reader(self, endpoints: StoreEndpoints) -> None:
        """The bucket, and a user who may only read it: edge nodes get the reader's keys."""
        writer = endpoints.s3_client()
        writer.create_bucket(Bucket=endpoints.bucket)
        admin = subprocess.run(
            [
                str(self.bin_dir / "versitygw"),
                "admin",
                "--access",
                endpoints.writer_access_key,
                "--secret",
                endpoints.writer_secret_key,
                "--endpoint-url",
                endpoints.s3_endpoint,
                "create-user",
                "--access",
                endpoints.reader_access_key,
                "--secret",
                endpoints.reader_secret_key,
                "--role",
                "user",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if admin.returncode != 0:
            raise StoreError(f"versitygw admin create-user failed: {admin.stderr.strip()}")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": [endpoints.reader_access_key]},
                    "Action": ["s3:GetObject", "s3:ListBucket"],
                    "Resource": [
                        f"arn:aws:s3:::{endpoints.bucket}",
                        f"arn:aws:s3:::{endpoints.bucket}/*",
                    ],
                }
            ],
        }
        writer.put_bucket_policy(Bucket=endpoints.bucket, Policy=json.dumps(policy))

    def _stop(self, endpoints: StoreEndpoints) -> None:
        for name in reversed(STORE_PROCESSES):
            pid = endpoints.pids.get(name)
            if pid is not None:
                _terminate(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _terminate(pid: int) -> None:
    """Stop the process group `_start` made, by its leader's PID; SIGKILL after 10 s."""
    if not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    end = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
