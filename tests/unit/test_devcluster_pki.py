"""The dev cluster's certificates: a CA that signs serving and client certificates whose
names and usages are what the apiserver and its clients check."""

from __future__ import annotations

import ipaddress
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fogline.devcluster.pki import CLIENT_IDENTITIES, create_pki

pytestmark = pytest.mark.unit


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_certificate_is_signed_by_the_cluster_ca(tmp_path: Path) -> None:
    pki = create_pki(tmp_path, now=datetime(2026, 1, 1, tzinfo=UTC))
    ca = load(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for paths in [pki.serving, *pki.clients.values()]:
        cert = load(paths.cert)
        cert.verify_directly_issued_by(ca)
        assert cert.not_valid_after_utc > datetime(2026, 1, 30, tzinfo=UTC)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_serving_certificate_names_the_loopback_and_service_addresses(tmp_path: Path) -> None:
    serving = load(create_pki(tmp_path).serving.cert)
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    usage = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_client_certificates_carry_the_identities_rbac_knows(tmp_path: Path) -> None:
    pki = create_pki(tmp_path)
    for name, (common_name, group) in CLIENT_IDENTITIES.items():
        subject = load(pki.clients[name].cert).subject
        assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name
        groups = [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        assert groups == ([group] if group else [])


def test_keys_load_where_the_components_load_them(tmp_path: Path) -> None:
    pki = create_pki(tmp_path)
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.clients["admin"].cert), str(pki.clients["admin"].key))
    assert pki.sa_public_key.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert oct(pki.sa_private_key.stat().st_mode & 0o777) == "0o600"
    public = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
