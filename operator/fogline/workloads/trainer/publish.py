"""Publishing a finished artifact folder to where edge nodes read it: an S3-compatible bucket
(s3://bucket/prefix, one object a file, manifest.json last so a reader never sees a manifest
before its files) or an OCI registry (oci://registry/repository, one layer a file, a real config
media type). Only the trainer writes; pvc:// and file:// folders need no publishing."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fogline.api.digests import oci_tag
from fogline.workloads.manifest import (
    MANIFEST_FILE,
    canonical_manifest_bytes,
    read_manifest,
    safe_relative_path,
)
from fogline.workloads.signatures import SIGNATURE_FILE

log = logging.getLogger("fogline.trainer")

# The OCI media types of a Fogline artifact: containerd refuses artifacts with an empty config,
# so the config is a small JSON document of its own type.
ARTIFACT_TYPE = "application/vnd.fogline.artifact.v1"
CONFIG_MEDIA_TYPE = "application/vnd.fogline.artifact.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.fogline.artifact.manifest.v1+json"
FILE_MEDIA_TYPE = "application/vnd.fogline.artifact.file.v1"
SIGNATURE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")


class PublishError(Exception):
    """The artifact could not be published; reason is AccessDenied or PublishFailed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def needs_publishing(uri: str | None) -> bool:
    return bool(uri) and urlsplit(uri or "").scheme in ("s3", "oci")


def publish(folder: Path, uri: str, env: Mapping[str, str]) -> None:
    """Upload every file the manifest lists, then model.sig when signed, then manifest.json."""
    scheme = urlsplit(uri).scheme
    if scheme == "s3":
        _publish_s3(folder, uri, env)
    elif scheme == "oci":
        _publish_oci(folder, uri, env)
    else:
        raise PublishError("PublishFailed", f"--artifact-uri {uri}: nothing publishes {scheme}://")


def s3_client(env: Mapping[str, str]) -> Any:
    """boto3 for any S3-compatible store: endpoint (AWS_ENDPOINT_URL), region, CA bundle
    (AWS_CA_BUNDLE) and credentials from the environment; path-style addressing and checksums
    only when required, which stores other than AWS accept."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
        verify=env.get("AWS_CA_BUNDLE") or None,
        config=Config(
            s3={"addressing_style": env.get("FOGLINE_S3_ADDRESSING", "path")},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=10,
            read_timeout=60,
            retries={"max_attempts": 5, "mode": "standard"},
        ),
    )


def _publish_s3(folder: Path, uri: str, env: Mapping[str, str]) -> None:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, unquote(parts.path).strip("/")
    manifest = read_manifest(folder)
    client = s3_client(env)
    # The signature goes before the manifest: a reader that sees a manifest sees its signature.
    signed = [SIGNATURE_FILE] if (folder / SIGNATURE_FILE).is_file() else []
    try:
        for name in [*sorted(manifest.files), *signed, MANIFEST_FILE]:
            key = f"{prefix}/{safe_relative_path(name)}".lstrip("/")
            client.upload_file(str(folder / name), bucket, key)
            log.info("uploaded s3://%s/%s", bucket, key)
    except (ClientError, S3UploadFailedError) as err:
        # upload_file wraps the store's ClientError; its code is what says who is to blame.
        cause = err if isinstance(err, ClientError) else err.__cause__
        code = (
            str(cause.response.get("Error", {}).get("Code", ""))
            if isinstance(cause, ClientError)
            else next((c for c in _DENIED if c in str(err)), "")
        )
        reason = "AccessDenied" if code in _DENIED else "PublishFailed"
        raise PublishError(reason, f"{uri}: {code or 'error'}: {_one_line(err)}") from err
    except (BotoCoreError, OSError) as err:
        raise PublishError("PublishFailed", f"{uri}: {err}") from err


def _auth_backend(host: str, insecure: bool) -> str:
    """oras' backend for the scheme the registry's challenge names: `basic` for htpasswd
    registries, `token` (the exchange Docker Hub, GHCR and Harbor ask for) otherwise. oras'
    token backend would read a Basic realm as a token server's address."""
    import requests

    try:
        reply = requests.get(
            f"{'http' if insecure else 'https'}://{host}/v2/", timeout=10, verify=not insecure
        )
    except requests.RequestException:
        return "token"  # the push itself reports the registry unreachable
    challenge = reply.headers.get("WWW-Authenticate", "")
    return "basic" if challenge.lower().startswith("basic") else "token"


def _publish_oci(folder: Path, uri: str, env: Mapping[str, str]) -> None:
    """Push with oras: each file a layer titled with its name, manifest.json among them. Its
    blob digest is the artifact digest, which is how the edge pulls it without a tag."""
    import oras.provider
    import requests

    parts = urlsplit(uri)
    repository = parts.path.strip("/")
    manifest = read_manifest(folder)
    insecure = env.get("FOGLINE_OCI_PLAIN_HTTP", "") == "1"
    backend = _auth_backend(parts.netloc, insecure)
    if backend == "basic" and not env.get("FOGLINE_OCI_USERNAME"):
        raise PublishError(
            "AccessDenied",
            f"{uri}: the registry asks for credentials; name a Secret holding "
            "FOGLINE_OCI_USERNAME and FOGLINE_OCI_PASSWORD in spec.output.access.credentialsSecret",
        )
    registry = oras.provider.Registry(
        parts.netloc,
        insecure=insecure,
        tls_verify=not insecure,
        auth_backend=backend,
    )
    if env.get("FOGLINE_OCI_USERNAME"):
        registry.login(
            env["FOGLINE_OCI_USERNAME"], env.get("FOGLINE_OCI_PASSWORD", ""), hostname=parts.netloc
        )
    tag = oci_tag(manifest.digest)
    with tempfile.TemporaryDirectory() as scratch:
        # The manifest layer carries the canonical bytes, so its blob digest is the artifact
        # digest whatever formatting the folder's copy has.
        canonical = Path(scratch) / MANIFEST_FILE
        canonical.write_bytes(canonical_manifest_bytes(manifest.raw))
        config = Path(scratch) / "config.json"
        config.write_text(json.dumps({"name": manifest.name, "digest": manifest.digest}))
        files = [f"{folder / name}:{FILE_MEDIA_TYPE}" for name in sorted(manifest.files)]
        if (folder / SIGNATURE_FILE).is_file():
            files.append(f"{folder / SIGNATURE_FILE}:{SIGNATURE_MEDIA_TYPE}")
        files.append(f"{canonical}:{MANIFEST_MEDIA_TYPE}")
        try:
            response = registry.push(
                target=f"{parts.netloc}/{repository}:{tag}",
                files=files,
                manifest_config=f"{config}:{CONFIG_MEDIA_TYPE}",
                disable_path_validation=True,
                manifest_annotations={"io.fogline.artifact.digest": manifest.digest},
                quiet=True,
            )
        except (requests.RequestException, ValueError, OSError) as err:
            raise PublishError("PublishFailed", f"{uri}: {_one_line(err)}") from err
    if response.status_code in (401, 403):
        raise PublishError("AccessDenied", f"{uri}: HTTP {response.status_code}")
    if response.status_code >= 300:
        raise PublishError("PublishFailed", f"{uri}: HTTP {response.status_code}")
    log.info("pushed %s/%s:%s", parts.netloc, repository, tag)


def _one_line(err: object) -> str:
    return " ".join(str(err).split()) or type(err).__name__
