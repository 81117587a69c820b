"""`fogline fetch`, the init step of an edge pod: copy an artifact from its URI into a node-local
cache keyed by its whole-artifact digest, verify every file, and place the verified files in the
destination. A cache hit needs no network, so a node that lost its link still restarts its
server. Failures end in one `error:` line and a termination message naming the reason
(ArtifactUnreachable, AccessDenied, DigestMismatch, InvalidArtifact, SignatureMissing,
SignatureInvalid, SignerKeyMissing, ModelKeyMissing, ModelKeyInvalid, ModelNotEncrypted) for
the operator to show. Signature and key checks are a step of their own on the verified cache entry, before
anything is installed for the server."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol
from urllib.parse import quote, unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

import urllib3
from urllib3.exceptions import HTTPError as TransportError
from urllib3.exceptions import MaxRetryError
from urllib3.util import Retry, Timeout

from fogline.api.digests import is_digest, oci_tag
from fogline.cli import UsageParser
from fogline.workloads import encryption, signatures
from fogline.workloads.manifest import (
    MANIFEST_FILE,
    MANIFEST_MAX_BYTES,
    ArtifactError,
    ArtifactManifest,
    FileEntry,
    manifest_digest,
    parse_digest,
    parse_manifest,
    read_manifest,
    safe_relative_path,
    verify_artifact,
)

log = logging.getLogger("fogline.fetch")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_PVC_ROOT = "/mnt/pvc"
_CHUNK = 1 << 20
_RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
ENTRY_PREFIX = "sha256-"
PARTIAL_PREFIX = ".partial-"
LOCKS = ".locks"  # one flock file a digest while a fetch or an eviction holds it
PINS = ".pins"  # a file an EdgeDeployment: the digests its pods on this node may need

# The reasons a failed fetch reports; the operator shows them on the site row and condition.
UNREACHABLE, ACCESS_DENIED, DIGEST_MISMATCH, INVALID = (
    "ArtifactUnreachable",
    "AccessDenied",
    "DigestMismatch",
    "InvalidArtifact",
)


class FetchError(Exception):
    """The artifact could not be fetched or did not verify (exit 1)."""

    def __init__(self, message: str, reason: str = UNREACHABLE, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status  # the HTTP status that ended it, when one did


class UsageError(Exception):
    """The arguments cannot work whatever the network does (exit 2)."""


@dataclass(frozen=True)
class TransferPolicy:
    """How hard one fetch tries: per-request timeouts, retries with jittered exponential
    back-off (Retry-After honoured), and an overall deadline so a 1 byte/s drip ends."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 5
    deadline_seconds: float = 900.0
    backoff_factor: float = 0.5
    backoff_max: float = 30.0
    ca_bundle: str | None = None

    def retry(self) -> Retry:
        return Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            other=self.retries,
            redirect=5,
            allowed_methods=frozenset({"GET"}),
            status_forcelist=_RETRYABLE_HTTP,
            backoff_factor=self.backoff_factor,
            backoff_max=self.backoff_max,
            backoff_jitter=self.backoff_factor,
            respect_retry_after_header=True,
            raise_on_status=False,
        )


