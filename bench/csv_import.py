"""CSV imports at their limit: 10,000 users and 10,000 hardware tokens.

Times the pure parse, the dry run (parse + database checks) and the import (one transaction)
against a fresh SQLite database in a temporary directory, in this process (no server).

    python bench/csv_import.py [--rows 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.config import load_settings
from backend.domain.imports import (
    TokenRow,
    UserRow,
    parse_tokens,
    parse_users,
    tokens_csv,
    users_csv,
)
from backend.domain.stepup import ADMINISTRATOR
from backend.services import Services
from backend.services.context import Actor
from backend.store import migrations

ADMIN = Actor("bench:admin")


def timed(label: str, start: float, rows: int) -> None:
    seconds = time.perf_counter() - start
    print(f"{label:<34} {seconds:7.2f} s  {rows / seconds:9.0f} rows/s")


async def run(home: Path, rows: int) -> None:
    users = users_csv(
        [
            UserRow(i + 2, f"user{i:05d}", f"user{i:05d}@example.com", f"User {i}")
            for i in range(rows)
        ]
    )
    tokens = tokens_csv(
        [
            TokenRow(
                i + 2,
                f"user{i:05d}",
                f"SN{i:07d}",
                base64.b32encode(secrets.token_bytes(20)).decode().rstrip("="),
                60 if i % 2 else 30,
                "Token2",
                "C302",
            )
            for i in range(rows)
        ]
    )
    print(f"files: users {len(users)} bytes, tokens {len(tokens)} bytes, {rows} rows each")
    start = time.perf_counter()
    assert parse_users(users).ok
    timed("parse users", start, rows)
    start = time.perf_counter()
    assert parse_tokens(tokens).ok
    timed("parse tokens", start, rows)
    settings = load_settings(config_file=None, home=home)
    services = await Services.open(settings, push=False, notify=False)
    try:
        start = time.perf_counter()
        await services.imports.import_users(ADMIN, users, dry_run=True)
        timed("user import --dry-run", start, rows)
        start = time.perf_counter()
        await services.imports.import_users(ADMIN, users)
        timed("user import", start, rows)
        start = time.perf_counter()
        await services.imports.import_tokens(ADMIN, ADMINISTRATOR, tokens, dry_run=True)
        timed("token import --dry-run", start, rows)
        start = time.perf_counter()
        await services.imports.import_tokens(ADMIN, ADMINISTRATOR, tokens)
        timed("token import", start, rows)
    finally:
        await services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        migrations.upgrade(f"sqlite+aiosqlite:///{home / 'openmfa.db'}")
        asyncio.run(run(home, args.rows))


if __name__ == "__main__":
    main()
