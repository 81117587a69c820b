"""`fogline fetch`, the init step of an edge pod: copy an artifact from its URI into a node-local
cache keyed by digest, verify it, and place the verified files in the destination. A cache hit
needs no network, so a node that lost its link still restarts its server."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import NoReturn, Protocol
from urllib.parse import quote, unquote, urlsplit

from fogline.workloads.manifest import (
    MANIFEST_FILE,
    ONNX_TYPE_TO_DATATYPE,
    ArtifactError,
    ArtifactManifest,
    file_sha256,
    parse_digest,
    parse_manifest,
    safe_relative_path,
    verify_artifact,
)

log = logging.getLogger("fogline.fetch")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_PVC_ROOT = "/mnt/pvc"
_CHUNK = 1 << 20
_RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class FetchError(Exception):
    """The artifact could not be fetched or did not verify (exit 1)."""


class UsageError(Exception):
    """The arguments cannot work whatever the network does (exit 2)."""


class ArtifactSource(Protocol):
    """Where an artifact comes from; `None` names the single file of a one-file artifact."""

    single_file: str | None

    def describe(self) -> str: ...

    def copy_to(self, relative: str | None, target: Path) -> None: ...


@dataclass
class LocalSource:
    root: Path
    single_file: str | None = None

    def __post_init__(self) -> None:
        if self.root.is_file():
            self.single_file = self.root.name
        elif not self.root.is_dir():
            raise FetchError(f"{self.root}: no such file or folder")

    def describe(self) -> str:
        return str(self.root)

    def copy_to(self, relative: str | None, target: Path) -> None:
        source = self.root if relative is None else self.root / safe_relative_path(relative)
        try:
            shutil.copyfile(source, target)
        except FileNotFoundError:
            raise FetchError(f"{source}: listed by the artifact but missing") from None
        except OSError as err:
            raise FetchError(f"{source}: cannot copy: {err.strerror}") from err


@dataclass
class HttpSource:
    url: str
    timeout: float
    retries: int
    single_file: str | None = None
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        path = urlsplit(self.url).path
        if path.endswith(".onnx"):
            self.single_file = unquote(PurePosixPath(path).name)

    def describe(self) -> str:
        return self.url

    def _url_of(self, relative: str | None) -> str:
        if relative is None:
            return self.url
        parts = urlsplit(self.url)
        path = parts.path.rstrip("/") + "/" + quote(str(safe_relative_path(relative)))
        return parts._replace(path=path, query="", fragment="").geturl()

    def copy_to(self, relative: str | None, target: Path) -> None:
        url = self._url_of(relative)
        for attempt in range(self.retries + 1):
            try:
                with (
                    urllib.request.urlopen(url, timeout=self.timeout) as response,
                    target.open("wb") as out,
                ):
                    shutil.copyfileobj(response, out, _CHUNK)
                return
            except urllib.error.HTTPError as err:
                if err.code not in _RETRYABLE_HTTP or attempt == self.retries:
                    raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from None
                reason = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.retries:
                    detail = getattr(err, "reason", err)
                    raise FetchError(
                        f"{url}: unreachable after {self.retries + 1} attempts: {detail}"
                    ) from None
                reason = str(getattr(err, "reason", err))
            delay = min(0.5 * 2**attempt, 8.0)
            log.warning("%s: %s; retrying in %.1f s", url, reason, delay)
            self.sleep(delay)


def resolve_source(uri: str, timeout: float, retries: int) -> ArtifactSource:
    """The source a URI names: a local path, file://, pvc://<claim>/<path>, or http(s)://."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return HttpSource(uri, timeout, retries)
    if scheme == "file":
        return LocalSource(Path(unquote(parts.path)))
    if scheme == "pvc":
        if not parts.netloc:
            raise UsageError(f"--uri {uri}: pvc URIs are pvc://<claim>/<path>")
        root = Path(os.environ.get("FOGLINE_PVC_ROOT", DEFAULT_PVC_ROOT))
        relative = unquote(parts.path).lstrip("/")
        if ".." in PurePosixPath(relative).parts:
            raise UsageError(f"--uri {uri}: the path must stay inside the claim")
        return LocalSource(root / parts.netloc / relative)
    if scheme == "":
        return LocalSource(Path(uri))
    raise UsageError(
        f"--uri {uri}: scheme {scheme!r} is not supported; use a path, file://, pvc:// or http(s)://"
    )


