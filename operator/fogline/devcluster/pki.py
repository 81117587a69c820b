"""Certificates for the dev cluster, made on the fly with the openssl command: a cluster CA,
the apiserver's serving certificate, client certificates for each component, and the
service-account signing key pair. Real TLS, verified by every client."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


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


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], check=False, cwd=cwd, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _sign(pki_dir: Path, name: str, subject: str, extensions: str) -> ClientCert:
    key, csr, cert, ext = (
        pki_dir / f"{name}{suffix}" for suffix in (".key", ".csr", ".crt", ".ext")
    )
    ext.write_text(extensions)
    _openssl("genrsa", "-out", str(key), "2048", cwd=pki_dir)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=pki_dir)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "30", "-sha256", "-extfile", str(ext), "-out", str(cert),
        cwd=pki_dir,
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return ClientCert(cert=cert, key=key)


def create_pki(pki_dir: Path) -> ClusterPKI:
    """Write a fresh CA, serving and client certificates and the SA key pair into pki_dir."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=pki_dir)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-days", "30", "-subj", "/CN=fogline-dev-ca",
        "-out", "ca.crt", cwd=pki_dir,
    )  # fmt: skip
    serving = _sign(
        pki_dir,
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,IP:10.96.0.1\n",
    )
    clients = {}
    for name, (common_name, group) in CLIENT_IDENTITIES.items():
        subject = f"/CN={common_name}" + (f"/O={group}" if group else "")
        clients[name] = _sign(
            pki_dir,
            name,
            subject,
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=clientAuth\n",
        )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki_dir)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki_dir)
    return ClusterPKI(
        ca_cert=pki_dir / "ca.crt",
        ca_key=pki_dir / "ca.key",
        serving=serving,
        sa_private_key=pki_dir / "sa.key",
        sa_public_key=pki_dir / "sa.pub",
        clients=clients,
    )
