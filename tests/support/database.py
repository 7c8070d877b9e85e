"""Migrated SQLite databases for tests, made by copying one migrated file.

Alembic takes ~0.2 s per upgrade here; a file copy takes about a millisecond, and most tests
want a fresh database. The template is migrated once per test process, the first time one is
asked for, and removed when the process exits.
"""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from backend.store import migrations

_template: Path | None = None


def _migrated_template() -> Path:
    global _template
    if _template is None:
        directory = Path(tempfile.mkdtemp(prefix="openmfa-test-template-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        path = directory / "openmfa.db"
        # Alembic's env calls asyncio.run(), which fails in a thread where an event loop
        # already runs (playwright's sync API keeps one in the browser tests' main thread).
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(migrations.upgrade, f"sqlite+aiosqlite:///{path}").result()
        # Everything in the main file, so that copying the file alone copies the database.
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        _template = path
    return _template


def migrated_sqlite(directory: Path, name: str = "openmfa.db") -> str:
    """The URL of a fresh SQLite database at head in ``directory`` (mode 0600)."""
    path = directory / name
    shutil.copyfile(_migrated_template(), path)
    path.chmod(0o600)
    return f"sqlite+aiosqlite:///{path}"