def _signature_of(model_path: Path) -> dict[str, object]:
    """The serving signature of a lone ONNX file, read with onnxruntime."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise FetchError(f"{model_path.name}: not a loadable ONNX model: {err}") from err

    def tensors(args: list[object]) -> list[dict[str, object]]:
        specs = []
        for arg in args:
            name, onnx_type, shape = arg.name, arg.type, arg.shape  # type: ignore[attr-defined]
            if onnx_type not in ONNX_TYPE_TO_DATATYPE:
                raise FetchError(f"{model_path.name}: tensor {name!r} has unsupported {onnx_type}")
            dims = [dim if isinstance(dim, int) else -1 for dim in shape]
            specs.append(
                {"name": name, "datatype": ONNX_TYPE_TO_DATATYPE[onnx_type], "shape": dims}
            )
        return specs

    return {
        "file": model_path.name,
        "inputs": tensors(session.get_inputs()),
        "outputs": tensors(session.get_outputs()),
    }


def _write_single_file_manifest(folder: Path, filename: str) -> None:
    path = folder / filename
    document = {
        "formatVersion": 1,
        "name": path.stem,
        "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": {filename: {"sha256": file_sha256(path), "sizeBytes": path.stat().st_size}},
        "serving": _signature_of(path),
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(document, indent=2) + "\n")


def _download(source: ArtifactSource, digest: str, staging: Path) -> None:
    """Fill staging with the artifact; raise FetchError when it is not the wanted digest."""
    hex_digest = parse_digest(digest)
    if source.single_file is not None:
        name = source.single_file
        source.copy_to(None, staging / name)
        actual = file_sha256(staging / name)
        if actual != hex_digest:
            raise FetchError(f"{source.describe()}: sha256:{actual} is not the expected {digest}")
        _write_single_file_manifest(staging, name)
        return
    source.copy_to(MANIFEST_FILE, staging / MANIFEST_FILE)
    try:
        manifest = parse_manifest(json.loads((staging / MANIFEST_FILE).read_text("utf-8")))
    except (ValueError, ArtifactError) as err:
        raise FetchError(f"{source.describe()}: manifest.json: {err}") from err
    if manifest.digest != digest:
        raise FetchError(
            f"{source.describe()}: the artifact's digest is {manifest.digest}, not the expected "
            f"{digest}"
        )
    for name in manifest.files:
        target = staging / safe_relative_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        source.copy_to(name, target)


def fill_cache(source_of: Callable[[], ArtifactSource], digest: str, cache_dir: Path) -> Path:
    """The verified cache entry for digest, fetched only when missing or corrupt.

    `source_of` is called only on a miss, so a cache hit touches no network at all.
    """
    entry = cache_dir / f"sha256-{parse_digest(digest)}"
    if entry.is_dir():
        try:
            verify_artifact(entry, digest)
            log.info("cache hit: %s", entry)
            return entry
        except ArtifactError as err:
            log.warning("cached copy is damaged (%s); fetching it again", err)
            shutil.rmtree(entry)
    cache_dir.mkdir(parents=True, exist_ok=True)
    source = source_of()
    staging = Path(tempfile.mkdtemp(prefix=f".partial-{entry.name}-", dir=cache_dir))
    try:
        _download(source, digest, staging)
        try:
            verify_artifact(staging, digest)
        except ArtifactError as err:
            raise FetchError(f"{source.describe()}: {err}") from err
        try:
            staging.rename(entry)  # atomic: the entry is complete or absent
        except OSError:
            if not entry.is_dir():
                raise
            log.info("another fetch filled %s first; using it", entry)
        log.info("fetched %s from %s", digest, source.describe())
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    verify_artifact(entry, digest)
    return entry


def install(entry: Path, dest: Path, digest: str) -> ArtifactManifest:
    """Copy the verified cache entry into dest, manifest.json last, and verify the copy."""
    manifest = verify_artifact(entry, digest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in [*manifest.files, MANIFEST_FILE]:
        target = dest / safe_relative_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(entry / name, partial)
        os.replace(partial, target)
    return verify_artifact(dest, digest)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fogline fetch",
        description="Fetch an artifact into a digest-keyed cache, verify it, copy it to --dest.",
    )
    parser.add_argument("--uri", required=True, help="path, file://, pvc://claim/path, http(s)://")
    parser.add_argument("--digest", required=True, help="sha256:HEX of the serving ONNX file")
    parser.add_argument("--cache-dir", required=True, type=Path, help="node-local cache folder")
    parser.add_argument("--dest", required=True, type=Path, help="folder the server loads")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per http request")
    parser.add_argument("--retries", type=int, default=4, help="retries of a failed download")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        parse_digest(args.digest)
        if args.retries < 0 or args.timeout <= 0:
            raise UsageError("--retries must be >= 0 and --timeout > 0")
        entry = fill_cache(
            lambda: resolve_source(args.uri, args.timeout, max(0, args.retries)),
            args.digest,
            args.cache_dir,
        )
        manifest = install(entry, args.dest, args.digest)
    except (ValueError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (FetchError, ArtifactError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as err:
        print(f"error: {err.filename or ''}: {err.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{manifest.digest} {manifest.serving.file} ready in {args.dest}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
