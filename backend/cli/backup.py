"""``openmfa backup FILE`` and ``openmfa restore FILE`` (docs/operations.md, "Backups and
restore").

The server key is not in a backup unless ``--include-key`` is given. Seeds and RADIUS secrets
in the database are encrypted with it, so a backup that carries its key is as secret as the
key itself, and database backups tend to travel to places more people can read. The key never
changes: backing it up once, somewhere else, is the safer default. Both commands compare the
key file with the fingerprint the database records and say plainly when they differ.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import secrets
import shlex
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend import __version__
from backend.cli.output import clean
from backend.errors import BadRequest, Conflict, DatabaseError, OpenMFAError, ServerKeyError

if TYPE_CHECKING:
    from backend.config import Settings
    from backend.store.backup import Contents

MIB = 1024 * 1024
#: For the operator to run in psql: the key fingerprint the database records.
PG_KEY_QUERY = "SELECT value FROM meta WHERE key = 'server_key_id';"


class NotSupported(BadRequest):
    """A set-up the command cannot copy (PostgreSQL, an in-memory database): it says what to
    use instead. A command's answer only, never the API's, so no problem type of its own."""

    title = "This command does not handle this set-up"


def add_parser(groups: Any) -> None:
    """Register ``openmfa backup`` and ``openmfa restore`` on the top-level subcommands."""
    backup = groups.add_parser(
        "backup",
        help="a consistent copy of the database, taken while the server runs",
        description="Copy the SQLite database into FILE (mode 0600) while the server keeps "
        "running: a consistent snapshot through SQLite's backup API. The server key is not "
        "included unless --include-key; keep a copy of the key file elsewhere. For "
        "PostgreSQL it prints the pg_dump command to use instead and exits with status 1.",
    )
    backup.add_argument("file", type=Path, help="the backup file to write")
    backup.add_argument("--force", action="store_true", help="replace FILE if it exists")
    backup.add_argument(
        "--include-key",
        action="store_true",
        help="store the server key in FILE too: then FILE alone decrypts every seed, so keep "
        "it as secret as the key",
    )
    backup.set_defaults(handler=None, settings_handler=backup_command)

    restore = groups.add_parser(
        "restore",
        help="put a backup in place of the database (server stopped)",
        description="Replace the database with a backup made by `openmfa backup`. Refused "
        "while any process has the database open, for a database that holds data unless "
        "--force (the old one is kept beside it), for a backup from a newer version, and for "
        "a backup whose server key does not match the key file unless --ignore-key.",
    )
    restore.add_argument("file", type=Path, help="the backup file to restore")
    restore.add_argument("--force", action="store_true", help="replace a database that holds data")
    restore.add_argument(
        "--ignore-key",
        action="store_true",
        help="restore although the key file is missing or does not match the backup (put "
        "the right key in place before starting the server)",
    )
    restore.set_defaults(handler=None, settings_handler=restore_command)


# -- backup ----------------------------------------------------------------------------------


def backup_command(settings: Settings, args: argparse.Namespace) -> int:
    """``openmfa backup FILE``; audited in the database it copies."""
    return _audited(settings, "database.backup", lambda: _backup(settings, args))


def restore_command(settings: Settings, args: argparse.Namespace) -> int:
    """``openmfa restore FILE``; audited in the restored database (a refusal: in the one
    that stays)."""
    return _audited(settings, "database.restore", lambda: _restore(settings, args))


def _audited(settings: Settings, action: str, command: Callable[[], str]) -> int:
    try:
        detail = command()
    except NotSupported:
        raise  # PostgreSQL: nothing was done, and the database may be out of reach
    except OpenMFAError as exc:
        _audit(settings, action, exc.type, clean(exc))
        raise
    _audit(settings, action, "ok", detail)
    return 0


def _audit(settings: Settings, action: str, result: str, detail: str) -> None:
    """One audit row, when the database is one this version runs on. A missing database or
    one at another schema (an old backup just restored) has no audit trail to write to."""
    import asyncio
    import getpass

    from sqlalchemy.exc import SQLAlchemyError

    from backend.services import open_database
    from backend.services.audit import AuditLog
    from backend.services.context import Actor
    from backend.store.tables import now

    async def record() -> None:
        db = await open_database(settings)
        try:
            actor = Actor(f"cli:{getpass.getuser()}", "local")
            await AuditLog(db, now).record(actor, action, result, detail=detail)
        finally:
            await db.dispose()

    # Not a database this version can open (missing, another schema, not SQLite at all):
    # there is no audit trail to write to, and the command's own outcome stands.
    with contextlib.suppress(OpenMFAError, SQLAlchemyError, sqlite3.Error, OSError):
        asyncio.run(record())


def _backup(settings: Settings, args: argparse.Namespace) -> str:
    from backend.store import backup as store

    if not settings.uses_sqlite:
        print(_pg_dump_text(settings, args.file))
        raise NotSupported(
            "openmfa backup copies SQLite databases only; use pg_dump as shown above"
        )
    source = _sqlite_path(settings)
    if not source.exists():
        raise DatabaseError(f"the database {source} does not exist; there is nothing to back up")
    target: Path = args.file
    if target.resolve() == source.resolve():
        raise Conflict("the backup file cannot be the database itself")
    if target.exists() and not args.force:
        raise Conflict(f"{target} exists; choose another name or pass --force to replace it")
    if not target.parent.is_dir():
        raise DatabaseError(f"the directory {target.parent} does not exist")
    key = _read_key(settings.resolved_key_file) if args.include_key else None

    temporary = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        store.copy_online(source, temporary, _progress(), settings.sqlite_busy_timeout_ms)
        contents = store.read_contents(temporary)
        marker = {
            "format": store.FORMAT,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "openmfa_version": __version__,
            "schema_revision": contents.revision or "",
            "source": str(source),
        }
        if key is not None:
            _check_included_key(key, contents, settings.resolved_key_file)
            marker["server_key"] = base64.b64encode(key).decode("ascii")
        store.write_marker(temporary, marker)
        store.finish_copy(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    size = target.stat().st_size
    print(
        f"backup written: {target} ({size / MIB:.1f} MiB, mode 0600)\n"
        f"schema:         {contents.revision}\n"
        f"users:          {contents.users}\n"
        f"devices:        {contents.devices} ({contents.active_devices} active)"
    )
    print(_key_note(settings, contents, included=key is not None))
    return f"{target} ({size} bytes{', with the server key' if key is not None else ''})"


def _progress() -> Any:
    """Progress lines on stderr for databases that take more than one step to copy."""
    from backend.store.backup import STEP_PAGES

    def report(copied: int, total: int) -> None:
        if total > STEP_PAGES:
            print(f"copied {copied} of {total} pages", file=sys.stderr, flush=True)

    return report


def _check_included_key(key: bytes, contents: Contents, path: Path) -> None:
    from backend.crypto import key_fingerprint

    if contents.key_fingerprint is not None and key_fingerprint(key) != contents.key_fingerprint:
        raise ServerKeyError(
            f"the server key {path} is not the key this database was encrypted with; "
            "--include-key would store a useless key (no backup written)"
        )


def _key_note(settings: Settings, contents: Contents, included: bool) -> str:
    path = settings.resolved_key_file
    recorded = contents.key_fingerprint
    if recorded is None:
        return "server key:     none needed yet (no secrets stored)"
    if included:
        return (
            f"server key:     INCLUDED (fingerprint {recorded}). This file alone decrypts "
            "every seed and RADIUS secret: keep it as secret as the key."
        )
    state = _key_state(path, recorded)
    if state == "ok":
        return (
            f"server key:     NOT in this backup. Keep a copy of {path} (fingerprint "
            f"{recorded}) apart from the backups; without it the seeds and RADIUS secrets in "
            "this backup are unreadable. It never changes: one copy is enough."
        )
    return (
        f"WARNING: {state}. This backup needs the key with fingerprint {recorded}; find it "
        "and keep it with your backups' key, or the seeds in this backup are unreadable."
    )


def _key_state(path: Path, recorded: str) -> str:
    """ "ok", or what is wrong with the key file, compared with the recorded fingerprint."""
    from backend.crypto import key_fingerprint, load_or_create_key

    if not path.exists():
        return f"the server key {path} is missing"
    try:
        key = load_or_create_key(path, create=False)
    except ServerKeyError as exc:
        return str(exc.detail)
    if key_fingerprint(key) != recorded:
        return f"the server key {path} is not the key this database was encrypted with"
    return "ok"


def _read_key(path: Path) -> bytes:
    from backend.crypto import load_or_create_key

    if not path.exists():
        raise ServerKeyError(f"the server key {path} is missing; --include-key has no key to store")
    return load_or_create_key(path, create=False)


# -- restore ---------------------------------------------------------------------------------


def _restore(settings: Settings, args: argparse.Namespace) -> str:
    from backend.store import backup as store

    if not settings.uses_sqlite:
        print(_pg_restore_text(settings, args.file))
        raise NotSupported(
            "openmfa restore handles SQLite databases only; use pg_restore as shown above"
        )
    source: Path = args.file
    target = _sqlite_path(settings)
    if source.exists() and target.exists() and source.resolve() == target.resolve():
        raise Conflict("the backup file is the database itself")
    contents = store.read_contents(source)
    known = _known_revisions()
    if contents.revision not in known:
        raise store.NotABackup(
            f"{source} is at schema {contents.revision}, which this version ({__version__}, "
            f"schema {known[-1]}) does not know: it comes from a newer OpenMFA; restore it "
            "with that version or a later one"
        )
    write_key = _restore_key_plan(settings.resolved_key_file, contents, args.ignore_key)

    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not target.parent.is_dir():
        raise DatabaseError(f"the database directory {target.parent} does not exist")
    keep: Path | None = None
    with store.exclusive(target) as holder:
        replaced = store.has_data(target, holder)
        if replaced and not args.force:
            raise Conflict(
                f"the database {target} holds data; pass --force to replace it (it is kept "
                "beside it, renamed)"
            )
        temporary = store.prepare_restore(source, target.parent)
        try:
            if write_key is not None:
                _write_key(settings.resolved_key_file, write_key)
            keep = _kept_name(target) if replaced else None
            store.put_in_place(holder, temporary, target, keep)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    taken = contents.marker.get("created_at", "unknown (not made by openmfa backup)")
    print(
        f"restored:       {source} -> {target}\n"
        f"taken at:       {taken}\n"
        f"schema:         {contents.revision}\n"
        f"users:          {contents.users}\n"
        f"devices:        {contents.devices} ({contents.active_devices} active)"
    )
    if write_key is not None:
        print(f"server key:     written from the backup to {settings.resolved_key_file}")
    if keep is not None:
        print(
            f"replaced:       the old database is kept as {keep}; delete it once the restore "
            "is confirmed (it holds secrets too)"
        )
    if contents.revision != known[-1]:
        print(
            f"next:           the backup's schema is older than this version's ({known[-1]}): "
            "run `openmfa db upgrade` before `openmfa run`"
        )
    return f"from {source} (taken at {taken})"


def _kept_name(target: Path) -> Path:
    """``openmfa.db.before-restore-<UTC time>``, never the name of an earlier one."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = target.with_name(f"{target.name}.before-restore-{stamp}")
    while kept.exists():  # two restores within a second
        kept = target.with_name(f"{target.name}.before-restore-{stamp}-{secrets.token_hex(2)}")
    return kept


