"""Several nodes on PostgreSQL (issue 18): code checks per second, CPU per request, two nodes'
share of one, and the time from ``kill -9`` of a node to a held push served by the other.

(a) Successful TOTP checks per second through ``/gateway/v1/otp/verify`` over real HTTP, with
    fresh valid codes (each accept is a durable write with its audit row): one node on SQLite,
    one node on PostgreSQL, two nodes on PostgreSQL (the same users copied from a template
    database; the load split over both). Nodes are pinned to CPU 0 (both of them in the
    two-node run: two nodes on the same cores cannot add CPU, so the share shows what sharing
    the state costs), the load generator to CPU 1; the machine's PostgreSQL floats. CPU per
    accepted request is read from /proc/<pid>/stat: the node processes, and the PostgreSQL
    backends serving the benchmark database (pg_stat_activity).
(b) ``kill -9`` of a node holding pushes: two nodes, one standalone bridge relaying to both
    (node A preferred), ``--held`` pushes held through node A. A is killed; at once every
    phone approves through node B. Printed: kill -> first Access-Accept, and -> the last.

    python bench/nodes.py [--users 2000] [--connections 32] [--rounds 2] [--held 20]
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test] [--skip-codes]
        [--skip-kill]

Figures are printed, not asserted; docs/performance.md quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.domain import totp
from backend.store import migrations
from bench._http import LoadResult, build_post, percentile, run_load
from bench._process import free_port, start_server, stop
from bench._setup import populate_oath

PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
TEMPLATE = "openmfa_bench_nodes_template"
COPY = "openmfa_bench_nodes_run"


# -- set-up ---------------------------------------------------------------------------------------


async def _pg(admin_url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url.replace("+asyncpg", ""))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _pg_database(admin_url: str, name: str, template: str | None = None) -> str:
    """(Re)create database ``name`` next to ``admin_url``'s, optionally as a copy."""
    copy = f' TEMPLATE "{template}"' if template else ""
    asyncio.run(
        _pg(
            admin_url,
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}"{copy}',
        )
    )
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


# -- CPU accounting -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_pids(admin_url: str, database: str) -> list[int]:
    """PostgreSQL backends connected to ``database`` now."""
    import asyncpg

    async def fetch() -> list[int]:
        conn = await asyncpg.connect(admin_url.replace("+asyncpg", ""))
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            return [int(row["pid"]) for row in rows]
        finally:
            await conn.close()

    return asyncio.run(fetch())


@dataclass
class Figures:
    kind: str
    accepted: int
    seconds: float
    node_cpu: float
    db_cpu: float | None
    result: LoadResult

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds

    def show(self) -> None:
        db = "" if self.db_cpu is None else f", database {self.db_cpu / self.accepted * 1e6:.0f} µs"
        print(
            f"{self.kind}: {self.accepted} accepted in {self.seconds:.2f} s = {self.rate:,.0f}/s;"
            f" latency p50 {percentile(self.result.latencies, 0.5) * 1000:.1f} ms,"
            f" p99 {percentile(self.result.latencies, 0.99) * 1000:.1f} ms;"
            f" CPU per accept: node(s) {self.node_cpu / self.accepted * 1e6:.0f} µs{db};"
            f" statuses {self.result.statuses}",
            flush=True,
        )


# -- (a) code checks ------------------------------------------------------------------------------


def _requests(port: int, token: str, seeds: dict[str, str]) -> list[bytes]:
    """Two fresh codes per user (steps s and s+1: both stay valid for 30 s at least), in
    increasing order per user."""
    step = totp.time_step(datetime.now(UTC))
    headers = {"Authorization": f"Bearer {token}"}
    return [
        build_post(
            f"127.0.0.1:{port}",
            "/gateway/v1/otp/verify",
            json.dumps({"user": name, "code": totp.code_at_step(seed, s)}).encode(),
            headers,
        )
        for s in (step, step + 1)
        for name, seed in seeds.items()
    ]


