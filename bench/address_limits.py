"""The per-address web sign-in limit on its own: what one claim (and its release) costs.

A portal sign-in makes one claim before the password check and, when the password was right,
one release (backend/services/address_limits.py). This runs those calls against a fresh
SQLite file and, with ``--postgres``, a fresh PostgreSQL database, one after another (the
latency a sign-in pays) and from ``--tasks`` coroutines at once, spread over many addresses
(what the database sustains), and reports wall time and this process's CPU per call. On
PostgreSQL the server's CPU is not in that figure (it runs in other processes).

    python bench/address_limits.py [--count 2000] [--tasks 32] [--postgres ADMIN_URL]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.services import address_limits
from backend.store import migrations
from backend.store.database import Database

WINDOW = timedelta(minutes=15)
LIMIT = 20


def _fresh_postgres(admin_url: str) -> str:
    """Create (or re-create) the database ``openmfa_bench_limits`` beside ``admin_url``'s."""
    import asyncpg

    async def recreate() -> None:
        conn = await asyncpg.connect(admin_url.replace("+asyncpg", ""))
        try:
            await conn.execute('DROP DATABASE IF EXISTS "openmfa_bench_limits" WITH (FORCE)')
            await conn.execute('CREATE DATABASE "openmfa_bench_limits"')
        finally:
            await conn.close()

    asyncio.run(recreate())
    return admin_url.rsplit("/", 1)[0] + "/openmfa_bench_limits"


async def _pair(db: Database, address: str) -> None:
    """A right password's traffic: claim, then release."""
    now = datetime.now(UTC)
    if await address_limits.claim(db, address, now, LIMIT, WINDOW) is None:
        await address_limits.release(db, address, now)


async def _measure(url: str, count: int, tasks: int) -> None:
    db = Database(url)
    try:
        await _pair(db, "198.51.100.1")  # opens the pool / writer thread
        began, cpu = time.perf_counter(), time.process_time()
        for n in range(count):
            await _pair(db, f"192.0.2.{n % 200}")
        wall, used = time.perf_counter() - began, time.process_time() - cpu
        print(
            f"  one at a time: {wall / count * 1e6:7.0f} µs wall, "
            f"{used / count * 1e6:6.0f} µs CPU per claim+release"
        )
        began, cpu = time.perf_counter(), time.process_time()

        async def worker(offset: int) -> None:
            for n in range(offset, count, tasks):
                await _pair(db, f"10.{n % 50}.{offset}.1")

        await asyncio.gather(*(worker(t) for t in range(tasks)))
        wall, used = time.perf_counter() - began, time.process_time() - cpu
        print(
            f"  {tasks} at once:    {count / wall:7.0f} claim+release/s, "
            f"{used / count * 1e6:6.0f} µs CPU each"
        )
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--postgres", help="admin URL; a database beside it is re-created")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="openmfa-bench-limits-"))
    urls = {"SQLite": f"sqlite+aiosqlite:///{home / 'openmfa.db'}"}
    if args.postgres:
        urls["PostgreSQL"] = _fresh_postgres(args.postgres)
    for name, url in urls.items():
        migrations.upgrade(url)
        print(f"{name}:")
        asyncio.run(_measure(url, args.count, args.tasks))


if __name__ == "__main__":
    main()
