"""RadSec test parts: a throw-away PKI, a raw TLS RADIUS client, and radsecproxy.

* :class:`TestCa` issues the bridge's server certificate and gateways' client certificates
  (EC P-256, valid an hour ago to a week ahead), written as PEM files.
* :class:`RadsecSocket` is a gateway speaking RadSec by hand over a real TLS socket, so
  tests can write packets the way they like (two in one write, one over many writes, a bad
  length).
* :class:`Radsecproxy` runs Debian's ``radsecproxy`` (1.9) in the foreground as the
  gateway-side proxy: UDP from ``radclient`` in, RadSec to the bridge out.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from radius_bridge.protocol.stream import StreamFramer
from radius_vocabulary.certs import format_fingerprint
from tests.fakes.tls import alt_names, ca_certificate, validity, write_private_key
from tests.support.freeradius import free_udp_port
from tests.support.process import system_program, wait_for


def radsecproxy_binary() -> str | None:
    """The radsecproxy program (``/usr/sbin`` is often not on a user's PATH)."""
    return system_program("radsecproxy")


@dataclass(frozen=True, slots=True)
class Issued:
    """One certificate and its key as PEM files, and its SHA-256 fingerprint."""

    cert_file: Path
    key_file: Path
    fingerprint: str


class TestCa:
    """A certificate authority of its own, in ``directory``."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._from, self._until = validity()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = ca_certificate(
            self._key, self._name, self._from, self._until, digital_signature=True
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server: bool = False) -> Issued:
        """A certificate for ``name`` (a server one carries 127.0.0.1 / localhost)."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._from)
            .not_valid_after(self._until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alt_names(("127.0.0.1", "localhost"))),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        cert_file = self.directory / f"{name}.pem"
        key_file = self.directory / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private_key(key_file, key)
        digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
        return Issued(cert_file, key_file, format_fingerprint(digest))


class RadsecSocket:
    """A gateway speaking RadSec by hand: ``send`` raw bytes, ``receive`` whole packets."""

    def __init__(
        self, port: int, ca: TestCa, certificate: Issued | None, timeout: float = 10.0
    ) -> None:
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        context.check_hostname = False  # the bridge's certificate names 127.0.0.1 anyway
        if certificate is not None:
            context.load_cert_chain(certificate.cert_file, certificate.key_file)
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            self.sock = context.wrap_socket(raw)
        except BaseException:
            raw.close()
            raise
        self.framer = StreamFramer()
        self._ready: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> bytes:
        """The next whole packet; raises EOFError when the bridge closed the connection."""
        while not self._ready:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the bridge closed the connection")
            self._ready.extend(self.framer.feed(chunk))
        return self._ready.pop(0)

    def closed_by_peer(self) -> bool:
        """True when the bridge closes the connection without sending anything more."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                if self.framer.feed(chunk):
                    return False
        except (ssl.SSLError, ConnectionError):
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RadsecSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Radsecproxy:
    """``radsecproxy -f`` with UDP in on 127.0.0.1 (``port``) and one RadSec server: the
    bridge at 127.0.0.1:``bridge_port``, presenting ``certificate``."""

    def __init__(
        self,
        directory: Path,
        bridge_port: int,
        ca: TestCa,
        certificate: Issued,
        secret: str,
    ) -> None:
        binary = radsecproxy_binary()
        if binary is None:
            raise RuntimeError("radsecproxy not installed (apt-get install radsecproxy)")
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.log_file = directory / "radsecproxy.log"
        self.config = directory / "radsecproxy.conf"
        self.config.write_text(
            f"""ListenUDP 127.0.0.1:{self.port}
LogLevel 4
PidFile {directory / "radsecproxy.pid"}
tls bridge {{
    CACertificateFile {ca.ca_file}
    CertificateFile {certificate.cert_file}
    CertificateKeyFile {certificate.key_file}
}}
client gateway {{
    host 127.0.0.1
    type udp
    secret {secret}
}}
server openmfa {{
    host 127.0.0.1
    port {bridge_port}
    type tls
    tls bridge
    secret radsec
    CertificateNameCheck on
    StatusServer on
}}
realm * {{
    server openmfa
}}
"""
        )
        self._binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Radsecproxy:
        # In the foreground radsecproxy logs to stderr: kept in a file for failure messages.
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [self._binary, "-f", "-d", "4", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(self._listening, 10, "radsecproxy to listen on UDP")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"radsecproxy exited: {self.log()}")
        return "listening for udp" in self.log()

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