class HttpTransport:
    """GETs with resume, over urllib3 pools that honour HTTPS_PROXY/HTTP_PROXY/NO_PROXY and a CA
    bundle. urllib3's Retry covers failures before the body; a body cut or stalled midway is
    resumed here with a Range request (If-Range on the validator the first answer gave), using
    the same Retry object for the back-off. No library resumes a download into a file, so this
    loop is our own."""

    def __init__(
        self,
        policy: TransferPolicy,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.sleep = sleep
        self.deadline = clock() + policy.deadline_seconds
        self.bytes_received = 0
        self.requests_sent = 0
        self._proxies = getproxies()
        tls: dict[str, Any] = {"ca_certs": policy.ca_bundle} if policy.ca_bundle else {}
        self._direct = urllib3.PoolManager(num_pools=4, **tls)
        self._via_proxy: dict[str, urllib3.ProxyManager] = {}
        self._tls = tls
        self._etags: dict[str, str] = {}
        # Registry credentials (user, password), sent only to a host that asks for them with a
        # 401; urllib3 drops the Authorization header on a redirect to another host.
        self.credentials: tuple[str, str] | None = None
        self._authorization: dict[str, str] = {}

    def _pool_for(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme)
        if not proxy or proxy_bypass(parts.hostname or ""):
            return self._direct
        if proxy not in self._via_proxy:
            self._via_proxy[proxy] = urllib3.ProxyManager(proxy, num_pools=4, **self._tls)
        return self._via_proxy[proxy]

    def _timeout(self) -> Timeout:
        left = self.deadline - self.clock()
        if left <= 0:
            raise FetchError(
                f"the overall deadline of {self.policy.deadline_seconds:g} s passed",
                UNREACHABLE,
            )
        return Timeout(
            connect=min(self.policy.connect_timeout, left),
            read=min(self.policy.read_timeout, left),
        )

    def read_small(self, url: str, limit: int, accept: str | None = None) -> bytes:
        """A whole small document (a manifest), refused when longer than limit."""
        retry = self.policy.retry()
        while True:
            sink = _BytesSink()
            try:
                self._get(url, sink, offset=0, size=None, limit=limit, accept=accept)
                return sink.getvalue()
            except (TransportError, ConnectionError) as err:
                retry = self._next_attempt(retry, url, err)

    def download(self, url: str, target: Path, size: int) -> str:
        """Fill target with exactly size bytes, resuming what a previous attempt left; returns
        the sha256 (hex) of the file, hashed as it landed."""
        retry = self.policy.retry()
        hasher = _Hasher()
        try:
            if target.exists() and target.stat().st_size <= size:
                with target.open("rb") as kept:  # the prefix a killed fetch left
                    while chunk := kept.read(_CHUNK):
                        hasher.update(chunk)
            while True:
                have = target.stat().st_size if target.exists() else 0
                if have > size:
                    target.unlink()
                    hasher.reset()
                    have = 0
                if have == size:
                    return hasher.hexdigest()
                try:
                    with target.open("ab") as out:
                        self._get(url, out, offset=have, size=size, hasher=hasher)
                except (TransportError, ConnectionError) as err:
                    retry = self._next_attempt(retry, url, err)
        finally:
            hasher.close()

    def _send(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        """One GET (urllib3 retries what fails before the body), with the host's credentials."""
        if authorization := self._authorization.get(urlsplit(url).netloc):
            headers = {**headers, "Authorization": authorization}
        self.requests_sent += 1
        try:
            return self._pool_for(url).request(
                "GET",
                url,
                headers=headers,
                preload_content=False,
                retries=self.policy.retry(),
                timeout=self._timeout(),
            )
        except MaxRetryError as err:
            raise FetchError(
                f"{_redacted(url)}: unreachable after {self.policy.retries + 1} attempts: "
                f"{_one_line(err.reason or err)}",
                UNREACHABLE,
            ) from None

    def _next_attempt(self, retry: Retry, url: str, err: Exception) -> Retry:
        try:
            retry = retry.increment(method="GET", url=url, error=_as_read_error(err))
        except MaxRetryError:
            raise FetchError(
                f"{_redacted(url)}: failed after {self.policy.retries + 1} attempts: "
                f"{_one_line(err)}",
                UNREACHABLE,
            ) from None
        delay = min(retry.get_backoff_time(), max(0.0, self.deadline - self.clock()))
        log.warning("%s: %s; resuming in %.1f s", _redacted(url), _one_line(err), delay)
        self.sleep(delay)
        return retry

    def _get(
        self,
        url: str,
        out: _Sink,
        *,
        offset: int,
        size: int | None,
        limit: int | None = None,
        hasher: _Hasher | None = None,
        accept: str | None = None,
    ) -> None:
        """One GET from offset into out. A resumed GET carries If-Range with the ETag the first
        answer gave, so an object changed in between comes whole (200) instead of spliced."""
        key = _redacted(url)
        headers = {"Accept-Encoding": "identity"}
        if accept:
            headers["Accept"] = accept
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if key in self._etags:
                headers["If-Range"] = self._etags[key]
        response = self._send(url, headers)
        host = urlsplit(url).netloc
        if response.status == 401 and self.credentials and host not in self._authorization:
            # A registry names its scheme in the challenge: answer it once, then send the
            # header with every request to that host.
            self._authorization[host] = _answer_challenge(
                url, response.headers.get("WWW-Authenticate", ""), self.credentials
            )
            response.release_conn()
            response = self._send(url, headers)
        try:
            _check_status(url, response.status)
            if etag := response.headers.get("ETag"):
                self._etags[key] = etag
            if offset and response.status == 200:
                # The server ignored the range or the object changed: start this file again.
                log.warning("%s: the server sent the whole body again; restarting", _redacted(url))
                out.seek(0)
                out.truncate()
                if hasher is not None:
                    hasher.reset()
                offset = 0
            if response.status == 206:
                _check_content_range(url, response.headers.get("Content-Range"), offset, size)
            announced = response.headers.get("Content-Length")
            if announced is not None and size is not None and offset + int(announced) != size:
                raise FetchError(
                    f"{_redacted(url)}: the server announces {offset + int(announced)} bytes but "
                    f"the manifest lists {size}",
                    DIGEST_MISMATCH,
                )
            bound = size if size is not None else limit
            written = offset
            # read1 hands over what has arrived: a timeout then loses nothing already received,
            # so the resume starts exactly where the bytes stopped. Identity bodies (what we ask
            # for) skip urllib3's decoded-content buffer, one copy less a chunk.
            decode = response.headers.get("Content-Encoding", "identity") != "identity"
            while chunk := response.read1(_CHUNK, decode_content=decode):
                written += len(chunk)
                if bound is not None and written > bound:
                    raise FetchError(
                        f"{_redacted(url)}: the body is longer than the {bound} bytes declared; "
                        "refused",
                        DIGEST_MISMATCH if size is not None else INVALID,
                    )
                out.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                self.bytes_received += len(chunk)
                if self.clock() > self.deadline:
                    raise FetchError(
                        f"{_redacted(url)}: the overall deadline of "
                        f"{self.policy.deadline_seconds:g} s passed at {written} bytes",
                        UNREACHABLE,
                    )
            if size is not None and written < size:
                raise urllib3.exceptions.ProtocolError(
                    f"the body ended at {written} of {size} bytes"
                )
        finally:
            response.release_conn()


_RESET = b""  # never a chunk: read1 ends the loop on empty bytes


class _Hasher:
    """sha256 of a file as it is written, in a thread of its own: hashlib releases the GIL on
    large buffers, so hashing overlaps the network instead of adding a pass after it."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=32)
        self._sha = hashlib.sha256()
        self._thread = threading.Thread(target=self._run, name="fetch-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if chunk is _RESET:
                self._sha = hashlib.sha256()
            else:
                self._sha.update(chunk)

    def update(self, chunk: bytes) -> None:
        if chunk:
            self._queue.put(chunk)

    def reset(self) -> None:
        self._queue.put(_RESET)

    def hexdigest(self) -> str:
        self.close()
        return self._sha.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _Sink(Protocol):
    """The part of a binary file that _get writes through."""

    def write(self, data: bytes, /) -> int: ...

    def seek(self, offset: int, /) -> int: ...

    def truncate(self) -> int: ...


class _BytesSink:
    """A bytes buffer with the small file API _get writes through."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(data)
        return len(data)

    def seek(self, offset: int, /) -> int:
        self._parts.clear()
        return 0

    def truncate(self) -> int:
        self._parts.clear()
        return 0

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def _check_status(url: str, status: int) -> None:
    if status in (200, 206):
        return
    if status in (401, 403):
        raise FetchError(
            f"{_redacted(url)}: HTTP {status}: the store refused the credentials; check the "
            "read-only Secret named by spec.model.access.credentialsSecret",
            ACCESS_DENIED,
        )
    raise FetchError(f"{_redacted(url)}: HTTP {status}", UNREACHABLE, status)


def _answer_challenge(url: str, challenge: str, credentials: tuple[str, str]) -> str:
    """The Authorization header answering a registry's 401. Basic (htpasswd, as the distribution
    registry and most self-hosted ones do) is answered with the credentials; a Bearer challenge
    (token auth: Docker Hub, GHCR, Harbor) is refused with a clear reason, as the fetch step
    does not run the token exchange."""
    scheme = challenge.split(" ", 1)[0].lower()
    if scheme == "basic":
        return urllib3.util.make_headers(basic_auth=":".join(credentials))["authorization"]
    raise FetchError(
        f"{_redacted(url)}: the registry asks for {scheme or 'an unnamed'} authentication; the "
        "fetch step answers Basic only: use spec.model.delivery ImageVolume (the kubelet pulls "
        "with imagePullSecrets) or a registry that accepts Basic credentials",
        ACCESS_DENIED,
    )


def _check_content_range(url: str, header: str | None, offset: int, size: int | None) -> None:
    """`bytes START-END/TOTAL` must start where the file stopped and total its declared size."""
    try:
        span, total = (header or "").removeprefix("bytes ").split("/")
        start = int(span.split("-")[0])
    except ValueError:
        raise urllib3.exceptions.ProtocolError(f"bad Content-Range {header!r}") from None
    if start != offset or (size is not None and total != "*" and int(total) != size):
        raise FetchError(
            f"{_redacted(url)}: Content-Range {header} does not continue at byte {offset} of "
            f"{size}",
            DIGEST_MISMATCH,
        )


def _as_read_error(err: Exception) -> Exception:
    # Retry counts ProtocolError and ReadTimeoutError as read errors; an OSError from the
    # socket mid-body is the same thing seen one layer lower.
    if isinstance(err, TransportError):
        return err
    return urllib3.exceptions.ProtocolError(str(err))


def _one_line(err: object) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _redacted(url: str) -> str:
    """A URL without its query: presigned signatures must not reach logs or status."""
    return urlsplit(url)._replace(query="", fragment="").geturl()


class ArtifactSource(Protocol):
    """Where an artifact comes from: its manifest, then each listed file."""

    def describe(self) -> str: ...

    def read_manifest(self, digest: str) -> bytes: ...

    def copy_to(self, name: str, entry: FileEntry, target: Path) -> str:
        """Write the file to target; return the sha256 (hex) of what was written."""
        ...


@dataclass
class LocalSource:
    root: Path

    def __post_init__(self) -> None:
        if not self.root.is_dir():
            raise FetchError(f"{self.root}: no such artifact folder", UNREACHABLE)

    def describe(self) -> str:
        return str(self.root)

    def read_manifest(self, digest: str) -> bytes:
        path = self.root / MANIFEST_FILE
        try:
            if path.is_symlink() or path.stat().st_size > MANIFEST_MAX_BYTES:
                raise FetchError(f"{path}: a symlink or larger than a manifest can be", INVALID)
            return path.read_bytes()
        except FileNotFoundError:
            raise FetchError(f"{path}: no manifest.json in the artifact folder", INVALID) from None

    def copy_to(self, name: str, entry: FileEntry, target: Path) -> str:
        source = self.root / safe_relative_path(name)
        if source.is_symlink():
            raise FetchError(f"{source}: a symlink; refused", INVALID)
        try:
            with source.open("rb") as src, target.open("wb") as out:
                return _copy_bounded(src, out, entry.size_bytes, str(source))
        except FileNotFoundError:
            raise FetchError(f"{source}: listed by the artifact but missing", INVALID) from None


def _copy_bounded(src: IO[bytes], out: IO[bytes], size: int, where: str) -> str:
    written, sha = 0, hashlib.sha256()
    while chunk := src.read(_CHUNK):
        written += len(chunk)
        if written > size:
            raise FetchError(f"{where}: longer than the {size} bytes declared", DIGEST_MISMATCH)
        out.write(chunk)
        sha.update(chunk)
    return sha.hexdigest()


@dataclass
class HttpSource:
    """An artifact folder under an http(s) URL: URL/manifest.json and URL/<file>."""

    url: str
    transport: HttpTransport

    def describe(self) -> str:
        return _redacted(self.url)

    def _url_of(self, relative: str) -> str:
        parts = urlsplit(self.url)
        path = parts.path.rstrip("/") + "/" + quote(str(safe_relative_path(relative)))
        return parts._replace(path=path, fragment="").geturl()

    def read_manifest(self, digest: str) -> bytes:
        return self.transport.read_small(self._url_of(MANIFEST_FILE), MANIFEST_MAX_BYTES)

    def copy_to(self, name: str, entry: FileEntry, target: Path) -> str:
        return self.transport.download(self._url_of(name), target, entry.size_bytes)


@dataclass
class S3Source:
    """s3://bucket/prefix read with read-only credentials from the environment (a Secret): each
    object URL is presigned here, locally and offline, and then fetched like any HTTPS URL, so
    resume, proxies and the CA bundle work the same for every store."""

    bucket: str
    prefix: str
    transport: HttpTransport
    presign: Callable[[str, str], str] = field(repr=False)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, name: str) -> str:
        return f"{self.prefix.rstrip('/')}/{safe_relative_path(name)}".lstrip("/")

    def read_manifest(self, digest: str) -> bytes:
        url = self.presign(self.bucket, self._key(MANIFEST_FILE))
        return self.transport.read_small(url, MANIFEST_MAX_BYTES)

    def copy_to(self, name: str, entry: FileEntry, target: Path) -> str:
        url = self.presign(self.bucket, self._key(name))
        return self.transport.download(url, target, entry.size_bytes)


# The OCI image spec's names: the manifest type a registry is asked for, and the layer
# annotation that oras sets to each pushed file's name.
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_TITLE_ANNOTATION = "org.opencontainers.image.title"


@dataclass
class OciSource:
    """oci://registry/repository pulled by digest: the manifest.json blob's sha256 is the
    artifact digest and each file's blob is its listed sha256, so no tag is trusted."""

    base: str  # https://registry/v2/repository
    transport: HttpTransport

    def describe(self) -> str:
        return self.base

    def read_manifest(self, digest: str) -> bytes:
        return self.transport.read_small(f"{self.base}/blobs/{digest}", MANIFEST_MAX_BYTES)

    def copy_to(self, name: str, entry: FileEntry, target: Path) -> str:
        url = f"{self.base}/blobs/sha256:{entry.sha256}"
        return self.transport.download(url, target, entry.size_bytes)


def s3_presigner(environ: dict[str, str]) -> Callable[[str, str], str]:
    """A function presigning GETs (SigV4 query auth), offline, with the read-only credentials,
    endpoint (AWS_ENDPOINT_URL) and region of the environment; path-style addressing unless
    FOGLINE_S3_ADDRESSING says virtual. botocore's signer alone, not a boto3 client: building
    a client loads the service models, which costs a fetch more time than a small artifact."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    access_key, secret_key = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret_key:
        raise FetchError(
            "s3: no credentials in the environment; name a read-only Secret holding "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in spec.model.access.credentialsSecret",
            ACCESS_DENIED,
        )
    credentials = Credentials(access_key, secret_key, environ.get("AWS_SESSION_TOKEN") or None)
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = (
        environ.get("AWS_ENDPOINT_URL_S3")
        or environ.get("AWS_ENDPOINT_URL")
        or f"https://s3.{region}.amazonaws.com"
    ).rstrip("/")
    virtual = environ.get("FOGLINE_S3_ADDRESSING", "path") == "virtual"

    def presign(bucket: str, key: str) -> str:
        if virtual:
            parts = urlsplit(endpoint)
            url = parts._replace(netloc=f"{bucket}.{parts.netloc}").geturl() + "/" + quote(key)
        else:
            url = f"{endpoint}/{quote(bucket)}/{quote(key)}"
        request = AWSRequest(method="GET", url=url)
        S3SigV4QueryAuth(credentials, "s3", region, expires=3600).add_auth(request)
        signed: str = request.url
        return signed

    return presign


def resolve_source(
    uri: str, transport: HttpTransport, environ: dict[str, str] | None = None
) -> ArtifactSource:
    """The source a URI names: a folder path, file://, pvc://<claim>/<path>, http(s)://,
    s3://bucket/prefix or oci://registry/repository."""
    environ = dict(os.environ) if environ is None else environ
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return HttpSource(uri, transport)
    if scheme == "s3":
        if not parts.netloc:
            raise UsageError(f"--uri {uri}: s3 URIs are s3://<bucket>/<prefix>")
        return S3Source(
            parts.netloc, unquote(parts.path).strip("/"), transport, s3_presigner(environ)
        )
    if scheme == "oci":
        repository = parts.path.strip("/")
        if not parts.netloc or not repository or "@" in repository or ":" in repository:
            raise UsageError(
                f"--uri {uri}: OCI URIs are oci://<registry>/<repository> (the digest comes "
                "from --digest, never a tag)"
            )
        insecure = environ.get("FOGLINE_OCI_PLAIN_HTTP", "") == "1"
        base = f"{'http' if insecure else 'https'}://{parts.netloc}/v2/{repository}"
        if user := environ.get("FOGLINE_OCI_USERNAME"):
            transport.credentials = (user, environ.get("FOGLINE_OCI_PASSWORD", ""))
        return OciSource(base, transport)
    if scheme == "file":
        return LocalSource(Path(unquote(parts.path)))
    if scheme == "pvc":
        if not parts.netloc:
            raise UsageError(f"--uri {uri}: pvc URIs are pvc://<claim>/<path>")
        root = Path(environ.get("FOGLINE_PVC_ROOT", DEFAULT_PVC_ROOT))
        relative = unquote(parts.path).lstrip("/")
        if ".." in PurePosixPath(relative).parts:
            raise UsageError(f"--uri {uri}: the path must stay inside the claim")
        return LocalSource(root / parts.netloc / relative)
    if scheme == "":
        return LocalSource(Path(uri))
    raise UsageError(
        f"--uri {uri}: scheme {scheme!r} is not supported; use a path, file://, pvc://, "
        "http(s)://, s3:// or oci://"
    )


# -- the node cache ------------------------------------------------------------------------


def _lock_path(cache_dir: Path, hex_digest: str) -> Path:
    folder = cache_dir / LOCKS
    folder.mkdir(exist_ok=True)
    return folder / hex_digest


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive flock on path; yields False when not blocking and somebody holds it. The
    kernel drops the lock when its holder dies, so a kill -9 never leaves a stale lock.

    The holder removes the lock file when it lets go, so locks do not pile up one per digest
    ever fetched. A waiter may then hold a lock on a file that is gone: it checks that the path
    still names the inode it locked, and locks the new file otherwise. Only the holder of the
    file the path names ever removes it, so two holders never see two inodes. (filelock and
    fasteners keep their lock files for this very race; this loop is what removing them takes.)
    """
    flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
    while True:
        handle = path.open("a")
        try:
            fcntl.flock(handle, flags)
        except BlockingIOError:
            handle.close()
            yield False
            return
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = -1
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the previous holder removed it: lock the file the path names now
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)  # while still held: a waiter sees it gone and starts over
        handle.close()


def _download(source: ArtifactSource, digest: str, staging: Path) -> ArtifactManifest:
    """Fill staging with the artifact, resuming files a killed fetch left there."""
    raw = source.read_manifest(digest)
    try:
        document = json.loads(raw.decode("utf-8"))
        manifest = parse_manifest(document)
    except (ValueError, ArtifactError) as err:
        raise FetchError(f"{source.describe()}: manifest.json: {err}", INVALID) from err
    if manifest_digest(document) != digest:
        raise FetchError(
            f"{source.describe()}: the artifact's digest is {manifest.digest}, not the expected "
            f"{digest}; it was changed after it was published",
            DIGEST_MISMATCH,
        )
    for name, entry in manifest.files.items():
        target = staging / safe_relative_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        if source.copy_to(name, entry, target) != entry.sha256:
            target.unlink()  # a resumed file that does not verify must not be resumed again
            raise FetchError(
                f"{source.describe()}: {name}: sha256 differs from the manifest's {entry.sha256}; "
                "the artifact was modified or corrupted",
                DIGEST_MISMATCH,
            )
    (staging / MANIFEST_FILE).write_bytes(raw)
    return manifest


def fill_cache(source_of: Callable[[], ArtifactSource], digest: str, cache_dir: Path) -> Path:
    """The verified cache entry for digest, fetched only when missing or damaged.

    `source_of` is called only on a miss, so a cache hit touches no network at all. Fetches of
    one digest on one node take turns on a lock: the second finds the entry the first made.
    """
    hex_digest = parse_digest(digest)
    entry = cache_dir / f"{ENTRY_PREFIX}{hex_digest}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(_lock_path(cache_dir, hex_digest)):
        if entry.is_dir():
            try:
                verify_artifact(entry, digest)
                log.info("cache hit: %s", entry)
                os.utime(entry)  # recency drives eviction
                return entry
            except ArtifactError as err:
                log.warning("cached copy is damaged (%s); fetching it again", err)
                shutil.rmtree(entry)
        source = source_of()
        staging = cache_dir / f"{PARTIAL_PREFIX}{hex_digest}"
        staging.mkdir(exist_ok=True)
        try:
            _download(source, digest, staging)
        except FetchError as err:
            if err.reason != UNREACHABLE:  # only a cut transfer is worth resuming
                shutil.rmtree(staging)
            raise
        # _download checked the manifest's digest and every file's sha256 as it wrote them;
        # hashing the staging folder again would only double the time of a large artifact.
        staging.rename(entry)  # atomic: the entry is complete or absent
        log.info("fetched %s from %s", digest, source.describe())
    return entry


@dataclass(frozen=True)
class CacheLimits:
    """What the node cache keeps besides the digest in use: `keep` rollback targets and at most
    `max_bytes` in all (0: no bound). A fetch that names its rollback targets (the operator
    passes those of status.history) keeps exactly those; one that names none keeps the `keep`
    most recently used others."""

    keep: int = 3
    max_bytes: int = 0


def _size_of(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if not p.is_symlink() and p.is_file())


def pin_digests(cache_dir: Path, owner: str, digests: Sequence[str]) -> None:
    """Record what one owner's pods on this node may need: the digest in use first, then its
    rollback targets. The node cache is shared by every EdgeDeployment whose pods run there, so
    one owner's eviction must keep what the others pinned (another's current digest is what
    its pod needs to restart without network)."""
    folder = cache_dir / PINS
    folder.mkdir(exist_ok=True)
    name = hashlib.sha256(owner.encode()).hexdigest()[:32]
    staged = folder / f".{name}.{os.getpid()}"
    staged.write_text(json.dumps({"owner": owner, "digests": [parse_digest(d) for d in digests]}))
    os.replace(staged, folder / name)  # atomic: a concurrent eviction reads old or new


def _read_pins(cache_dir: Path) -> list[list[str]]:
    """Every owner's pinned hex digests, in use first; an unreadable pin file counts as none
    (it holds nothing a fetch could not fetch again) and is reported."""
    pins: list[list[str]] = []
    for path in sorted((cache_dir / PINS).glob("[!.]*")):
        try:
            listed = json.loads(path.read_text())["digests"]
            pins.append([d for d in listed if isinstance(d, str)])
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("cache: ignoring the unreadable pin file %s: %s", path, _one_line(err))
    return pins


def prune_cache(
    cache_dir: Path,
    current: str,
    limits: CacheLimits,
    rollback: Sequence[str] | None = None,
) -> list[str]:
    """Evict entries beyond the limits and sweep partial downloads nobody is working on;
    returns the names removed. An entry or partial whose lock is held is left alone.

    Kept, in this order, while the size bound allows: what any owner pinned as in use (kept
    whatever the bound: a pod on this node needs it to restart offline), this fetch's rollback
    targets, the other owners' rollback targets, and, only when this fetch names no rollback
    targets, the `keep` most recently used others."""
    current_hex = parse_digest(current)
    removed: list[str] = []
    for partial in sorted(cache_dir.glob(f"{PARTIAL_PREFIX}*")):
        hex_digest = partial.name.removeprefix(PARTIAL_PREFIX)
        with _locked(_lock_path(cache_dir, hex_digest), blocking=False) as mine:
            if mine:
                shutil.rmtree(partial, ignore_errors=True)
                removed.append(partial.name)
    pins = _read_pins(cache_dir)
    in_use = {current_hex, *(pin[0] for pin in pins if pin)}
    wanted: list[str] = [parse_digest(d) for d in (rollback or ())][: limits.keep]
    wanted += [d for pin in pins for d in pin[1:]]
    entries = {
        p.name.removeprefix(ENTRY_PREFIX): p
        for p in cache_dir.glob(f"{ENTRY_PREFIX}*")
        if p.is_dir() and not p.is_symlink()
    }
    if rollback is None:
        recent = sorted(
            (h for h in entries if h not in in_use and h not in wanted),
            key=lambda h: entries[h].stat().st_mtime,
            reverse=True,
        )
        wanted += recent[: limits.keep]
    total = sum(_size_of(entries[h]) for h in in_use if h in entries)
    kept = set(in_use)
    for hex_digest in dict.fromkeys(wanted):  # first mention wins: it ranks highest
        if hex_digest in kept or hex_digest not in entries:
            continue
        size = _size_of(entries[hex_digest])
        if limits.max_bytes and total + size > limits.max_bytes:
            continue
        total += size
        kept.add(hex_digest)
    for hex_digest, entry in sorted(entries.items()):
        if hex_digest in kept:
            continue
        with _locked(_lock_path(cache_dir, hex_digest), blocking=False) as mine:
            if mine and entry.is_dir():
                shutil.rmtree(entry)
                removed.append(entry.name)
    return removed


def install(entry: Path, dest: Path, digest: str) -> ArtifactManifest:
    """Copy the verified cache entry into dest, manifest.json last, and verify the copy (the
    one check that covers both the entry and the copy)."""
    manifest = read_manifest(entry)
    dest.mkdir(parents=True, exist_ok=True)
    for name in [*manifest.files, MANIFEST_FILE]:
        target = dest / safe_relative_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(entry / name, partial)
        os.replace(partial, target)
    return verify_artifact(dest, digest)


# -- provenance and sealing: checked on the verified cache entry, before install ------------


def read_signature(source: ArtifactSource, digest: str) -> bytes | None:
    """The artifact's model.sig from where it was published, or None when it has none. The
    signature is not part of the digest (see signatures.py), so it is read beside it."""
    name = signatures.SIGNATURE_FILE
    limit = signatures.SIGNATURE_MAX_BYTES
    if isinstance(source, LocalSource):
        path = source.root / name
        if not path.is_file() or path.is_symlink() or path.stat().st_size > limit:
            return None
        return path.read_bytes()
    try:
        if isinstance(source, OciSource):
            return _oci_signature(source, digest, limit)
        if isinstance(source, HttpSource):
            return source.transport.read_small(source._url_of(name), limit)
        if isinstance(source, S3Source):
            url = source.presign(source.bucket, source._key(name))
            return source.transport.read_small(url, limit)
    except FetchError as err:
        if err.status == 404:
            return None
        raise
    raise FetchError(f"{source.describe()}: no signature can be read from this source", UNREACHABLE)


def _oci_signature(source: OciSource, digest: str, limit: int) -> bytes | None:
    """The model.sig layer of the image manifest the trainer pushed under the digest's tag.
    The tag is trusted only to find the layer: the signature itself names the digest it
    signs, and verification refuses any other."""
    raw = source.transport.read_small(
        f"{source.base}/manifests/{oci_tag(digest)}", MANIFEST_MAX_BYTES, OCI_MANIFEST_MEDIA_TYPE
    )
    try:
        layers = json.loads(raw).get("layers") or []
        layer = next(
            (
                item
                for item in layers
                if (item.get("annotations") or {}).get(OCI_TITLE_ANNOTATION)
                == signatures.SIGNATURE_FILE
            ),
            None,
        )
    except (ValueError, AttributeError, TypeError) as err:
        raise FetchError(
            f"{source.describe()}: the image manifest of {digest} is not OCI JSON: {err}",
            UNREACHABLE,
        ) from err
    if layer is None:
        return None
    blob = str(layer.get("digest") or "")
    if not is_digest(blob) or not isinstance(layer.get("size"), int) or layer["size"] > limit:
        raise FetchError(
            f"{source.describe()}: the model.sig layer of {digest} is malformed or over "
            f"{limit:,} bytes",
            signatures.SIGNATURE_INVALID,
        )
    return source.transport.read_small(f"{source.base}/blobs/{blob}", limit)


def verify_provenance(
    entry: Path, digest: str, public_key: Path, source_of: Callable[[], ArtifactSource]
) -> None:
    """Require a signature by public_key's owner over this digest. The cache entry keeps the
    signature that verified, so a node offline restarts with no network; without one, or with
    one that does not verify (the key was rotated), it is read again from the source."""
    try:
        signatures.verify_signature(entry, digest, public_key)
        return
    except signatures.SignatureError as cached:
        if cached.reason == signatures.SIGNER_KEY_MISSING:
            raise
        first = cached
    bundle = read_signature(source_of(), digest)
    if bundle is None:
        raise first  # missing, or only the cached one that did not verify
    # Kept in the entry only once it verified: a forged signature never lands in the cache.
    partial = entry / f".{signatures.SIGNATURE_FILE}.{os.getpid()}.partial"
    partial.write_bytes(bundle)
    try:
        signatures.verify_signature(entry, digest, public_key, partial)
        os.replace(partial, entry / signatures.SIGNATURE_FILE)
    finally:
        partial.unlink(missing_ok=True)
    log.info("signature of %s verified", digest)


def check_sealing(entry: Path, key_file: Path | None) -> None:
    """An encrypted artifact must open with the key in memory (the plaintext is dropped at once);
    a key given for a plaintext artifact is refused, since its model would sit on disk."""
    manifest = read_manifest(entry)
    try:
        sealing = encryption.parse_sealing(manifest)
    except ValueError as err:
        raise FetchError(str(err), INVALID) from err
    if sealing is None:
        if key_file is not None:
            raise encryption.ModelKeyError(
                encryption.NOT_ENCRYPTED,
                "spec.model.encryption names a key, but the artifact is not encrypted: its "
                "model would sit in plaintext on the node; train it with "
                "spec.output.encryption, or remove spec.model.encryption",
            )
        return
    key = encryption.read_key(key_file)
    for sealed, plain in sealing.files.items():
        encryption.open_sealed(key, (entry / safe_relative_path(sealed)).read_bytes(), plain)
    log.info("encrypted artifact: %d file(s) open with the given key", len(sealing.files))


def write_termination_message(reason: str, message: str, environ: dict[str, str]) -> None:
    """The reason the operator shows; best effort, as a terminal without the file is fine."""
    path = Path(environ.get("FOGLINE_TERMINATION_LOG", "/dev/termination-log"))
    document = json.dumps({"reason": reason, "message": message[:3000]}, separators=(",", ":"))
    with contextlib.suppress(OSError):
        path.write_text(document)


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="fogline fetch",
        description="Fetch an artifact into a digest-keyed cache, verify it, copy it to --dest.",
    )
    parser.add_argument(
        "--uri", required=True, help="path, file://, pvc://, http(s)://, s3://bucket/prefix, oci://"
    )
    parser.add_argument("--digest", required=True, help="sha256:HEX of the artifact manifest")
    parser.add_argument("--cache-dir", required=True, type=Path, help="node-local cache folder")
    parser.add_argument("--dest", required=True, type=Path, help="folder the server loads")
    parser.add_argument("--timeout", type=float, default=30.0, help="read timeout in seconds")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds")
    parser.add_argument("--retries", type=int, default=5, help="retries of each request")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for the whole fetch")
    parser.add_argument("--ca-bundle", help="PEM file of CAs to trust (default: the system's)")
    parser.add_argument(
        "--cache-keep",
        type=int,
        default=3,
        help="rollback targets the cache keeps besides --digest",
    )
    parser.add_argument("--cache-max-bytes", type=int, default=0, help="cache bound (0: none)")
    parser.add_argument(
        "--signature-public-key",
        type=Path,
        help="PEM EC public key whose model-signing signature the artifact must carry",
    )
    parser.add_argument(
        "--model-key-file", type=Path, help="AES-256 key (32 bytes) of an encrypted artifact"
    )
    parser.add_argument(
        "--keep-digest",
        action="append",
        default=[],
        metavar="DIGEST",
        help="a rollback target to keep (repeatable, most wanted first); with it or with "
        "--cache-owner, other unpinned digests are evicted",
    )
    parser.add_argument(
        "--cache-owner",
        help="who pins --digest and the --keep-digest targets (namespace/edgedeployment), so "
        "that other owners' fetches on the node keep them",
    )
    return parser


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = dict(os.environ) if environ is None else environ
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        parse_digest(args.digest)
        if args.retries < 0 or args.timeout <= 0 or args.connect_timeout <= 0 or args.deadline <= 0:
            raise UsageError("--retries must be >= 0, timeouts and --deadline > 0")
        if args.cache_keep < 0 or args.cache_max_bytes < 0:
            raise UsageError("--cache-keep and --cache-max-bytes must be >= 0")
        for kept in args.keep_digest:
            parse_digest(kept)
        named = args.cache_owner is not None or bool(args.keep_digest)
        rollback: list[str] | None = args.keep_digest[: args.cache_keep] if named else None
        policy = TransferPolicy(
            connect_timeout=args.connect_timeout,
            read_timeout=args.timeout,
            retries=args.retries,
            deadline_seconds=args.deadline,
            ca_bundle=args.ca_bundle or environ.get("FOGLINE_CA_BUNDLE") or None,
        )
        if args.cache_owner:
            # Pinned before the fetch: another owner's eviction then keeps this entry while it
            # is fetched, checked and copied to --dest, which happens outside the digest's lock.
            args.cache_dir.mkdir(parents=True, exist_ok=True)
            pin_digests(args.cache_dir, args.cache_owner, [args.digest, *(rollback or [])])

        def source_of() -> ArtifactSource:
            return resolve_source(args.uri, HttpTransport(policy), environ)

        entry = fill_cache(source_of, args.digest, args.cache_dir)
        if args.signature_public_key is not None:
            verify_provenance(entry, args.digest, args.signature_public_key, source_of)
        check_sealing(entry, args.model_key_file)
        manifest = install(entry, args.dest, args.digest)
        limits = CacheLimits(args.cache_keep, args.cache_max_bytes)
        for name in prune_cache(args.cache_dir, args.digest, limits, rollback):
            log.info("cache: removed %s", name)
    except (ValueError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        write_termination_message(INVALID, str(err), environ)
        return EXIT_USAGE
    except (FetchError, signatures.SignatureError, encryption.ModelKeyError) as err:
        print(f"error: {err.reason}: {err}", file=sys.stderr)
        write_termination_message(err.reason, str(err), environ)
        return EXIT_FAILURE
    except ArtifactError as err:
        print(f"error: {DIGEST_MISMATCH}: {err}", file=sys.stderr)
        write_termination_message(DIGEST_MISMATCH, str(err), environ)
        return EXIT_FAILURE
    except (TransportError, OSError) as err:
        # Whatever the transport raised that the loops above did not turn into a FetchError
        # still ends in one line, and the kubelet retries the init container.
        print(f"error: {UNREACHABLE}: {_one_line(err)}", file=sys.stderr)
        write_termination_message(UNREACHABLE, _one_line(err), environ)
        return EXIT_FAILURE
    print(f"{args.digest} {manifest.serving.file} ready in {args.dest}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
