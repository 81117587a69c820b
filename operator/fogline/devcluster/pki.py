"""Certificates for the dev cluster, made on the fly with the `cryptography` library: a
cluster CA, the apiserver's serving certificate, client certificates for each component,
and the service-account signing key pair. Real TLS, verified by every client. Keys are
ECDSA P-256: every component accepts them, and they take microseconds to make."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as err:  # the dev cluster is a development tool: its own extra
    raise ImportError(
        "the dev cluster needs the `cryptography` package: pip install 'fogline[dev]'"
    ) from err


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPKI:
    ca_cert: Path
    ca_key: Path
    serving: ClientCert
    sa_private_key: Path
    sa_public_key: Path
    clients: dict[str, ClientCert]


# Identities the components authenticate as; the apiserver's bootstrap RBAC knows them.
CLIENT_IDENTITIES: dict[str, tuple[str, str | None]] = {
    "admin": ("fogline-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "kwok": ("fogline-kwok", "system:masters"),
}
SERVING_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
SERVING_IPS = ("127.0.0.1", "10.96.0.1")
VALIDITY = timedelta(days=30)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    extensions: list[tuple[Any, bool]],
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _leaf_extensions(usage: x509.ObjectIdentifier) -> list[tuple[Any, bool]]:
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
        (x509.ExtendedKeyUsage([usage]), False),
    ]


def create_pki(pki_dir: Path, now: datetime | None = None) -> ClusterPKI:
    """Write a fresh CA, serving and client certificates and the SA key pair into pki_dir."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    now = now or datetime.now(UTC)
    ca_key = _new_key()
    ca_name = _name("fogline-dev-ca")
    ca = _certificate(
        ca_name,
        ca_key,
        ca_name,
        ca_key,
        now,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            ),
            (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
        ],
    )
    _write_key(ca_key, pki_dir / "ca.key")
    (pki_dir / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def sign(name: str, subject: x509.Name, extensions: list[tuple[Any, bool]]) -> ClientCert:
        key = _new_key()
        cert = _certificate(subject, key, ca_name, ca_key, now, extensions)
        paths = ClientCert(cert=pki_dir / f"{name}.crt", key=pki_dir / f"{name}.key")
        _write_key(key, paths.key)
        paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return paths

    alternative_names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVING_NAMES]
    alternative_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVING_IPS]
    serving = sign(
        "apiserver",
        _name("kube-apiserver"),
        [
            *_leaf_extensions(ExtendedKeyUsageOID.SERVER_AUTH),
            (x509.SubjectAlternativeName(alternative_names), False),
        ],
    )
    clients = {
        name: sign(
            name, _name(common_name, group), _leaf_extensions(ExtendedKeyUsageOID.CLIENT_AUTH)
        )
        for name, (common_name, group) in CLIENT_IDENTITIES.items()
    }
    sa_key = _new_key()
    _write_key(sa_key, pki_dir / "sa.key")
    (pki_dir / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return ClusterPKI(
        ca_cert=pki_dir / "ca.crt",
        ca_key=pki_dir / "ca.key",
        serving=serving,
        sa_private_key=pki_dir / "sa.key",
        sa_public_key=pki_dir / "sa.pub",
        clients=clients,
    )
