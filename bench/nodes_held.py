"""Many pushes held through one bridge and two nodes on PostgreSQL, answered through the other
node (issue 18).

Two ``openmfa run`` nodes on one fresh PostgreSQL database (both under bench/_gc_probe.py,
which times every garbage collection inside them; both pinned to CPU 0) and one standalone
bridge ``openmfa radius --backend A --backend B`` (the wait channel, ``--channel auto``, the
default; node A preferred; also under the probe, CPU 1); the UDP load generator of
bench/radius_bridge.py in this process. ``--held`` push requests are sent at ``--rate`` and
held (through node A); then ``--answers`` of them are answered one after another through node
B: the phone's signed answer is posted to B, and the outcome reaches the bridge's held
request on A over the outcome bus. Figures printed:

(b) RSS growth per held request of the bridge, node A and node B; objects tracked by each
    node's collector per held request; each node's longest GC pause while the requests were
    taken on and held, and a full collection with them held;
(c) answer (posted to B) -> Access-Accept p50 / p99 (the clock runs from posting the answer
    to B until the gateway has the Access-Accept), with each node's and the bridge's GC
    pauses during the answers.

    python bench/nodes_held.py [--held 2000] [--rate 50] [--answers 300]
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test]

The users are set up afresh in a database of their own (dropped at the end); the set-up time
is printed. Figures are printed, not asserted; docs/performance.md quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench._process import free_port, wait_until  # noqa: E402
from bench.bridge_channel import ProbedProcesses  # noqa: E402
from bench.nodes import PG_ADMIN, _pg, _pg_database  # noqa: E402
from bench.radius_bridge import (  # noqa: E402
    LoadGenerator,
    _ms,
    _populate,
    access_request,
    answer_held,
    identifier,
    metric,
    rss_kib,
    slots,
    sockets_for,
)

DATABASE = "openmfa_bench_nodes_held"


def _gc(name: str, report: dict[str, Any]) -> str:
    """One process's GC figures from a probe report, as printed."""
    return (
        f"{name} {report['collections']} collections by generation, longest "
        f"{report['longest_ms']} ms wall / {report['longest_cpu_ms']} ms CPU, "
        f"{report['over_50ms']} over 50 ms"
    )


def _set_up(work: Path, admin_url: str, users: int) -> tuple[dict[str, Any], list[Path]]:
    """A fresh database with ``users`` users, an app each, a bridge token and the RADIUS
    client; two node homes sharing one key file. The environment of this process then names
    the database and the key (the nodes started later inherit it)."""
    from backend.store import migrations

    url = _pg_database(admin_url, DATABASE)
    os.environ["OPENMFA_DATABASE_URL"] = url
    os.environ["OPENMFA_KEY_FILE"] = str(work / "server.key")
    migrations.upgrade(url)
    admin = work / "admin"
    homes = [work / "node-a", work / "node-b"]
    for home in (admin, *homes):
        home.mkdir()
    print(f"setting up {users} users with an app each on PostgreSQL ...", flush=True)
    began = time.perf_counter()
    data = asyncio.run(_populate(admin, users))
    print(f"set up in {time.perf_counter() - began:.0f} s", flush=True)
    return data, homes


