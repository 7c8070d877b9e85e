"""Directory sync: N users from a real OpenLDAP into an empty SQLite database, then the
no-change re-sync right after (issue 14's goals: <= 60 s and <= 15 s for 10,000 users, and
memory flat as the directory grows).

For each size, in a process of its own (so its peak RSS is its own): a throw-away slapd
(tests/support/slapd.py) bulk-loaded with N inetOrgPerson users, a fresh SQLite database at
the current schema, and :class:`~backend.services.directory_sync.DirectorySyncService` reading
through :class:`~backend.directory.ldap.LdapDirectory` over LDAPS, pages of 500. Printed: the
first sync's and the re-sync's seconds, the process's peak RSS, and the peak of Python
allocations (tracemalloc) during one more re-sync.

    python bench/directory_sync.py [--users 2000 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.config import load_settings
from backend.directory.config import DirectoryConfig
from backend.directory.ldap import LdapDirectory
from backend.directory.reader import DirectoryReader
from backend.services import Services
from backend.services.context import Actor
from backend.store import migrations
from tests.support.directories import add_directory_row
from tests.support.slapd import running_slapd


class _Source:
    """The reader source the sync asks (``services.directories`` in the server)."""

    def __init__(self, reader: LdapDirectory) -> None:
        self._reader = reader

    async def reader(self, directory_id: int) -> DirectoryReader:
        return self._reader


async def measure(home: Path, config: DirectoryConfig, password: str) -> dict[str, float]:
    settings = load_settings(config_file=None, home=home)
    services = await Services.open(settings, push=False, notify=False)
    reader = LdapDirectory(config, password)
    try:
        await add_directory_row(services, "bench", disable_minimum=5)
        services.directory_sync.readers = _Source(reader)
        actor = Actor("bench")
        started = time.perf_counter()
        first = await services.directory_sync.run(actor, "bench")
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        second = await services.directory_sync.run(actor, "bench")
        second_s = time.perf_counter() - started
        tracemalloc.start()
        await services.directory_sync.run(actor, "bench")
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {
            "created": first.created,
            "unchanged": second.unchanged,
            "changed_on_resync": second.created + second.updated + second.disabled,
            "first_s": first_s,
            "resync_s": second_s,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "traced_peak_mib": traced_peak / 2**20,
        }
    finally:
        await reader.close()
        await services.close()


def one(users: int) -> None:
    """One size, in this process; prints a JSON line."""
    with tempfile.TemporaryDirectory() as tmp, running_slapd(Path(tmp) / "slapd") as slapd:
        started = time.monotonic()
        slapd.bulk_add(users)
        loaded = time.monotonic() - started
        home = Path(tmp) / "home"
        home.mkdir()
        migrations.upgrade(f"sqlite+aiosqlite:///{home / 'openmfa.db'}")
        config = slapd.directory_config("bench", page_size=500)
        figures = asyncio.run(measure(home, config, slapd.bind_password))
        print(json.dumps({"users": users, "load_s": loaded, **figures}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[2000, 10_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one)
        return
    print("users   first sync   re-sync   peak RSS   traced peak (re-sync)")
    for users in args.users:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(users)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        f = json.loads(out.strip().splitlines()[-1])
        if f["created"] != users or f["changed_on_resync"] != 0:
            raise SystemExit(f"unexpected sync result: {f}")
        print(
            f"{users:>6}   {f['first_s']:>8.1f} s  {f['resync_s']:>6.1f} s  "
            f"{f['peak_rss_mib']:>6.0f} MiB  {f['traced_peak_mib']:>8.1f} MiB"
        )


if __name__ == "__main__":
    main()
