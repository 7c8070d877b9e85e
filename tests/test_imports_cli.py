"""``openmfa user import`` and ``openmfa token import`` (in process, on a fresh data directory),
and an imported 60 s hardware token's codes (from ``oathtool``) through the gateway API.

All or nothing: a dry run writes nothing, one bad row refuses the file and nothing is written,
a secret key never reaches the output or the audit trail.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest

from backend.domain.stepup import ADMINISTRATOR, SessionProof
from backend.errors import FactorChangeRefused, ImportRefused, UnknownUser
from backend.services import Services
from backend.services.context import Actor
from tests.conftest import openmfa
from tests.support.api import ApiHarness
from tests.support.clock import FakeClock

ADMIN = Actor("test:admin")
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
OTHER = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
TOKEN_HEAD = "upn,serial number,secret key,time interval,manufacturer,model\n"
needs_oathtool = pytest.mark.skipif(shutil.which("oathtool") is None, reason="needs oathtool")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    openmfa(home, "db", "upgrade")
    return home


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def db_rows(home: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(home / "openmfa.db") as conn:
        return conn.execute(sql).fetchall()


def test_user_import_dry_run_writes_nothing_then_imports(home: Path, tmp_path: Path) -> None:
    users = write(
        tmp_path / "users.csv",
        "name,email,display_name,phone,admin\n"
        "alice,alice@example.com,Alice Liddell,+44 20 7946 0000,yes\n"
        "bob,bob@example.com,Bob,,no\n",
    )
    dry = openmfa(home, "user", "import", str(users), "--dry-run")
    assert "2 user(s) would be created (dry run: nothing written)" in dry.stdout
    assert db_rows(home, "SELECT name FROM users") == []
    done = openmfa(home, "user", "import", str(users))
    assert "2 user(s) created" in done.stdout
    assert db_rows(home, "SELECT name, email, phone, is_admin FROM users ORDER BY name") == [
        ("alice", "alice@example.com", "+44 20 7946 0000", 1),
        ("bob", "bob@example.com", "", 0),
    ]
    audit = db_rows(home, "SELECT action, user_name, detail FROM audit_events ORDER BY id")
    assert ("user.add", "alice", "import line 2 admin") in audit
    assert ("user.import", "", "2 created, 0 skipped (existing)") in audit
    # Again: both exist, which refuses the file unless asked to skip them.
    again = openmfa(home, "user", "import", str(users), check=False)
    assert again.returncode == 1
    assert "line 2: a user named alice exists" in again.stderr
    assert "line 3: a user named bob exists" in again.stderr
    skipped = openmfa(home, "user", "import", str(users), "--skip-existing", "--json")
    assert json.loads(skipped.stdout) == {"written": True, "users": [], "skipped": ["alice", "bob"]}


def test_one_bad_user_row_refuses_the_whole_file(home: Path, tmp_path: Path) -> None:
    users = write(
        tmp_path / "users.csv",
        "name,email\ncarol,carol@example.com\nbad name,x@example.com\ndave,dave@\n",
    )
    result = openmfa(home, "user", "import", str(users), check=False)
    assert result.returncode == 1
    assert "line 3: user names are 1-128 characters" in result.stderr
    assert "line 4: the e-mail address is not valid" in result.stderr
    assert "2 problem(s); nothing was written" in result.stderr
    assert db_rows(home, "SELECT name FROM users") == []
    refused = db_rows(home, "SELECT result FROM audit_events WHERE action = 'user.import'")
    assert refused == [("refused",)]


def test_user_import_with_invitations(home: Path, tmp_path: Path) -> None:
    users = write(tmp_path / "users.csv", "name,email\nerin,erin@example.com\n")
    result = openmfa(home, "user", "import", str(users), "--invite")
    assert "/portal/invite/" in result.stdout
    assert db_rows(home, "SELECT count(*) FROM invitations") == [(1,)]


def test_token_import_dry_run_then_import_with_serial_shown(home: Path, tmp_path: Path) -> None:
    openmfa(home, "user", "add", "alice", "--email", "Alice@Example.com")
    openmfa(home, "user", "add", "bob")
    tokens = write(
        tmp_path / "tokens.csv",
        TOKEN_HEAD
        + f"alice@example.com,C302-0001,{SECRET},60,Token2,C302\n"
        + f"bob,C302-0002,{OTHER.lower()},30,Token2,C302\n",
    )
    dry = openmfa(home, "token", "import", str(tokens), "--dry-run")
    assert "2 token(s) would be created (dry run: nothing written)" in dry.stdout
    assert db_rows(home, "SELECT count(*) FROM devices") == [(0,)]
    done = openmfa(home, "token", "import", str(tokens))
    assert "2 token(s) created" in done.stdout
    assert db_rows(
        home, "SELECT kind, state, serial, period, name FROM devices ORDER BY serial"
    ) == [
        ("oath", "active", "C302-0001", 60, "Token2 C302 (serial C302-0001)"),
        ("oath", "active", "C302-0002", 30, "Token2 C302 (serial C302-0002)"),
    ]
    shown = openmfa(home, "user", "show", "alice").stdout
    assert "Token2 C302 (serial C302-0001)" in shown
    # Renamed by an administrator, the device still shows its serial.
    device_id = str(db_rows(home, "SELECT id FROM devices WHERE serial = 'C302-0001'")[0][0])
    with sqlite3.connect(home / "openmfa.db") as conn:
        conn.execute("UPDATE devices SET name = 'Alice fob' WHERE id = ?", (device_id,))
    assert "Alice fob (serial C302-0001)" in openmfa(home, "user", "show", "alice").stdout
    # The seed is sealed: neither form of it is stored or printed.
    for (blob,) in db_rows(home, "SELECT seed_enc FROM devices"):
        assert isinstance(blob, bytes)
        assert SECRET.encode() not in blob
    everything = dry.stdout + dry.stderr + done.stdout + done.stderr + shown
    audit = json.dumps(db_rows(home, "SELECT action, user_name, detail FROM audit_events"))
    for secret in (SECRET, OTHER, OTHER.lower()):
        assert secret not in everything
        assert secret not in audit
    assert audit.count("device.import") == 2
    assert "token.import" in audit
    # The same serials again: refused, nothing more written.
    again = openmfa(home, "token", "import", str(tokens), check=False)
    assert again.returncode == 1
    assert "line 2: the serial number C302-0001 is in use" in again.stderr
    assert db_rows(home, "SELECT count(*) FROM devices") == [(2,)]


def test_one_bad_token_row_refuses_all_without_echoing_secrets(home: Path, tmp_path: Path) -> None:
    openmfa(home, "user", "add", "alice")
    bad_secret = "JBSWY3DPEHPK3PXP0189"
    tokens = write(
        tmp_path / "tokens.csv",
        TOKEN_HEAD
        + f"alice,T-1,{SECRET},30,Token2,C302\n"
        + f"alice,T-2,{bad_secret},30,Token2,C302\n"
        + f"nobody,T-3,{OTHER},30,Token2,C302\n"
        + f"alice,T-4,{OTHER},90,Token2,C302\n",
    )
    result = openmfa(home, "token", "import", str(tokens), check=False)
    assert result.returncode == 1
    assert "line 3: the secret key is not base32" in result.stderr
    assert "line 4: no user is named nobody" in result.stderr
    assert "line 5: the time interval must be 30 or 60" in result.stderr
    for secret in (SECRET, bad_secret, OTHER):
        assert secret not in result.stdout + result.stderr
    assert db_rows(home, "SELECT count(*) FROM devices") == [(0,)]
    audit = json.dumps(db_rows(home, "SELECT action, result, detail FROM audit_events"))
    assert "token.import" in audit
    assert "refused" in audit
    assert bad_secret not in audit


def test_an_ambiguous_email_upn_is_refused(home: Path, tmp_path: Path) -> None:
    openmfa(home, "user", "add", "a1", "--email", "shared@example.com")
    openmfa(home, "user", "add", "a2", "--email", "shared@example.com")
    tokens = write(tmp_path / "t.csv", TOKEN_HEAD + f"shared@example.com,S1,{SECRET},30,,\n")
    result = openmfa(home, "token", "import", str(tokens), check=False)
    assert "line 2: the upn shared@example.com is the e-mail address of several users" in (
        result.stderr
    )


def test_a_file_too_large_is_refused_unread(home: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    big.write_bytes(b"name\n" + b"a" * (1024 * 1024 + 10))
    result = openmfa(home, "user", "import", str(big), check=False)
    assert result.returncode == 1
    assert "larger than 1048576 bytes" in result.stderr


# -- the services: one transaction, the guard -----------------------------------------------


@pytest.mark.anyio
async def test_import_is_one_transaction_and_goes_through_the_factor_guard(
    services: Services,
) -> None:
    await services.users.add(ADMIN, "alice")
    data = (TOKEN_HEAD + f"alice,G-1,{SECRET},30,,\n").encode()
    user = await services.users.get("alice")
    # A portal session of the user with no grant may not add a factor: refused, audited.
    with pytest.raises(FactorChangeRefused):
        await services.imports.import_tokens(ADMIN, SessionProof(user.id), data)
    assert await services.devices.list_for_user("alice") == []
    refusals = await services.audit.query(action="factor.refuse")
    assert refusals
    plan = await services.imports.import_tokens(ADMIN, ADMINISTRATOR, data)
    assert plan.written
    assert [d.kind for d in await services.devices.list_for_user("alice")] == ["oath"]
    with pytest.raises(ImportRefused) as refused:
        await services.imports.import_users(ADMIN, b"name\nnew-one\nalice\n", skip_existing=False)
    assert refused.value.problems == (
        "line 3: a user named alice exists (--skip-existing skips it)",
    )
    with pytest.raises(UnknownUser):
        await services.users.get("new-one")


# -- an imported 60 s token through the gateway API -----------------------------------------


def _oathtool(secret: str, at: datetime, period: int) -> str:
    moment = at.strftime("%Y-%m-%d %H:%M:%S UTC")
    result = subprocess.run(
        ["oathtool", "--totp", "-s", str(period), "-N", moment, "-b", secret],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def _moment_where_they_differ(secret: str, start: datetime) -> datetime:
    """A moment whose 30 s code is none of the codes a 60 s token accepts around it."""
    at = start.replace(second=10, microsecond=0)
    sixty, thirty = pyotp.TOTP(secret, interval=60), pyotp.TOTP(secret, interval=30)
    while True:
        step = int(at.timestamp()) // 60
        window = {sixty.generate_otp(s) for s in (step - 1, step, step + 1)}
        if thirty.at(at) not in window:
            return at
        at += timedelta(minutes=5)


@needs_oathtool
def test_a_60_second_token_s_code_is_accepted_and_its_30_second_code_refused(
    api: ApiHarness, clock: FakeClock
) -> None:
    api.add_user("helga")
    api.set_policy("otp_max_failures", 20, user="helga")
    data = (TOKEN_HEAD + f"helga@example.com,HW-60,{SECRET},60,Feitian,c200\n").encode()
    api.run(api.services.imports.import_tokens(ADMIN, ADMINISTRATOR, data))
    clock.now = _moment_where_they_differ(SECRET, datetime.now(UTC) + timedelta(hours=1))
    thirty = _oathtool(SECRET, clock.now, 30)
    refused = api.gateway.post("/gateway/v1/otp/verify", json={"user": "helga", "code": thirty})
    assert refused.json()["reason"] == "wrong-code", refused.text
    sixty = _oathtool(SECRET, clock.now, 60)
    assert sixty != thirty
    accepted = api.gateway.post("/gateway/v1/otp/verify", json={"user": "helga", "code": sixty})
    assert accepted.json() == {"result": "accept", "reason": "ok", "user": "helga"}
    # Replay protection counts 60 s steps: the same code later in its minute is a replay.
    clock.advance(30)
    if _oathtool(SECRET, clock.now, 60) == sixty:
        again = api.gateway.post("/gateway/v1/otp/verify", json={"user": "helga", "code": sixty})
        assert again.json()["reason"] == "replayed"
    clock.advance(60)
    later = _oathtool(SECRET, clock.now, 60)
    assert (
        api.gateway.post("/gateway/v1/otp/verify", json={"user": "helga", "code": later}).json()[
            "result"
        ]
        == "accept"
    )
