"""Online copies of the SQLite database, and putting one back in place.

The copy uses SQLite's backup API on a connection that holds one read transaction from the
first page to the last. In WAL mode a reader never blocks writers, so the server keeps
committing while the pages are copied, and the copy is the snapshot the transaction began
with. Without that transaction each step would start a new one and every commit in between
would restart the copy from page one: measured here, a 20 MB database copied under a
500-commits/s writer took 338 steps instead of 20.

A backup file is an ordinary SQLite database (rollback journal, so it is one self-contained
file) with one extra table, ``openmfa_backup``, saying what it is: when it was taken, by which
version, at which schema, and the fingerprint of the server key its secrets need. Restoring
drops that table again.

This module uses blocking ``sqlite3`` connections: it runs in the ``openmfa backup`` and
``openmfa restore`` processes, never inside the server's event loop (see DESIGN.md).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backend.errors import DatabaseError
from backend.files import fsync, fsync_directory

MARKER_TABLE = "openmfa_backup"  # a constant: the f-strings below interpolate only it
FORMAT = "1"
KEY_ID = "server_key_id"  # the meta row the services write (backend/services/__init__.py)
SQLITE_MAGIC = b"SQLite format 3\x00"
#: Pages copied per step (4 MiB at SQLite's default page size): progress is reported per step.
STEP_PAGES = 1024

Progress = Callable[[int, int], None]


class NotABackup(DatabaseError):
    """The file is not an OpenMFA database or backup."""


class DatabaseInUse(DatabaseError):
    """Another process has the database open."""


@dataclass(frozen=True)
class Contents:
    """What a database or backup file holds, as far as a restore needs to know."""

    revision: str | None
    key_fingerprint: str | None
    users: int
    devices: int
    active_devices: int
    marker: dict[str, str] = field(default_factory=dict)

    @property
    def included_key(self) -> str | None:
        """The server key (base64) stored with ``--include-key``, if it was."""
        return self.marker.get("server_key")


def _connect(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    # mode=rw: never create a database where none is (a typo must not make an empty file).
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None, timeout=timeout)
    return conn


def _open_backup(path: Path) -> sqlite3.Connection:
    # immutable: no locks, and no -shm/-wal files made beside the backup (a plain copy of a
    # WAL database would otherwise get them in the backup's folder).
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, isolation_level=None)


def copy_online(
    source: Path,
    target: Path,
    progress: Progress | None = None,
    busy_timeout_ms: int = 5000,
    step_pages: int = STEP_PAGES,
) -> None:
    """Copy the live database ``source`` into the new file ``target`` (a consistent snapshot).

    ``target`` must already exist (empty, with the mode it should keep). ``progress`` gets
    (pages copied, pages in all) after each step.
    """
    src = _connect(source, busy_timeout_ms / 1000)
    try:
        dst = sqlite3.connect(target, isolation_level=None)
        try:
            # One read transaction for the whole copy: the snapshot (see the module doc).
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()

            def report(_status: int, remaining: int, total: int) -> None:
                if progress is not None:
                    progress(total - remaining, total)

            src.backup(dst, pages=step_pages, progress=report, sleep=0)
            src.execute("COMMIT")
            # The copy inherits WAL mode from the source; a backup is better one file.
            dst.execute("PRAGMA journal_mode = DELETE").fetchone()
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise DatabaseError(f"the copy of {source} failed: {exc}") from exc
    finally:
        src.close()


def write_marker(path: Path, values: dict[str, str]) -> None:
    """Record what ``path`` is (the ``openmfa_backup`` table), then check the whole file."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"CREATE TABLE {MARKER_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.executemany(
            f"INSERT INTO {MARKER_TABLE} VALUES (?, ?)",  # noqa: S608
            sorted(values.items()),
        )
        result = conn.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise DatabaseError(f"the copy {path} fails SQLite's check: {result}")
    finally:
        conn.close()


def read_contents(path: Path) -> Contents:
    """What ``path`` holds; :class:`NotABackup` unless it is an OpenMFA database or backup."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise NotABackup(f"cannot read {path}: {exc.strerror}") from exc
    if magic != SQLITE_MAGIC:
        raise NotABackup(f"{path} is not an OpenMFA backup (not an SQLite database)")
    log = Path(f"{path}-wal")
    if log.exists() and log.stat().st_size > 0:
        # Read as immutable (below), the file's own log would be ignored, and with it the
        # copy's last commits.
        raise NotABackup(
            f"{log} exists beside the backup: its last commits are in that log. Open the copy "
            "once with sqlite3 (which folds the log in), or take the backup with openmfa backup"
        )
    conn = _open_backup(path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not {"alembic_version", "meta", "users", "devices"} <= tables:
            raise NotABackup(f"{path} is not an OpenMFA backup (it lacks OpenMFA's tables)")
        revision_row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        key_row = conn.execute("SELECT value FROM meta WHERE key = ?", (KEY_ID,)).fetchone()
        marker: dict[str, str] = {}
        if MARKER_TABLE in tables:
            query = f"SELECT key, value FROM {MARKER_TABLE}"  # noqa: S608
            marker = dict(conn.execute(query).fetchall())
        users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        devices, active = conn.execute(
            "SELECT count(*), coalesce(sum(state = 'active'), 0) FROM devices "
            "WHERE state != 'removed'"
        ).fetchone()
    except sqlite3.Error as exc:
        raise NotABackup(f"{path} cannot be read as an OpenMFA backup: {exc}") from exc
    finally:
        conn.close()
    return Contents(
        revision=revision_row[0] if revision_row else None,
        key_fingerprint=key_row[0] if key_row else None,
        users=int(users),
        devices=int(devices),
        active_devices=int(active),
        marker=marker,
    )


def has_data(path: Path, holder: sqlite3.Connection | None) -> bool:
    """True when ``path`` holds any table (``holder`` from :func:`exclusive`) or is not an
    SQLite file at all: an empty file left by a failed start is not data worth a ``--force``.
    """
    if holder is None:
        return path.exists() and path.stat().st_size > 0
    try:
        return int(holder.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]) > 0
    except sqlite3.DatabaseError:
        return True  # not even SQLite: whatever it is, only --force replaces it


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[sqlite3.Connection | None]:
    """Hold ``path`` so that no other process opens it meanwhile, or raise
    :class:`DatabaseInUse` when one already has (a running server, a command). Yields the
    holding connection (``None`` when there is no file, or it is not SQLite) for
    :func:`has_data` and :func:`put_in_place`.

    In WAL mode every open connection keeps a shared lock on the file; with
    ``locking_mode=EXCLUSIVE`` our first transaction needs an exclusive one, which SQLite
    grants only when no one else holds the file, and keeps until we close.
    """
    if not path.exists():
        yield None
        return
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None, timeout=0.5)
    try:
        sqlite = True
        try:
            conn.execute("PRAGMA locking_mode = EXCLUSIVE").fetchone()
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise DatabaseError(f"the database {path} cannot be opened: {exc}") from exc
            raise DatabaseInUse(
                f"the database {path} is open in another process (a running `openmfa run` "
                "or command); stop the server and try again"
            ) from exc
        except sqlite3.DatabaseError:
            sqlite = False  # not an SQLite file: no server can be using it
        yield conn if sqlite else None
    finally:
        conn.close()


def prepare_restore(backup: Path, directory: Path) -> Path:
    """Copy ``backup`` into a new private file in ``directory``, ready to be renamed into
    place: marker dropped, WAL mode as the server runs it, written to disk."""
    temporary = directory / f".openmfa-restore-{secrets.token_hex(8)}.db"
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        src = _open_backup(backup)
        try:
            dst = sqlite3.connect(temporary, isolation_level=None)
            try:
                src.backup(dst)
                dst.execute(f"DROP TABLE IF EXISTS {MARKER_TABLE}")
                result = dst.execute("PRAGMA integrity_check").fetchone()
                if result is None or result[0] != "ok":
                    raise NotABackup(f"{backup} is damaged (SQLite's check says: {result})")
                dst.execute("PRAGMA journal_mode = WAL").fetchone()
            finally:
                dst.close()
        finally:
            src.close()
        fsync(temporary)
    except sqlite3.Error as exc:
        temporary.unlink(missing_ok=True)
        raise NotABackup(f"{backup} cannot be restored: {exc}") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def put_in_place(
    holder: sqlite3.Connection | None, temporary: Path, target: Path, keep_old_as: Path | None
) -> None:
    """Rename ``temporary`` to ``target``; the old database becomes ``keep_old_as`` (or goes).

    ``holder`` is the connection :func:`exclusive` yields for ``target``. It first turns the
    old database out of WAL mode, which folds the log into the file and deletes it: a log
    left beside the new file would be replayed into it, and a WAL connection closing later
    deletes ``target-wal`` by name, which by then could be the new database's.
    """
    if holder is not None:
        holder.execute("PRAGMA journal_mode = DELETE").fetchone()
    if target.exists():
        if keep_old_as is not None:
            # Two renames, not one: a crash between them leaves no database at ``target``
            # (the server then says so) and the old one under ``keep_old_as``, never a mix.
            os.replace(target, keep_old_as)
        else:
            target.unlink()
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    os.replace(temporary, target)
    fsync_directory(target.parent)


def finish_copy(temporary: Path, target: Path) -> None:
    """Flush ``temporary`` and rename it to ``target`` (a new backup appears whole or not)."""
    fsync(temporary)
    os.replace(temporary, target)
    fsync_directory(target.parent)