async def held_through_two(
    node_a: ProbedProcesses,
    node_b: ProbedProcesses,
    bridge_pid: int,
    udp: int,
    metrics_url: str,
    devices: dict[str, list[str]],
    rate: float,
    answers: int,
) -> None:
    """Phases (b) and (c): hold every device's push through the bridge, answer some via B."""

    names = list(devices)
    count = len(names)
    numbers = slots(count)
    nodes = {"A": node_a, "B": node_b}
    generator = LoadGenerator(udp, sockets_for(count))
    await generator.open()
    loop = asyncio.get_running_loop()

    async def probe(procs: ProbedProcesses) -> dict[str, Any]:
        return await loop.run_in_executor(None, procs.read_probe)

    async def probe_bridge() -> dict[str, Any]:
        return await loop.run_in_executor(None, node_a.read_probe, bridge_pid, node_a.bridge_probe)

    try:
        await asyncio.sleep(1)
        baseline = {name: await probe(procs) for name, procs in nodes.items()}
        await probe_bridge()
        rss_before = {name: rss_kib(procs.backend_pid) for name, procs in nodes.items()}
        rss_before["bridge"] = rss_kib(bridge_pid)
        began = time.perf_counter()
        for index, name in enumerate(names):
            slot = numbers[index]
            generator.send(slot, access_request(identifier(slot, 0), name, None))
            pause = began + (index + 1) / rate - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
        deadline = time.monotonic() + 900
        while metric(metrics_url, "openmfa_radius_held_requests") + len(generator.replies) < count:
            node_a.check_alive()
            node_b.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit("the requests were not all held within 900 s")
            await asyncio.sleep(0.5)
        reached = time.perf_counter() - began
        if generator.replies:
            print(f"  warning: {len(generator.replies)} answered before any approval")
        await asyncio.sleep(2)
        held = int(metric(metrics_url, "openmfa_radius_held_requests"))
        per_held = max(1, held)
        grown = {
            "bridge": (rss_kib(bridge_pid) - rss_before["bridge"]) / per_held,
            **{
                name: (rss_kib(procs.backend_pid) - rss_before[name]) / per_held
                for name, procs in nodes.items()
            },
        }
        taking_on = {name: await probe(procs) for name, procs in nodes.items()}
        bridge_taking_on = await probe_bridge()
        objects = {
            name: (taking_on[name]["objects"] - baseline[name]["objects"]) / per_held
            for name in nodes
        }
        print(
            f"(b) {held} push requests held through one bridge and node A (B idle but for "
            f"the bus), reached in {reached:.0f} s at {rate:.0f}/s: RSS growth per held "
            f"request: bridge {grown['bridge']:.2f} KiB, node A {grown['A']:.2f} KiB, node B "
            f"{grown['B']:.2f} KiB; objects tracked by the collector per held request: node A "
            f"{objects['A']:.1f}, node B {objects['B']:.1f}; GC while taking them on: "
            f"{_gc('node A', taking_on['A'])}; {_gc('node B', taking_on['B'])}; "
            f"{_gc('bridge', bridge_taking_on)}; a full collection with them held: node A "
            f"{taking_on['A']['full_collect_ms']} ms wall / "
            f"{taking_on['A']['full_collect_cpu_ms']} ms CPU, node B "
            f"{taking_on['B']['full_collect_ms']} ms wall / "
            f"{taking_on['B']['full_collect_cpu_ms']} ms CPU, bridge "
            f"{bridge_taking_on['full_collect_ms']} ms wall / "
            f"{bridge_taking_on['full_collect_cpu_ms']} ms CPU",
            flush=True,
        )

        answered = await answer_held(
            generator, node_b.backend_url, devices, names, numbers, count, answers
        )
        latencies, answer_http = answered.latencies, answered.answer_http
        after_response, accepted = answered.after_commit, answered.accepted
        answering = {name: await probe(procs) for name, procs in nodes.items()}
        bridge_answering = await probe_bridge()
        print(
            f"(c) answer posted to node B -> Access-Accept through node A's held request, with "
            f"{held} held: {accepted}/{len(latencies)} accepted; p50 {_ms(latencies, 0.5)}, "
            f"p99 {_ms(latencies, 0.99)}, max {max(latencies) * 1000:.1f} ms (the phone's "
            f"answer request to B alone: p50 {_ms(answer_http, 0.5)}, p99 "
            f"{_ms(answer_http, 0.99)}; the Access-Accept after B's response to it: p50 "
            f"{_ms(after_response, 0.5)}, p99 {_ms(after_response, 0.99)}, negative when the "
            f"Accept came first); GC meanwhile: {_gc('node A', answering['A'])}; "
            f"{_gc('node B', answering['B'])}; {_gc('bridge', bridge_answering)}",
            flush=True,
        )
    finally:
        generator.close()


def main() -> None:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held", type=int, default=2000, help="push requests held")
    parser.add_argument("--rate", type=float, default=50.0, help="push requests sent per second")
    parser.add_argument("--answers", type=int, default=300, help="answers timed for (c)")
    parser.add_argument("--postgres", default=PG_ADMIN, metavar="ADMIN_URL")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="openmfa-bench-nodes-held-"))
    nodes: list[ProbedProcesses] = []
    factory: Any
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    try:
        data, homes = _set_up(work, args.postgres, args.held)
        for home in homes:
            procs = ProbedProcesses(home)
            nodes.append(procs)
            procs.start_backend()
        node_a, node_b = nodes
        udp, metrics_port = free_port(socket.SOCK_DGRAM), free_port()
        # The first --backend is node A's (ProbedProcesses.start_bridge); B comes second.
        bridge = node_a.start_bridge(
            data["token"],
            udp,
            metrics_port,
            ["--backend", node_b.backend_url, "--channel", "auto"],
        )
        log = node_a.home / f"bridge-{udp}.log"
        wait_until(
            lambda: f"wait channel to ws://127.0.0.1:{node_a.backend_port}/" in log.read_text(),
            30,
            "the wait channel to node A to open",
        )
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(
                held_through_two(
                    node_a,
                    node_b,
                    bridge.pid,
                    udp,
                    f"http://127.0.0.1:{metrics_port}/metrics",
                    data["devices"],
                    args.rate,
                    args.answers,
                )
            )
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"(load average: {' '.join(load)}; other work shares these 2 cores)", flush=True)
    finally:
        for procs in nodes:  # A first: its bridge, then A, then B
            procs.stop_all()
        asyncio.run(_pg(args.postgres, f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
