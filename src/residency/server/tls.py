"""The coordinator's private certificate authority and its server certificate.

Nodes trust only this CA (``ca.pem``), so a federation does not depend on a public PKI. Keys
are written owner-only and atomically; the CA key never leaves the coordinator's folder.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from residency.common.files import write_atomic

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"


@dataclass(frozen=True)
class TlsFiles:
    """Where a coordinator's TLS material lives."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        """The certificate nodes and the CLI must trust."""
        return self.folder / CA_CERT

    @property
    def server_cert(self) -> Path:
        """SuperLink's certificate, signed by the CA."""
        return self.folder / SERVER_CERT

    @property
    def server_key(self) -> Path:
        """SuperLink's private key (owner-only)."""
        return self.folder / SERVER_KEY


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_tls(
    folder: Path, *, names: Sequence[str], common_name: str, days: int = 825
) -> TlsFiles:
    """Create a CA and a server certificate valid for ``names`` (DNS names or IP addresses)."""
    if not names:
        raise ValueError("at least one subject alternative name is needed")
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} Residency CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    files = TlsFiles(folder)
    write_atomic(folder / CA_KEY, _pem_key(ca_key), mode=0o600)
    write_atomic(files.server_key, _pem_key(server_key), mode=0o600)
    write_atomic(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    write_atomic(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return files