def _restore_key_plan(path: Path, contents: Contents, ignore_key: bool) -> bytes | None:
    """The key to write from the backup, if any; raises when the key file would not fit."""
    from backend.crypto import key_fingerprint

    recorded = contents.key_fingerprint
    if recorded is None:
        return None
    included = contents.included_key
    if included is not None:
        key = base64.b64decode(included, validate=True)
        if key_fingerprint(key) != recorded:
            raise ServerKeyError("the key stored in the backup does not match its database")
        if not path.exists():
            return key
    state = _key_state(path, recorded)
    if state == "ok" or ignore_key:
        return None
    hint = (
        f" (the backup holds its own key: move {path} aside to have it written)"
        if included is not None
        else ""
    )
    raise ServerKeyError(
        f"{state}: the backup's seeds and RADIUS secrets need the key with fingerprint "
        f"{recorded}{hint}. Put the right key file in place, or pass --ignore-key to restore "
        "anyway (the server will not start until the key matches)"
    )


def _write_key(path: Path, key: bytes) -> None:
    """Write ``key`` as a new key file (mode 0600); never replaces an existing file."""
    from backend.crypto import KEY_FILE_HEADER

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(KEY_FILE_HEADER + base64.b64encode(key).decode("ascii") + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)  # fails if a key file appeared meanwhile: never overwrite
    finally:
        temporary.unlink(missing_ok=True)


