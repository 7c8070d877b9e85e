"""A throw-away certificate authority and a server certificate for 127.0.0.1 / localhost.

The fakes serve TLS with these files and the product is told to trust ``ca_file`` through its
ordinary setting (``apns_ca_file``, ``fcm_ca_file``), so the client code paths stay the real
ones: certificate verification and host-name checks are on, exactly as against Apple or Google.

    tls = make_tls(tmp_path)
    server_ctx = tls.server_context(alpn=["h2"])
    client_ctx = tls.client_context()
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names the server certificate is valid for; the fakes listen on 127.0.0.1 only.
DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of one test CA and one server certificate signed by it."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self, alpn: Sequence[str] = ()) -> ssl.SSLContext:
        """A server-side context presenting the certificate, offering ``alpn`` protocols."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    def client_context(self, alpn: Sequence[str] = ()) -> ssl.SSLContext:
        """A verifying client context that trusts only the test CA."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context


def make_tls(directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS) -> TlsFiles:
    """Write ``test-ca.pem``, ``server.pem`` and ``server.key`` into ``directory``.

    Fresh keys on every call (EC P-256: generating them costs well under a millisecond), so
    no test ever trusts another test's CA. The certificates are valid from an hour ago for a
    week, which tolerates a skewed clock and outlives any test run.
    """
    directory.mkdir(parents=True, exist_ok=True)
    not_before, not_after = validity()

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OpenMFA test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = ca_certificate(ca_key, ca_name, not_before, not_after)

    server_key = ec.generate_private_key(ec.SECP256R1())
    names = alt_names(hosts)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(
        ca_file=directory / "test-ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
    )
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(files.key_file, server_key)
    return files


def validity() -> tuple[datetime.datetime, datetime.datetime]:
    """A test certificate's validity: from an hour ago (a skewed clock) for a week."""
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)


def ca_certificate(
    key: ec.EllipticCurvePrivateKey,
    name: x509.Name,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    *,
    digital_signature: bool = False,
) -> x509.Certificate:
    """A self-signed CA certificate (path length 0, keyCertSign + cRLSign, its SKI)."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """Subject alternative names: an IP address entry per address, a DNS entry otherwise."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """``key`` as unencrypted PKCS#8 PEM, readable by its owner only."""
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