def run_codes(
    kind: str,
    homes: Sequence[Path],
    database_url: str,
    token: str,
    seeds: dict[str, str],
    connections: int,
    admin_url: str | None,
) -> Figures:
    """Start one node per home (all on CPU 0), load them evenly from CPU 1, stop them."""
    ports = [free_port() for _ in homes]
    servers = [
        start_server(home, port, {"OPENMFA_DATABASE_URL": database_url}, cpu=0, timeout=60)
        for home, port in zip(homes, ports, strict=True)
    ]
    try:
        os.sched_setaffinity(0, {1})
        names = list(seeds)
        shares = [{n: seeds[n] for n in names[i :: len(ports)]} for i in range(len(ports))]
        loads = [_requests(port, token, share) for port, share in zip(ports, shares, strict=True)]
        database = database_url.rsplit("/", 1)[1] if admin_url else ""
        db_before = (
            {pid: cpu_seconds(pid) for pid in backend_pids(admin_url, database)}
            if admin_url
            else {}
        )
        node_before = sum(cpu_seconds(s.pid) for s in servers)

        async def load_all() -> list[LoadResult]:
            per_node = max(1, connections // len(ports))
            return list(
                await asyncio.gather(
                    *(
                        run_load("127.0.0.1", port, requests, per_node, True)
                        for port, requests in zip(ports, loads, strict=True)
                    )
                )
            )

        began = time.perf_counter()
        results = asyncio.run(load_all())
        seconds = time.perf_counter() - began
        node_cpu = sum(cpu_seconds(s.pid) for s in servers) - node_before
        db_cpu = None
        if admin_url:
            after = backend_pids(admin_url, database)
            db_cpu = sum(cpu_seconds(pid) - db_before.get(pid, 0.0) for pid in after)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        for server in servers:
            stop(server)
    merged = LoadResult()
    for result in results:
        merged.sent += result.sent
        merged.latencies += result.latencies
        merged.bodies += result.bodies
        for status, n in result.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + n
    accepted = sum(b'"accept"' in body for body in merged.bodies)
    return Figures(kind, accepted, seconds, node_cpu, db_cpu, merged)


def bench_codes(users: int, connections: int, admin_url: str, rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="openmfa-bench-nodes-"))
    try:
        # SQLite, one node.
        sqlite_home = work / "sqlite"
        sqlite_home.mkdir()
        migrations.upgrade(f"sqlite+aiosqlite:///{sqlite_home / 'openmfa.db'}")
        began = time.perf_counter()
        token, seeds = asyncio.run(populate_oath(sqlite_home, "", users, push=False))
        took = time.perf_counter() - began
        print(f"set up {users} users with OATH tokens on SQLite in {took:.0f} s")
        sqlite = run_codes("SQLite, 1 node", [sqlite_home], "", token, seeds, connections, None)
        sqlite.show()

        # PostgreSQL: a template database populated once; every run gets a fresh copy (its
        # codes are then fresh again: replay state is per database), one node and two nodes
        # alternating for ``rounds`` rounds so that neither always runs on warmer caches.
        pg_home = work / "pg"
        pg_home.mkdir()
        shutil.copy(sqlite_home / "server.key", pg_home / "server.key")
        template_url = _pg_database(admin_url, TEMPLATE)
        migrations.upgrade(template_url)
        began = time.perf_counter()
        token, seeds = asyncio.run(populate_oath(pg_home, template_url, users, push=False))
        print(f"set up {users} users on PostgreSQL in {time.perf_counter() - began:.0f} s")
        homes = [work / "pg-a", work / "pg-b"]
        for home in homes:
            home.mkdir()
            shutil.copy(pg_home / "server.key", home / "server.key")
        ones: list[Figures] = []
        twos: list[Figures] = []
        for _ in range(rounds):
            for kind, nodes, figures in (("1 node", homes[:1], ones), ("2 nodes", homes, twos)):
                url = _pg_database(admin_url, COPY, template=TEMPLATE)
                asyncio.run(_pg(admin_url, "CHECKPOINT"))
                run = run_codes(
                    f"PostgreSQL, {kind}", nodes, url, token, seeds, connections, admin_url
                )
                run.show()
                figures.append(run)
        one = max(run.rate for run in ones)
        two = max(run.rate for run in twos)
        print(
            f"best of {rounds}: PostgreSQL 1 node {one:,.0f}/s, 2 nodes {two:,.0f}/s on the same"
            f" cores = {two / one:.0%} of one node; PostgreSQL 1 node / SQLite: "
            f"{one / sqlite.rate:.0%}"
        )
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"(load average during the runs: {' '.join(load)}; other work shares these 2 cores)")
    finally:
        for name in (TEMPLATE, COPY):
            asyncio.run(_pg(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(work, ignore_errors=True)


# -- (b) kill -9 of a node ------------------------------------------------------------------------


def bench_kill(held: int) -> None:
    import httpx

    from radius_bridge.protocol import packet as codec
    from tests.support.cluster import Gateway, NodeCluster
    from tests.support.process import wait_for

    work = Path(tempfile.mkdtemp(prefix="openmfa-bench-kill-"))
    try:
        with NodeCluster(work, nodes_wanted=2) as cluster:
            node_a, node_b = cluster.nodes
            phones = cluster.phones(held)
            bridge = cluster.bridge("one", backends=[node_a, node_b])
            with Gateway(sockets=1) as gateway, httpx.Client(base_url=node_b.url) as via_b:
                requests = [gateway.request(phone.user) for phone in phones]
                gateway.send_all(requests, bridge.udp)
                wait_for(lambda: bridge.held() >= held, 60, "the requests to be held")
                pending: dict[str, list[str]] = {}

                def all_pending() -> bool:
                    for phone in phones:
                        if not pending.get(phone.user):
                            pending[phone.user] = phone.pending(via_b)
                    return all(pending.values())

                wait_for(all_pending, 60, "every push to be pending")
                killed = time.monotonic()
                node_a.kill9()
                answered_at: dict[int, float] = {}

                def all_back() -> bool:
                    gateway.collect()
                    for index, sent in enumerate(requests):
                        if index not in answered_at and gateway.reply(sent) is not None:
                            answered_at[index] = time.monotonic() - killed
                    return len(answered_at) == held

                # The first approval goes in at once; the next only after its Access-Accept
                # came back, so the first figure is one push's way, not a queue's.
                phones[0].answer(via_b, pending[phones[0].user][0])
                wait_for(lambda: 0 in answered_at or all_back(), 60, "the first", every=0.001)
                for phone in phones[1:]:
                    phone.answer(via_b, pending[phone.user][0])
                    all_back()
                approvals_done = time.monotonic() - killed
                wait_for(all_back, 60, "every held request answered", every=0.002)
            codes = gateway.codes()
        times = sorted(answered_at.values())
        print(
            f"(b) kill -9 of node A holding {held} pushes (bridge -> A preferred, B): "
            f"{held} approvals through B took {approvals_done * 1000:.0f} ms; "
            f"kill -> first Access-Accept {times[0] * 1000:.0f} ms, p50 "
            f"{percentile(times, 0.5) * 1000:.0f} ms, last {times[-1] * 1000:.0f} ms; "
            f"replies {dict(codes)} (2 = Access-Accept, wanted {held} x {codec.ACCESS_ACCEPT})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--held", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="PostgreSQL runs of each kind")
    parser.add_argument("--postgres", default=PG_ADMIN, metavar="ADMIN_URL")
    parser.add_argument("--skip-codes", action="store_true")
    parser.add_argument("--skip-kill", action="store_true")
    args = parser.parse_args()
    if not args.skip_codes:
        bench_codes(args.users, args.connections, args.postgres, args.rounds)
    if not args.skip_kill:
        bench_kill(args.held)


if __name__ == "__main__":
    main()
