"""HTTPS without a proxy: ``openmfa run --tls-cert/--tls-key`` serves TLS itself, a bad file
is one clear error, and SIGHUP puts a renewed certificate in service for new connections
while open ones keep theirs (and a bad renewal keeps the old one)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyotp
import pytest

from backend.config import load_settings
from backend.errors import ConfigurationError
from backend.tls import ServerTls, load_context
from tests.fakes.tls import TlsFiles, make_tls
from tests.support.freeradius import free_udp_port, radclient, radclient_binary
from tests.support.process import EXE, Cli, ServerProcess, free_port, stop_process, wait_for


def _both_cas(tmp_path: Path, *files: TlsFiles) -> Path:
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(b"".join(f.ca_file.read_bytes() for f in files))
    return bundle


def _install(source: TlsFiles, cert: Path, key: Path) -> None:
    """Replace the served files as a renewal tool does: write aside, then rename over."""
    for src, dst in ((source.cert_file, cert), (source.key_file, key)):
        aside = dst.with_suffix(".new")
        shutil.copyfile(src, aside)
        aside.replace(dst)


class _Connection:
    """One kept-alive HTTPS connection: its peer certificate and requests over it."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        peer = self.sock.getpeercert(binary_form=True)
        assert peer is not None
        self.peer: bytes = peer

    def healthz(self) -> bytes:
        self.sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer

    def close(self) -> None:
        self.sock.close()


def _der(files: TlsFiles) -> bytes:
    return ssl.PEM_cert_to_DER_cert(files.cert_file.read_text())


def test_sighup_serves_a_renewed_certificate_to_new_connections_only(tmp_path: Path) -> None:
    first, second = make_tls(tmp_path / "a"), make_tls(tmp_path / "b")
    served = tmp_path / "served"
    served.mkdir()
    cert, key = served / "cert.pem", served / "key.pem"
    _install(first, cert, key)
    home, port = tmp_path / "home", free_port()
    env = {"OPENMFA_TLS_CERT_FILE": str(cert), "OPENMFA_TLS_KEY_FILE": str(key)}
    Cli(home, **env)("db", "upgrade")
    context = ssl.create_default_context(cafile=str(_both_cas(tmp_path, first, second)))
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    with ServerProcess(home, port, env, tls_ca=first.ca_file) as server:
        assert server.process is not None
        old = _Connection(port, context)
        assert old.peer == _der(first)
        assert b"200 OK" in old.healthz()
        # Served over HTTPS, the portal's pages get HSTS and its cookies Secure.
        page = httpx.get(server.url + "/portal/sign-in", verify=context, timeout=10)
        assert page.status_code == 200
        assert page.headers["strict-transport-security"] == "max-age=31536000"
        assert "; Secure" in page.headers["set-cookie"]

        _install(second, cert, key)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS certificate reloaded" in server.log, 10, "the reload")
        fresh = _Connection(port, context)
        assert fresh.peer == _der(second)
        assert b"200 OK" in fresh.healthz()
        # The connection made before the reload keeps its certificate and still works.
        assert b"200 OK" in old.healthz()
        assert old.sock.getpeercert(binary_form=True) == _der(first)

        # A bad renewal (the certificate of one pair, the key of the other) is refused and
        # the certificate in service stays.
        shutil.copyfile(first.key_file, key)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS reload failed" in server.log, 10, "the failed reload")
        assert "does not belong to the certificate" in server.log
        after = _Connection(port, context)
        assert after.peer == _der(second)
        assert b"200 OK" in after.healthz()
        for each in (old, fresh, after):
            each.close()
        assert server.running()
        assert server.terminate() == 0
    assert "Traceback" not in server.log


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """One handshake over a socket pair: the version agreed, or the client's error."""
    ours, theirs = socket.socketpair()
    with ours, theirs, ThreadPoolExecutor(1) as pool:
        serving = pool.submit(server.wrap_socket, ours, server_side=True)
        try:
            with client.wrap_socket(theirs, server_hostname="127.0.0.1") as tls:
                return str(tls.version())
        except ssl.SSLError as exc:
            return f"refused: {exc.reason}"
        finally:
            with contextlib.suppress(ssl.SSLError, OSError):
                serving.result(10).close()


