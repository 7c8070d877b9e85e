"""The per-address web sign-in limit on its own: what one claim (and its release) costs.

A portal sign-in makes one claim before the password check and, when the password was right,
one release (backend/services/address_limits.py). This runs those calls against a fresh
SQLite file and, with ``--postgres``, a fresh PostgreSQL database, one after another (the
latency a sign-in pays) and from ``--tasks`` coroutines at once, spread over many addresses
(what the database sustains), and reports wall time and this process's CPU per call. On
PostgreSQL it adds the CPU of the server processes serving the benchmark's connections (read
from /proc, so the database must run on this machine).

    python bench/address_limits.py [--count 2000] [--tasks 32] [--postgres ADMIN_URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.services import address_limits
from backend.store import migrations
from backend.store.database import Database
from bench._setup import fresh_postgres

WINDOW = timedelta(minutes=15)
LIMIT = 20
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (0 for one that is gone)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


async def _backends(url: str) -> list[int]:
    """The server processes of every connection to ``url``'s database (PostgreSQL)."""
    import asyncpg

    plain = url.replace("+asyncpg", "")
    conn = await asyncpg.connect(plain)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return [int(row[0]) for row in rows]


async def _pair(db: Database, address: str) -> None:
    """A right password's traffic: claim, then release."""
    now = datetime.now(UTC)
    if await address_limits.claim(db, address, now, LIMIT, WINDOW) is None:
        await address_limits.release(db, address, now)


async def _measure(url: str, count: int, tasks: int) -> None:
    db = Database(url)
    postgres = not url.startswith("sqlite")

    async def warm() -> list[int]:
        # Opens the pool (every connection the concurrent run will use) or the writer thread.
        await asyncio.gather(*(_pair(db, f"198.51.100.{n}") for n in range(tasks)))
        return await _backends(url) if postgres else []

    def report(label: str, wall: float, used: float, server: float) -> None:
        line = f"  {label}: {wall / count * 1e6:6.0f} µs wall, {used / count * 1e6:5.0f} µs CPU"
        if postgres:
            line += f" + {server / count * 1e6:5.0f} µs PostgreSQL CPU"
        print(line + f" per claim+release ({count / wall:6.0f}/s)")

    try:
        pids = await warm()
        began, cpu, server = time.perf_counter(), time.process_time(), _cpu_of(pids)
        for n in range(count):
            await _pair(db, f"192.0.2.{n % 200}")
        report(
            "one at a time",
            time.perf_counter() - began,
            time.process_time() - cpu,
            _cpu_of(pids) - server,
        )

        async def worker(offset: int) -> None:
            for n in range(offset, count, tasks):
                await _pair(db, f"10.{n % 50}.{offset}.1")

        began, cpu, server = time.perf_counter(), time.process_time(), _cpu_of(pids)
        await asyncio.gather(*(worker(t) for t in range(tasks)))
        report(
            f"{tasks:2} at once    ",
            time.perf_counter() - began,
            time.process_time() - cpu,
            _cpu_of(pids) - server,
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
        urls["PostgreSQL"] = fresh_postgres(args.postgres, "openmfa_bench_limits")
    for name, url in urls.items():
        migrations.upgrade(url)
        print(f"{name}:")
        asyncio.run(_measure(url, args.count, args.tasks))


if __name__ == "__main__":
    main()