def _known_revisions() -> list[str]:
    """Every schema revision this version can upgrade from, oldest first (head last)."""
    from alembic.script import ScriptDirectory

    from backend.store import migrations

    script = ScriptDirectory.from_config(migrations.alembic_config(""))
    return [rev.revision for rev in script.walk_revisions()][::-1]


# -- shared ----------------------------------------------------------------------------------


def _sqlite_path(settings: Settings) -> Path:
    from sqlalchemy.engine import make_url

    database = make_url(settings.resolved_database_url).database
    if not database or database == ":memory:":
        raise NotSupported("the database is in memory; there is no file to back up or restore")
    return Path(database)


def _pg_url(settings: Settings) -> str:
    from backend.store.urls import libpq_url

    # libpq's own form: pg_dump knows neither SQLAlchemy's "+asyncpg" suffix nor its
    # host=h:p query hosts; with several hosts, target_session_attrs picks the primary.
    return libpq_url(settings.resolved_database_url, hide_password=True)


def _pg_key_text(settings: Settings) -> str:
    from backend.crypto import key_fingerprint, load_or_create_key

    path = settings.resolved_key_file
    try:
        fingerprint = key_fingerprint(load_or_create_key(path, create=False))
    except ServerKeyError as exc:
        return (
            f"WARNING: {exc.detail}. The dump's seeds and RADIUS secrets are unreadable "
            "without the key the database records (meta row 'server_key_id')."
        )
    return (
        f"The server key is not in the database: keep a copy of {path} (fingerprint "
        f"{fingerprint}) apart from the dumps. Check it is the database's key with\n"
        f"  {PG_KEY_QUERY}   -- must print the same"
    )


def _pg_dump_text(settings: Settings, file: Path) -> str:
    return (
        "openmfa backup copies SQLite databases only. For PostgreSQL, use pg_dump (a "
        "consistent snapshot while the server runs):\n\n"
        f"  pg_dump --format=custom --file={shlex.quote(str(file))} "
        f"{shlex.quote(_pg_url(settings))}\n\n"
        "(*** is the password: give it through ~/.pgpass or PGPASSWORD, not on the command "
        "line.)\n" + _pg_key_text(settings)
    )


def _pg_restore_text(settings: Settings, file: Path) -> str:
    return (
        "openmfa restore handles SQLite databases only. For PostgreSQL, stop the server and "
        "use pg_restore, then upgrade the schema:\n\n"
        f"  pg_restore --clean --if-exists --no-owner --dbname={shlex.quote(_pg_url(settings))} "
        f"{shlex.quote(str(file))}\n"
        "  openmfa db upgrade\n\n"
        "(*** is the password: give it through ~/.pgpass or PGPASSWORD.)\n" + _pg_key_text(settings)
    )