def test_tls_1_2_and_1_3_only_with_the_servers_cipher_preference(tmp_path: Path) -> None:
    files = make_tls(tmp_path)
    server = ServerTls(files.cert_file, files.key_file).context
    assert server.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert _handshake(server, files.client_context()) == "TLSv1.3"
    for version, expected in (
        (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
        (ssl.TLSVersion.TLSv1_1, "refused: TLSV1_ALERT_PROTOCOL_VERSION"),  # server alert
    ):
        client = files.client_context()
        with warnings.catch_warnings():  # asking for TLS 1.1 on purpose is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            client.maximum_version = version
        with contextlib.suppress(ssl.SSLError):  # a client library that cannot go that low
            client.set_ciphers("DEFAULT:@SECLEVEL=0")
        assert _handshake(server, client).startswith(expected)


def test_without_tls_sighup_does_not_stop_the_server(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    Cli(home)("db", "upgrade")
    with ServerProcess(home, port, {}) as server:
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "nothing to reload" in server.log, 10, "the SIGHUP line")
        assert server.running()
        assert server.terminate() == 0


# -- one clear error for each kind of bad file --------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path / "tls")


def _refused(cert: Path, key: Path | None) -> str:
    with pytest.raises(ConfigurationError) as caught:
        ServerTls(cert, key)
    return str(caught.value)


def test_a_missing_file_is_named(files: TlsFiles, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    assert _refused(missing, files.key_file) == (
        f"the TLS certificate file {missing} does not exist"
    )
    assert _refused(files.cert_file, missing) == f"the TLS key file {missing} does not exist"
    assert _refused(files.cert_file, tmp_path) == f"the TLS key file {tmp_path} is a directory"


def test_a_key_of_another_certificate_is_named(files: TlsFiles, tmp_path: Path) -> None:
    other = make_tls(tmp_path / "other")
    assert _refused(files.cert_file, other.key_file) == (
        f"the TLS key {other.key_file} does not belong to the certificate in {files.cert_file}"
    )


def test_files_that_are_not_pem_are_refused(files: TlsFiles, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert _refused(garbage, files.key_file) == (
        f"the TLS certificate file {garbage} holds no PEM certificate"
    )
    assert _refused(files.cert_file, garbage).startswith(
        f"the TLS key file {garbage} holds no usable PEM private key ("
    )
    # A certificate given as the key.
    assert _refused(files.cert_file, files.cert_file).startswith(
        f"the TLS key file {files.cert_file} holds no usable PEM private key ("
    )


def test_an_encrypted_key_is_refused_without_asking_for_a_password(
    files: TlsFiles, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(files.key_file.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert "is encrypted" in _refused(files.cert_file, encrypted)


def test_the_key_may_follow_the_certificate_in_one_file(files: TlsFiles, tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(files.cert_file.read_bytes() + files.key_file.read_bytes())
    assert load_context(both, None).minimum_version == ssl.TLSVersion.TLSv1_2


def test_settings_want_the_certificate_with_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="tls_key_file is set without tls_cert_file"):
        load_settings(home=tmp_path, tls_key_file=tmp_path / "k.pem")
    with_tls = load_settings(home=tmp_path, tls_cert_file=tmp_path / "c.pem", port=8443)
    assert with_tls.resolved_public_url == "https://127.0.0.1:8443"


def test_run_with_a_mismatched_key_is_one_error_line_before_the_database(
    files: TlsFiles, tmp_path: Path
) -> None:
    other = make_tls(tmp_path / "other")
    home = tmp_path / "home"
    cli = Cli(home)
    port = str(free_port())
    args = ("run", "--port", port, "--radius-port", "0", "--tls-cert", str(files.cert_file))
    error = cli.fails(*args, "--tls-key", str(other.key_file))
    assert error == (
        f"openmfa: error: the TLS key {other.key_file} does not belong to the certificate "
        f"in {files.cert_file}\n"
    )
    assert not (home / "openmfa.db").exists()  # refused before anything was opened


@pytest.mark.skipif(radclient_binary() is None, reason="radclient not installed (freeradius-utils)")
def test_a_standalone_bridge_reaches_the_server_over_https(tmp_path: Path) -> None:
    """``openmfa radius --backend https://...`` verifies the server's certificate against
    its host's trust store (here SSL_CERT_FILE naming the private CA) and relays a code."""
    files = make_tls(tmp_path / "tls")
    home, port = tmp_path / "home", free_port()
    env = {
        "OPENMFA_TLS_CERT_FILE": str(files.cert_file),
        "OPENMFA_TLS_KEY_FILE": str(files.key_file),
    }
    cli = Cli(home, **env)
    cli("db", "upgrade")
    with ServerProcess(home, port, env, tls_ca=files.ca_file) as server:
        secret = "tls-test-secret"
        cli(
            "client",
            "add",
            "edge",
            "--address",
            "127.0.0.1",
            "--secret-stdin",
            "--mode",
            "otp",
            "--primary",
            "none",
            stdin=secret + "\n",
        )
        cli("user", "add", "dave")
        seed = re.search(
            r"^secret: (\S+)$", cli("activation", "create", "dave", "--oath").stdout, re.MULTILINE
        )
        assert seed is not None
        token_file = tmp_path / "bridge.token"
        token_file.write_text(cli("token", "create", "edge-bridge", "--scope", "bridge").stdout)
        token_file.chmod(0o600)
        udp = free_udp_port()
        log_path = tmp_path / "bridge.log"
        with log_path.open("wb") as log:
            bridge = subprocess.Popen(
                [
                    str(EXE),
                    "radius",
                    "--backend",
                    server.url,
                    "--token-file",
                    str(token_file),
                    "--listen",
                    f"127.0.0.1:{udp}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "SSL_CERT_FILE": str(files.ca_file)},
            )
        try:
            wait_for(
                lambda: (
                    radclient(udp, secret, {}, code="status", timeout=0.5).code == "Access-Accept"
                ),
                20,
                "openmfa radius to answer Status-Server",
            )
            code = pyotp.TOTP(seed.group(1)).now()
            answer = radclient(udp, secret, {"User-Name": "dave", "User-Password": code})
            assert answer.code == "Access-Accept", log_path.read_text()
        finally:
            assert stop_process(bridge, timeout=15) == 0, log_path.read_text()
        assert "Traceback" not in log_path.read_text()


def test_a_handshake_that_never_comes_is_cut_after_the_request_timeout(tmp_path: Path) -> None:
    """A connection that never sends its ClientHello is held as long as a plain one that
    never sends its request (``http_request_timeout_seconds``), not asyncio's 60 s."""
    files = make_tls(tmp_path / "tls")
    home, port = tmp_path / "home", free_port()
    env = {
        "OPENMFA_TLS_CERT_FILE": str(files.cert_file),
        "OPENMFA_TLS_KEY_FILE": str(files.key_file),
        "OPENMFA_HTTP_REQUEST_TIMEOUT_SECONDS": "1",
    }
    Cli(home, **env)("db", "upgrade")
    with (
        ServerProcess(home, port, env, tls_ca=files.ca_file),
        socket.create_connection(("127.0.0.1", port), timeout=20) as silent,
    ):
        began = time.monotonic()
        with contextlib.suppress(ConnectionResetError):  # a reset is a hang-up too
            assert silent.recv(1) == b""  # the server hung up
        assert time.monotonic() - began < 10
