"""``openmfa activation create NAME --privacyidea-app`` as an operator runs it: a real
subprocess, the QR code read back with ``zbarimg`` as a phone camera would, then parsed and
rolled out by the test client of the privacyIDEA Authenticator."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from backend.services.pipush import ENDPOINT_PATH
from tests.support.process import Cli

needs_zbarimg = pytest.mark.skipif(
    shutil.which("zbarimg") is None, reason="zbarimg is needed (apt-get install zbar-tools)"
)


def field(output: str, pattern: str) -> str:
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"{pattern!r} not in {output!r}"
    return match.group(1)


@needs_zbarimg
def test_activation_create_prints_and_draws_the_privacyidea_qr_code(tmp_path: Path) -> None:
    # Upper case and the default port: the QR carries the canonical form the app prints back.
    cli = Cli(tmp_path, OPENMFA_PUBLIC_URL="https://MFA.Example.org:443")
    cli("db", "upgrade")
    cli("user", "add", "alice")
    png = tmp_path / "alice-pi.png"
    created = cli("activation", "create", "alice", "--privacyidea-app", "--qr-png", str(png))
    uri = field(created.stdout, r"^uri:\s+(\S+)$")
    device_id = field(created.stdout, r"^privacyIDEA Authenticator token (dev_\S+) for alice$")
    serial = field(created.stdout, r"^serial:\s+(\S+)$")
    assert "open the app" in created.stdout
    assert "--oath" in created.stdout  # where offline codes for the same app come from
    scanned = subprocess.run(
        ["zbarimg", "-q", "--raw", str(png)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert scanned == uri
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc, parts.path) == ("otpauth", "pipush", "/alice")
    params = parse_qs(parts.query)
    assert params["url"] == ["https://mfa.example.org" + ENDPOINT_PATH]
    assert params["serial"] == [serial]
    assert params["v"] == ["1"]
    assert params["sslverify"] == ["1"]
    assert params["poll_only"] == ["True"]
    assert re.fullmatch(r"[0-9a-f]{40}", params["enrollment_credential"][0])

    with sqlite3.connect(tmp_path / "openmfa.db") as db:
        state, kind = db.execute(
            "SELECT state, kind FROM devices WHERE id = ?", (device_id,)
        ).fetchone()
        stored = [row[0] for row in db.execute("SELECT code_hash FROM activation_codes")]
    assert (state, kind) == ("pending", "pipush")
    assert params["enrollment_credential"][0] not in stored  # only its hash is kept

    ttl = cli("activation", "create", "alice", "--privacyidea-app", "--ttl", "2m")
    assert parse_qs(urlsplit(field(ttl.stdout, r"^uri:\s+(\S+)$")).query)["ttl"] == ["2"]


def test_the_privacyidea_app_needs_an_https_public_url(tmp_path: Path) -> None:
    cli = Cli(tmp_path, OPENMFA_PUBLIC_URL="http://127.0.0.1:8080")
    cli("db", "upgrade")
    cli("user", "add", "bob")
    error = cli.fails("activation", "create", "bob", "--privacyidea-app")
    assert "needs public_url to be the server's https:// address" in error
    with sqlite3.connect(tmp_path / "openmfa.db") as db:
        assert db.execute("SELECT count(*) FROM devices").fetchone() == (0,)
    usage = cli.fails("activation", "create", "bob", "--privacyidea-app", "--oath", status=2)
    assert "not allowed with argument" in usage
