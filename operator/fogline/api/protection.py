"""The typed view of how an artifact is protected: the ModelTraining's signing key and
encryption key (spec.output.signing, spec.output.encryption) and the EdgeDeployment's
required signer and decryption key (spec.model.signature, spec.model.encryption). Keys are
named by Secret and ConfigMap, never held in a spec, a status or a log."""

from __future__ import annotations

from dataclasses import dataclass

SIGNING_KEY_DEFAULT = "private.pem"
PUBLIC_KEY_DEFAULT = "public.pem"
MODEL_KEY_DEFAULT = "key"


@dataclass(frozen=True)
class ArtifactSigning:
    """spec.output.signing: sign each artifact with the EC private key in a Secret."""

    private_key_secret: str
    key: str = SIGNING_KEY_DEFAULT


@dataclass(frozen=True)
class ModelEncryption:
    """spec.output.encryption and spec.model.encryption: the Secret key holding the 32-byte
    AES-256 key that seals (trainer) and opens (edge) the model files."""

    key_secret: str
    key: str = MODEL_KEY_DEFAULT


@dataclass(frozen=True)
class SignatureRequirement:
    """spec.model.signature: serve only artifacts signed by the private key of this public key
    (PEM, in a ConfigMap: a public key is no secret)."""

    public_key_config_map: str
    key: str = PUBLIC_KEY_DEFAULT
