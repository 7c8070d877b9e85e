"""The LDAP adapter against a real OpenLDAP: password checks and a full paged read.

Starts a throw-away slapd (tests/support/slapd.py) with ``--users`` inetOrgPerson entries,
then measures, through :class:`backend.directory.ldap.LdapDirectory` over LDAPS:

- ``authenticate`` (search as the service account, then a bind as the user on a new
  connection) from ``--concurrency`` tasks for ``--seconds``: checks per second, p50 / p99;
- the event loop's worst lag meanwhile (a 10 ms ticker): LDAP I/O runs in the adapter's
  threads, so the loop must stay responsive;
- one full ``user_pages`` read of every user: seconds, pages, and the growth of the
  process's peak memory (pages are streamed, so it stays flat as the directory grows).

    python bench/directory_ldap.py [--users 10000] [--concurrency 8] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.directory.config import DirectoryConfig
from backend.directory.ldap import LdapDirectory
from bench._http import percentile
from tests.support.slapd import BULK_PASSWORD, running_slapd


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(
    config: DirectoryConfig, password: str, names: list[str], args: argparse.Namespace
) -> None:
    reader = LdapDirectory(config, password)
    try:
        await reader.test()  # warm: pooled connection, thread pool
        latencies: list[float] = []
        outcomes: dict[str, int] = {}
        stop = time.monotonic() + args.seconds
        worst_lag = 0.0

        async def ticker() -> None:
            nonlocal worst_lag
            while time.monotonic() < stop:
                before = time.monotonic()
                await asyncio.sleep(0.01)
                worst_lag = max(worst_lag, time.monotonic() - before - 0.01)

        async def worker() -> None:
            while time.monotonic() < stop:
                name = random.choice(names)
                started = time.monotonic()
                result = await reader.authenticate(name, BULK_PASSWORD)
                latencies.append(time.monotonic() - started)
                outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1

        started = time.monotonic()
        await asyncio.gather(ticker(), *(worker() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
        latencies.sort()
        print(
            f"authenticate x{args.concurrency}: {len(latencies) / elapsed:.0f}/s, "
            f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, outcomes {outcomes}; "
            f"event loop worst lag {worst_lag * 1000:.1f} ms"
        )

        before = peak_rss_mib()
        started = time.monotonic()
        users = pages = 0
        async for page in reader.user_pages():
            pages += 1
            users += len(page)
        print(
            f"user_pages: {users} users in {pages} pages of <= {config.page_size}, "
            f"{time.monotonic() - started:.2f} s; peak RSS {before:.0f} -> "
            f"{peak_rss_mib():.0f} MiB"
        )
    finally:
        await reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--page-size", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_slapd(Path(tmp)) as slapd:
        started = time.monotonic()
        names = slapd.bulk_add(args.users)
        print(f"slapd with {len(names)} users loaded in {time.monotonic() - started:.1f} s")
        config = slapd.directory_config("bench", page_size=args.page_size)
        asyncio.run(measure(config, slapd.bind_password, names, args))


if __name__ == "__main__":
    main()
