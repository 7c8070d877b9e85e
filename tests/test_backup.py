"""``openmfa backup`` and ``openmfa restore``: a copy taken while a real ``openmfa run``
accepts codes through the gateway API restores with its seeds, devices and replay state
intact; the refusals (a database in use, data without --force, a newer schema, a foreign
file, a key that does not fit) each stop with one clear error.

The end-to-end test runs the commands as subprocesses next to a running server; the refusal
matrix calls the same ``main()`` in this process (an interpreter start-up per case would cost
more than the cases).
"""

from __future__ import annotations

import base64
import re
import sqlite3
import stat
import threading
import time
from pathlib import Path

import httpx
import pyotp
import pytest

from backend.cli.main import main
from backend.crypto import key_fingerprint, load_or_create_key
from backend.store import migrations
from tests.support.process import Cli, ServerProcess, free_port, wait_for

STEP = 30


def field(output: str, pattern: str) -> str:
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"{pattern!r} not in {output!r}"
    return match.group(1)


def oath_secret(capsys: pytest.CaptureFixture[str], user: str) -> str:
    return field(run(capsys, "activation", "create", user, "--oath")[1], r"^secret:\s+(\S+)$")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``openmfa ARGS`` in this process: status, stdout, stderr."""
    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def code_at(secret: str, step: int) -> str:
    return pyotp.TOTP(secret).at(step * STEP)


def audit_rows(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM audit_events").fetchone()[0])
    finally:
        conn.close()


def last_audit(db: Path, prefix: str = "database.") -> tuple[str, str, str]:
    """The newest audit row whose action starts with ``prefix``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT action, result, detail FROM audit_events WHERE action LIKE ? "
            "ORDER BY id DESC LIMIT 1",
            (prefix + "%",),
        ).fetchone()
        return (str(row[0]), str(row[1]), str(row[2]))
    finally:
        conn.close()


def pad_audit_trail(db: Path, rows: int) -> None:
    """Old audit entries, so that the copy takes many backup steps (test set-up only)."""
    conn = sqlite3.connect(db)
    try:
        conn.executemany(
            "INSERT INTO audit_events (at, actor, user_name, source, action, result, detail, "
            "request_id) VALUES ('2026-01-01 00:00:00.000000', 'test', 'old', '', "
            "'padding', 'ok', ?, '')",
            ((f"row {i} " + "x" * 120,) for i in range(rows)),
        )
        conn.commit()
    finally:
        conn.close()


class Load:
    """Threads sending wrong codes through the gateway API (each one commits an audit row and
    a failure count) until stopped."""

    def __init__(self, url: str, token: str, user: str, threads: int = 3) -> None:
        self.url, self.token, self.user = url, token, user
        self.done = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {self.token}"}, timeout=30
        ) as http:
            while not self._stop.is_set():
                http.post("/gateway/v1/otp/verify", json={"user": self.user, "code": "000000"})
                with self._lock:
                    self.done += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def verify(url: str, token: str, user: str, code: str) -> str:
    response = httpx.post(
        url + "/gateway/v1/otp/verify",
        json={"user": user, "code": code},
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["result"])


