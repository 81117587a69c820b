"""Who produced an artifact: signing and verifying an artifact folder in the OpenSSF
model-signing format (a Sigstore bundle holding a DSSE-signed in-toto statement that lists every
file's sha256), with an elliptic-curve key pair, offline. It reads and writes files only; where
a signature comes from (store, cache) is the fetch step's business.

How the signature relates to the artifact digest: the trainer signs after it wrote manifest.json,
so the signed file list holds manifest.json, whose sha256 is the whole-artifact digest, next to
every file it lists. The signature is a file beside the artifact (`model.sig`), never in it: the
digest stays one value whoever signs (ECDSA signatures differ at every signing, and a key can be
rotated or a second signer added without a new digest to pin), and a digest pinned in an
EdgeDeployment keeps proving integrity while the signature proves origin. The verifier checks
the signature and every file it lists, then that the signed manifest.json is the manifest of
exactly the digest being installed, so a valid signature of another artifact never vouches for
this one."""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

from fogline.workloads.manifest import MANIFEST_FILE, read_manifest

SIGNATURE_FILE = "model.sig"
# A bundle is a few kB; a bound keeps a hostile store from filling the fetcher's memory.
SIGNATURE_MAX_BYTES = 1 << 20
HASH_ALGORITHM: Final[Literal["sha256"]] = "sha256"

# The reasons the fetch step reports for a signature, shown on the site row as Init:<reason>.
SIGNATURE_MISSING, SIGNATURE_INVALID = "SignatureMissing", "SignatureInvalid"
SIGNER_KEY_MISSING = "SignerKeyMissing"


class SignatureError(Exception):
    """The artifact carries no signature, or one that the required key did not make."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SigningKeyError(Exception):
    """The trainer's signing key cannot be used (unreadable, not an EC private key)."""


def _unlisted_files(folder: Path, listed: set[str]) -> list[str]:
    """Every file under folder (relative, POSIX) that the artifact does not hold: checkpoints
    and scratch files of the trainer stay out of the signature."""
    return sorted(
        str(PurePosixPath(path.relative_to(folder).as_posix()))
        for path in folder.rglob("*")
        if (path.is_file() or path.is_symlink())
        and path.relative_to(folder).as_posix() not in listed
    )


def check_signing_key(private_key: Path) -> None:
    """Raise SigningKeyError unless the file is an unencrypted PEM elliptic-curve private key,
    the kind model-signing's key signer takes; the message never shows the key."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(private_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise SigningKeyError(
            f"{private_key}: not a readable, unencrypted PEM private key ({type(err).__name__}); "
            "make one with `openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 "
            "-topk8 -nocrypt`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SigningKeyError(
            f"{private_key}: a {type(key).__name__}, not an elliptic-curve private key; "
            "model-signing's key mode signs with ECDSA (P-256, P-384 or P-521)"
        )


def sign_artifact(folder: Path, private_key: Path) -> Path:
    """Sign manifest.json and every file it lists with an EC private key (PEM); writes
    folder/model.sig and returns its path."""
    from model_signing import hashing, signing

    manifest = read_manifest(folder)
    listed = {*manifest.files, MANIFEST_FILE}
    ignored = _unlisted_files(folder, listed)
    hashing_config = (
        hashing.Config()
        .use_file_serialization(hashing_algorithm=HASH_ALGORITHM)
        .set_ignored_paths(paths=ignored, ignore_git_paths=False)
    )
    target = folder / SIGNATURE_FILE
    partial = folder / f".{SIGNATURE_FILE}.partial"
    try:
        config = signing.Config().use_elliptic_key_signer(private_key=private_key)
    except (OSError, ValueError, TypeError) as err:
        # The message names the file, never its contents.
        raise SigningKeyError(
            f"{private_key}: not a PEM elliptic-curve private key ({type(err).__name__})"
        ) from None
    try:
        config.set_hashing_config(hashing_config).sign(folder, partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def signed_files(bundle: bytes) -> dict[str, str]:
    """The file names and sha256 (hex) that a model-signing bundle lists; it does not check
    the signature (verify_signature does, first)."""
    try:
        envelope = json.loads(bundle)["dsseEnvelope"]
        statement: Any = json.loads(base64.b64decode(envelope["payload"], validate=True))
        resources = statement["predicate"]["resources"]
        return {
            str(item["name"]): str(item["digest"])
            for item in resources
            if item.get("algorithm") == HASH_ALGORITHM
        }
    except (ValueError, KeyError, TypeError, binascii.Error) as err:
        raise SignatureError(
            SIGNATURE_INVALID, f"{SIGNATURE_FILE}: not a model-signing bundle ({err})"
        ) from None


def verify_signature(
    folder: Path, digest: str, public_key: Path, signature: Path | None = None
) -> None:
    """Raise SignatureError unless `signature` (default folder/model.sig) is a signature by
    public_key's private key over this artifact: every signed file matches, and the signed manifest.json is the one whose
    sha256 is digest. Files the signature does not list are the fetch step's to check against
    the manifest (manifest.json lists them all)."""
    from cryptography.exceptions import InvalidSignature
    from model_signing import hashing, verifying

    if not public_key.is_file():
        raise SignatureError(
            SIGNER_KEY_MISSING,
            f"{public_key}: no public key to verify with; the ConfigMap named by "
            "spec.model.signature.publicKeyConfigMap must exist and hold the PEM under "
            "spec.model.signature.key",
        )
    signature = folder / SIGNATURE_FILE if signature is None else signature
    if not signature.is_file() or signature.is_symlink():
        raise SignatureError(
            SIGNATURE_MISSING,
            f"artifact {digest} has no {SIGNATURE_FILE}, and spec.model.signature requires one; "
            "sign it (spec.output.signing of the ModelTraining, or `model_signing sign key`)",
        )
    if signature.stat().st_size > SIGNATURE_MAX_BYTES:
        raise SignatureError(SIGNATURE_INVALID, f"{SIGNATURE_FILE}: larger than a signature can be")
    try:
        (
            verifying.Config()
            .use_elliptic_key_verifier(public_key=public_key)
            .set_hashing_config(
                hashing.Config().use_file_serialization(hashing_algorithm=HASH_ALGORITHM)
            )
            .set_ignore_unsigned_files(True)
            .verify(folder, signature)
        )
    except (ValueError, KeyError, TypeError, InvalidSignature) as err:
        text = " ".join(str(err).split())
        # The list's repr may escape the quotes around a name.
        changed = sorted(set(re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", text)))
        # The library's mismatch text prints raw digests; the names are what a user acts on.
        problem = (
            f"the signature is valid but these files differ from what it signs: {', '.join(changed)}"
            if changed
            else "it does not verify with the public key of spec.model.signature: "
            + (text[:300] or type(err).__name__)
        )
        raise SignatureError(
            SIGNATURE_INVALID, f"artifact {digest}: {SIGNATURE_FILE} refused: {problem}"
        ) from None
    # The library checked every signed file's bytes; the signature vouches for this artifact
    # only if manifest.json is among them and is the manifest of the digest being installed.
    if MANIFEST_FILE not in signed_files(signature.read_bytes()):
        raise SignatureError(
            SIGNATURE_INVALID,
            f"artifact {digest}: {SIGNATURE_FILE} does not sign {MANIFEST_FILE}, so it vouches "
            "for no artifact digest; sign the whole artifact folder",
        )
    actual = read_manifest(folder).digest
    if actual != digest:
        raise SignatureError(
            SIGNATURE_INVALID,
            f"artifact {digest}: {SIGNATURE_FILE} was made for another artifact ({actual})",
        )