def test_a_backup_taken_under_load_restores_codes_devices_and_replay_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, files = tmp_path / "home", tmp_path / "files"
    files.mkdir()
    port = free_port()
    cli = Cli(home)  # backup and restore run as the operator runs them: subprocesses
    monkeypatch.setenv("OPENMFA_HOME", str(home))  # the set-up and checks, in process
    assert run(capsys, "db", "upgrade")[0] == 0
    db = home / "openmfa.db"
    pad_audit_trail(db, 120_000)
    for user in ("alice", "bob", "loader"):
        assert run(capsys, "user", "add", user)[0] == 0
    alice, bob = oath_secret(capsys, "alice"), oath_secret(capsys, "bob")
    oath_secret(capsys, "loader")
    token = run(capsys, "token", "create", "vpn")[1].strip()
    backup = files / "openmfa-backup.db"

    with ServerProcess(home, port, {}) as server:
        # The next step's code (the window allows +1): a later restore must still refuse it
        # and every code before it, which only the stored replay state can decide.
        accepted_step = int(time.time() // STEP) + 1
        assert verify(server.url, token, "alice", code_at(alice, accepted_step)) == "accept"
        with Load(server.url, token, "loader") as load:
            before = audit_rows(db)
            wait_for(lambda: load.done >= 20, 30, "the load to flow before the copy starts")
            result = cli("backup", str(backup))
            during = load.done
        assert during > 20
        progress = re.findall(r"^copied (\d+) of (\d+) pages$", result.stderr, re.MULTILINE)
        total = int(progress[-1][1])
        # Steps of 1024 pages, and no restart from page one although the server committed
        # throughout: the copy is one snapshot.
        assert len(progress) == -(-total // 1024) > 3, result.stderr
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        assert last_audit(db) == (
            "database.backup",
            "ok",
            f"{backup} ({backup.stat().st_size} bytes)",
        )
        assert "users:          3" in result.stdout
        assert "devices:        3 (3 active)" in result.stdout
        assert "NOT in this backup" in result.stdout
        copied = audit_rows(backup)
        assert copied > before  # the load's commits up to the snapshot are in it

        # After the backup: a user the restore must take away again.
        assert run(capsys, "user", "add", "carol")[0] == 0
        # The database is open in the server: no restore, --force or not.
        refused = cli.fails("restore", str(backup), "--force")
        assert "open in another process" in refused
        assert last_audit(db)[:2] == ("database.restore", "database-unavailable")
        server.terminate()

    restored = cli("restore", str(backup), "--force")
    taken = field(restored.stdout, r"^taken at:\s+(\S+)$")
    assert "before-restore-" in restored.stdout
    assert audit_rows(db) == copied + 1
    assert last_audit(db) == ("database.restore", "ok", f"from {backup} (taken at {taken})")
    listed = run(capsys, "user", "list")[1]
    assert {"alice", "bob", "loader"} <= set(listed.split())
    assert "carol" not in listed
    assert "oath" in run(capsys, "user", "show", "alice")[1]

    with ServerProcess(home, port, {}) as server:
        # Seeds decrypt: bob's code for now is accepted, once.
        now = int(time.time() // STEP)
        assert verify(server.url, token, "bob", code_at(bob, now)) == "accept"
        assert verify(server.url, token, "bob", code_at(bob, now)) == "reject"
        # Replay state: alice's accepted step and the step before it stay used.
        for step in (accepted_step, accepted_step - 1):
            assert verify(server.url, token, "alice", code_at(alice, step)) == "reject"
    conn = sqlite3.connect(db)
    try:
        (last_step,) = conn.execute(
            "SELECT d.last_step FROM devices d JOIN users u ON u.id = d.user_id "
            "WHERE u.name = 'alice'"
        ).fetchone()
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert last_step == accepted_step
    assert "openmfa_backup" not in tables


# -- the refusals, in process -------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory with a migrated database, a user with an OATH token and its key."""
    path = tmp_path / "home"
    monkeypatch.setenv("OPENMFA_HOME", str(path))
    monkeypatch.delenv("OPENMFA_DATABASE_URL", raising=False)
    monkeypatch.delenv("OPENMFA_KEY_FILE", raising=False)
    assert main(["db", "upgrade"]) == 0
    assert main(["user", "add", "alice"]) == 0
    assert main(["activation", "create", "alice", "--oath"]) == 0
    return path


def test_backup_refuses_to_replace_a_file_without_force(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "b.db"
    target.write_text("precious")
    status, _, err = run(capsys, "backup", str(target))
    assert status == 1
    assert "exists; choose another name or pass --force" in err
    assert target.read_text() == "precious"
    assert run(capsys, "backup", str(target), "--force")[0] == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    status, _, err = run(capsys, "backup", str(home / "openmfa.db"), "--force")
    assert (status, "cannot be the database itself" in err) == (1, True)


def test_restore_refuses_a_database_with_data_without_force(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup = tmp_path / "b.db"
    assert run(capsys, "backup", str(backup))[0] == 0
    status, _, err = run(capsys, "restore", str(backup))
    assert status == 1
    assert "holds data; pass --force" in err
    assert [p.name for p in home.iterdir() if "before-restore" in p.name] == []


def test_restore_treats_a_file_that_is_not_sqlite_as_data(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup = tmp_path / "b.db"
    assert run(capsys, "backup", str(backup))[0] == 0
    (home / "openmfa.db").write_bytes(b"whatever this is, it is not ours to drop" * 100)
    status, _, err = run(capsys, "restore", str(backup))
    assert status == 1
    assert "holds data; pass --force" in err
    status, out, _ = run(capsys, "restore", str(backup), "--force")
    assert status == 0, out
    kept = [p for p in home.iterdir() if "before-restore" in p.name]
    assert [p.read_bytes()[:8] for p in kept] == [b"whatever"]


def test_restore_into_an_empty_home_needs_no_force(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = tmp_path / "b.db"
    assert run(capsys, "backup", str(backup))[0] == 0
    fresh = tmp_path / "fresh"
    fresh.mkdir(mode=0o700)
    (fresh / "server.key").write_bytes((home / "server.key").read_bytes())
    (fresh / "openmfa.db").touch()  # an empty file from a failed start is not data
    monkeypatch.setenv("OPENMFA_HOME", str(fresh))
    status, out, _ = run(capsys, "restore", str(backup))
    assert status == 0, out
    assert "before-restore" not in out
    assert stat.S_IMODE((fresh / "openmfa.db").stat().st_mode) == 0o600
    status, out, _ = run(capsys, "user", "list")
    assert status == 0
    assert "alice" in out


def test_restore_refuses_files_that_are_not_openmfa_backups(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    newer = tmp_path / "newer.db"
    assert run(capsys, "backup", str(newer))[0] == 0
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.commit()
    conn.close()
    db = home / "openmfa.db"
    before = audit_rows(db)
    for path, message in (
        (text, "not an SQLite database"),
        (other, "lacks OpenMFA's tables"),
        (tmp_path / "missing.db", "cannot read"),
        (newer, "comes from a newer OpenMFA"),
    ):
        status, _, err = run(capsys, "restore", str(path), "--force")
        assert status == 1, path
        assert err.startswith("openmfa: error: "), err
        assert message in err, err
    # The database stayed; each refusal is in its audit trail.
    assert audit_rows(db) == before + 4
    assert last_audit(db)[:2] == ("database.restore", "database-unavailable")
    assert [p.name for p in home.iterdir() if "before-restore" in p.name] == []


def test_a_plain_copy_of_a_stopped_database_restores_and_leaves_no_files_beside_it(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copies = tmp_path / "copies"
    copies.mkdir()
    plain = copies / "openmfa.db"
    plain.write_bytes((home / "openmfa.db").read_bytes())  # WAL mode in its header
    status, out, _ = run(capsys, "restore", str(plain), "--force")
    assert status == 0, out
    assert "not made by openmfa backup" in out
    assert sorted(p.name for p in copies.iterdir()) == ["openmfa.db"]
    # A log beside the copy holds its last commits: refused rather than silently dropped.
    Path(f"{plain}-wal").write_bytes(b"\0" * 32)
    status, _, err = run(capsys, "restore", str(plain), "--force")
    assert status == 1
    assert "exists beside the backup" in err


def test_restore_refuses_a_backup_whose_key_is_not_the_key_file(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = tmp_path / "b.db"
    assert run(capsys, "backup", str(backup))[0] == 0
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("OPENMFA_HOME", str(fresh))
    status, _, err = run(capsys, "restore", str(backup))
    assert status == 1
    assert "server.key is missing" in err
    assert "--ignore-key" in err
    assert not (fresh / "openmfa.db").exists()
    load_or_create_key(fresh / "server.key", create=True)  # another installation's key
    status, _, err = run(capsys, "restore", str(backup))
    assert status == 1
    assert "is not the key this database was encrypted with" in err
    status, out, _ = run(capsys, "restore", str(backup), "--ignore-key")
    assert status == 0, out
    status, _, err = run(capsys, "user", "list")
    assert status == 1
    assert "not the key this database was encrypted with" in err


def test_include_key_carries_the_key_to_a_new_machine(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = tmp_path / "b.db"
    status, out, _ = run(capsys, "backup", str(backup), "--include-key")
    assert status == 0
    assert "INCLUDED" in out
    key = load_or_create_key(home / "server.key", create=False)
    conn = sqlite3.connect(backup)
    stored = conn.execute("SELECT value FROM openmfa_backup WHERE key = 'server_key'").fetchone()
    conn.close()
    assert base64.b64decode(stored[0]) == key
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("OPENMFA_HOME", str(fresh))
    status, out, _ = run(capsys, "restore", str(backup))
    assert status == 0, out
    assert "written from the backup" in out
    assert stat.S_IMODE((fresh / "server.key").stat().st_mode) == 0o600
    assert key_fingerprint(load_or_create_key(fresh / "server.key", create=False)) == (
        key_fingerprint(key)
    )
    assert run(capsys, "user", "show", "alice")[0] == 0
    # Another key already in place is never overwritten.
    other = tmp_path / "other"
    monkeypatch.setenv("OPENMFA_HOME", str(other))
    load_or_create_key(other / "server.key", create=True)
    mine = (other / "server.key").read_bytes()
    status, _, err = run(capsys, "restore", str(backup))
    assert status == 1
    assert "move" in err
    assert "aside" in err
    assert (other / "server.key").read_bytes() == mine


def test_a_backup_at_an_older_schema_restores_and_asks_for_db_upgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "old"
    old.mkdir(mode=0o700)
    (old / "openmfa.db").touch(mode=0o600)
    migrations.upgrade(f"sqlite+aiosqlite:///{old / 'openmfa.db'}", "0007")
    monkeypatch.setenv("OPENMFA_HOME", str(old))
    backup = tmp_path / "b.db"
    status, out, _ = run(capsys, "backup", str(backup))
    assert status == 0
    assert "schema:         0007" in out
    assert "none needed yet" in out
    monkeypatch.setenv("OPENMFA_HOME", str(tmp_path / "new"))
    status, out, _ = run(capsys, "restore", str(backup))
    assert status == 0, out
    assert "run `openmfa db upgrade`" in out
    assert run(capsys, "db", "upgrade")[0] == 0
    assert run(capsys, "user", "list")[0] == 0


def test_postgresql_gets_the_pg_dump_command_with_the_password_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMFA_HOME", str(tmp_path))
    monkeypatch.setenv(
        "OPENMFA_DATABASE_URL", "postgresql+asyncpg://openmfa:s3cret@db.example.com:5432/openmfa"
    )
    load_or_create_key(tmp_path / "server.key", create=True)
    status, out, err = run(capsys, "backup", str(tmp_path / "dump"))
    assert status == 1
    assert (
        f"pg_dump --format=custom --file={tmp_path / 'dump'} "
        "'postgresql://openmfa:***@db.example.com:5432/openmfa'" in out
    )
    assert "fingerprint" in out
    assert "server_key_id" in out
    assert "use pg_dump" in err
    status, out, err = run(capsys, "restore", str(tmp_path / "dump"))
    assert status == 1
    assert "pg_restore --clean --if-exists --no-owner" in out
    assert "openmfa db upgrade" in out
    assert "s3cret" not in out + err


def test_pg_dump_gets_every_host_of_a_multi_host_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMFA_HOME", str(tmp_path))
    monkeypatch.setenv("OPENMFA_DATABASE_URL", "postgresql://openmfa:s3cret@pg1,pg2:5433/openmfa")
    load_or_create_key(tmp_path / "server.key", create=True)
    status, out, err = run(capsys, "backup", str(tmp_path / "dump"))
    assert status == 1
    # libpq's form, which pg_dump takes; read-write: the dump is taken from the primary.
    hosts = "pg1:5432,pg2:5433"
    assert f"'postgresql://openmfa:***@{hosts}/openmfa?target_session_attrs=read-write'" in out
    assert "s3cret" not in out + err
