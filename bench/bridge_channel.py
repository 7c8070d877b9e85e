"""The bridge's wait channel (issue 18, item 5): one WebSocket per bridge instead of one HTTP
long-poll per held push and one HTTP round trip per code check.

One backend (`openmfa run` under bench/_gc_probe.py, which times every garbage collection in
the backend process; pinned to CPU 0) and a standalone bridge (`openmfa radius`, CPU 1); the
load generator of bench/radius_bridge.py in this process. Figures printed:

(a) `password,code` through one bridge (client primary `none`: the password is only carried,
    the code is checked by the backend), `--channel off` (HTTP) and then `--channel auto`
    (the channel), each on its own half of the users (a code is accepted once): accepted
    requests per second, latency, and CPU per request of bridge and backend (process CPU
    time / requests);
(b) `--held` push requests held through one bridge on the channel: the bridge's and the
    backend's RSS growth per held request, the backend's objects tracked by the collector
    per held request, and the longest garbage-collection pause in the backend (per
    generation) while they were taken on and while held;
(c) device answer -> Access-Accept p50 / p99 with them held (the phone's answer is posted to
    the backend, signed as the app does, and the clock runs until the gateway has the
    Access-Accept), with the backend's GC pauses during the answers.

    python bench/bridge_channel.py [--users 10000] [--home DIR] [--held 10000]
        [--held-channel auto|off] [--only-codes]

``--home DIR`` keeps / reuses the populated data directory (bench/radius_bridge.py's format:
setting up 10,000 users takes a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench._process import free_port, http_ok, wait_until  # noqa: E402
from bench.radius_bridge import (  # noqa: E402
    LoadGenerator,
    Processes,
    _ms,
    answer_held,
    bench_codes,
    cpu_seconds,
    metric,
    prepare,
    rss_kib,
    send_paced,
    slots,
    sockets_for,
)
from radius_bridge.protocol import packet as codec  # noqa: E402


@dataclass
class ProbedProcesses(Processes):
    """:class:`Processes` whose backend runs under bench/_gc_probe.py."""

    @property
    def probe(self) -> Path:
        return self.home / "gc-probe.jsonl"

    def start_backend(self) -> None:
        environ = {
            **os.environ,
            "OPENMFA_HOME": str(self.home),
            "OPENMFA_LOG_LEVEL": "warning",
            "OPENMFA_RADIUS_PORT": "0",
            "OPENMFA_LONG_POLL_MAX_SECONDS": str(int(self.long_poll)),
            "OPENMFA_BENCH_PROBE": str(self.probe),
        }
        command = [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "bench._gc_probe",
            "run",
            "--port",
            str(self.backend_port),
        ]
        with (self.home / "backend.log").open("wb") as out:
            process = subprocess.Popen(
                command, env=environ, stdout=out, stderr=subprocess.STDOUT, cwd=_HERE.parent
            )
        self.started.append(process)
        wait_until(lambda: http_ok(self.backend_url + "/readyz"), 60, "the backend to be ready")

    def start_bridge(
        self, token: str, udp: int, metrics: int, radsec: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """As :meth:`Processes.start_bridge`, under the GC probe too (``bridge_probe``)."""
        token_file = self.home / "bridge.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        log_path = self.home / f"bridge-{udp}.log"
        command = [
            *("taskset", "-c", "1", sys.executable, "-m", "bench._gc_probe", "radius"),
            *("--backend", self.backend_url, "--token-file", str(token_file)),
            *("--listen", f"127.0.0.1:{udp}", "--metrics-listen", f"127.0.0.1:{metrics}"),
            *("--max-held", "20000", *radsec),
        ]
        environ = {
            **os.environ,
            "OPENMFA_BRIDGE_LONG_POLL_SECONDS": str(self.long_poll),
            "OPENMFA_BENCH_PROBE": str(self.bridge_probe),
        }
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=_HERE.parent
            )
        self.started.append(process)
        wait_until(
            lambda: "RADIUS client list loaded: 1" in log_path.read_text(),
            30,
            "the bridge to load its clients",
        )
        return process

    @property
    def bridge_probe(self) -> Path:
        return self.home / "gc-probe-bridge.jsonl"

    @property
    def backend_pid(self) -> int:
        return self.started[0].pid

    def read_probe(self, pid: int | None = None, probe: Path | None = None) -> dict[str, Any]:
        """GC figures of the backend (or of ``pid`` writing to ``probe``) since the last
        read, and a fresh start for the next."""
        pid = self.backend_pid if pid is None else pid
        path = self.probe if probe is None else probe
        lines = path.read_text().splitlines() if path.exists() else []
        os.kill(pid, signal.SIGUSR1)
        wait_until(
            lambda: path.exists() and len(path.read_text().splitlines()) > len(lines),
            30,
            "the GC probe",
        )
        report: dict[str, Any] = json.loads(path.read_text().splitlines()[-1])
        return report


def start_bridge(
    procs: Processes, token: str, channel: str
) -> tuple[subprocess.Popen[bytes], int, str]:
    """A bridge with ``--channel channel``: (process, UDP port, metrics URL)."""
    udp, metrics_port = free_port(socket.SOCK_DGRAM), free_port()
    bridge = procs.start_bridge(token, udp, metrics_port, ["--channel", channel])
    if channel == "auto":
        log = procs.home / f"bridge-{udp}.log"
        wait_until(lambda: "wait channel to" in log.read_text(), 30, "the wait channel to open")
    return bridge, udp, f"http://127.0.0.1:{metrics_port}/metrics"


# -- (a) ------------------------------------------------------------------------------------------


def codes(
    procs: ProbedProcesses,
    token: str,
    channel: str,
    devices: dict[str, list[str]],
    window: int,
    factory: Any,
) -> None:
    bridge, udp, _ = start_bridge(procs, token, channel)
    try:
        procs.read_probe()
        bridge_before = cpu_seconds(bridge.pid)
        backend_before = cpu_seconds(procs.backend_pid)
        with asyncio.Runner(loop_factory=factory) as runner:
            run = runner.run(bench_codes(udp, devices, window))
        bridge_cpu = cpu_seconds(bridge.pid) - bridge_before
        backend_cpu = cpu_seconds(procs.backend_pid) - backend_before
        gc_report = procs.read_probe()
    finally:
        procs.stop(bridge)
    accepts = run.codes.get(codec.ACCESS_ACCEPT, 0)
    sent = max(1, run.sent)
    print(
        f"(a) password,code, --channel {channel}: {run.sent} requests in {run.seconds:.2f} s, "
        f"{window} in flight; {accepts} accepted = {accepts / run.seconds:,.0f}/s; replies "
        f"{run.codes}, lost {run.lost}, retransmitted {run.retransmitted}; latency p50 "
        f"{_ms(run.latencies, 0.5)}, p99 {_ms(run.latencies, 0.99)}; CPU per request: bridge "
        f"{bridge_cpu / sent * 1e6:.0f} µs, backend {backend_cpu / sent * 1e6:.0f} µs "
        f"(CPU busy: bridge {bridge_cpu / run.seconds:.0%}, backend "
        f"{backend_cpu / run.seconds:.0%}); backend GC longest {gc_report['longest_ms']} ms "
        f"by generation (wall)",
        flush=True,
    )


# -- (b) and (c) ----------------------------------------------------------------------------------


async def held_pushes(
    procs: ProbedProcesses,
    bridge: subprocess.Popen[bytes],
    udp: int,
    metrics_url: str,
    devices: dict[str, list[str]],
    count: int,
    rate: float,
    answers: int,
) -> None:
    names = list(devices)[:count]
    numbers = slots(count)
    generator = LoadGenerator(udp, sockets_for(count))
    await generator.open()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(1)
        baseline = await loop.run_in_executor(None, procs.read_probe)
        rss_bridge, rss_backend = rss_kib(bridge.pid), rss_kib(procs.backend_pid)
        began = await send_paced(generator, names, numbers, rate)
        deadline = time.monotonic() + 600
        while metric(metrics_url, "openmfa_radius_held_requests") + len(generator.replies) < count:
            procs.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit("the requests were not all held within 600 s")
            await asyncio.sleep(0.5)
        reached = time.perf_counter() - began
        if generator.replies:
            print(f"  warning: {len(generator.replies)} answered before any approval")
        await asyncio.sleep(2)
        taking_on = await loop.run_in_executor(None, procs.read_probe)
        held_now = int(metric(metrics_url, "openmfa_radius_held_requests"))
        grown_bridge = (rss_kib(bridge.pid) - rss_bridge) * 1024 / max(1, held_now)
        grown_backend = (rss_kib(procs.backend_pid) - rss_backend) * 1024 / max(1, held_now)
        objects = (taking_on["objects"] - baseline["objects"]) / max(1, held_now)
        print(
            f"(b) {held_now} push requests held through one bridge, reached in {reached:.0f} s "
            f"at {rate:.0f}/s: RSS growth per held request: bridge {grown_bridge / 1024:.2f} "
            f"KiB, backend {grown_backend / 1024:.2f} KiB; backend objects tracked by the "
            f"collector: {baseline['objects']} -> {taking_on['objects']} = {objects:.1f} per "
            f"held request; backend GC while taking them on: {taking_on['collections']} "
            f"collections by generation, longest {taking_on['longest_ms']} ms wall / "
            f"{taking_on['longest_cpu_ms']} ms CPU, {taking_on['over_50ms']} over 50 ms; a "
            f"full collection with them held: {taking_on['full_collect_ms']} ms wall / "
            f"{taking_on['full_collect_cpu_ms']} ms CPU",
            flush=True,
        )

        await loop.run_in_executor(None, procs.read_probe, bridge.pid, procs.bridge_probe)
        answered = await answer_held(
            generator, procs.backend_url, devices, names, numbers, count, answers
        )
        latencies, answer_http, accepted = (
            answered.latencies,
            answered.answer_http,
            answered.accepted,
        )
        answering = await loop.run_in_executor(None, procs.read_probe)
        bridge_gc = await loop.run_in_executor(
            None, procs.read_probe, bridge.pid, procs.bridge_probe
        )
        print(
            f"(c) answer -> Access-Accept with {held_now} held: {accepted}/{len(latencies)} "
            f"accepted; p50 {_ms(latencies, 0.5)}, p99 {_ms(latencies, 0.99)}, max "
            f"{max(latencies) * 1000:.1f} ms (the phone's answer request alone: p50 "
            f"{_ms(answer_http, 0.5)}, p99 {_ms(answer_http, 0.99)}); backend GC meanwhile: "
            f"{answering['collections']} collections, longest {answering['longest_ms']} ms "
            f"wall / {answering['longest_cpu_ms']} ms CPU, {answering['over_50ms']} over 50 ms; "
            f"the bridge's GC meanwhile: {bridge_gc['collections']} collections, longest "
            f"{bridge_gc['longest_ms']} ms wall / {bridge_gc['longest_cpu_ms']} ms CPU, "
            f"{bridge_gc['objects']} objects tracked, a full collection "
            f"{bridge_gc['full_collect_cpu_ms']} ms CPU",
            flush=True,
        )
    finally:
        generator.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--home", type=Path, help="keep / reuse the populated data directory")
    parser.add_argument("--window", type=int, default=128, help="requests in flight for (a)")
    parser.add_argument("--held", type=int, default=10_000, help="push requests held in (b)")
    parser.add_argument("--held-channel", choices=["auto", "off"], default="auto")
    parser.add_argument("--rate", type=float, default=100.0, help="push requests/s for (b)")
    parser.add_argument("--answers", type=int, default=300, help="answers timed for (c)")
    parser.add_argument("--only-codes", action="store_true")
    parser.add_argument("--skip-codes", action="store_true", help="run (b) and (c) only")
    args = parser.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="openmfa-channel-bench-"))
    data = prepare(home, max(args.users, args.held))
    devices: dict[str, list[str]] = dict(list(data["devices"].items())[: args.users])
    procs = ProbedProcesses(home)
    factory: Any
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    try:
        procs.start_backend()
        names = list(devices)
        half = len(names) // 2
        for channel, users in (("off", names[:half]), ("auto", names[half:])):
            if args.skip_codes:
                break
            codes(
                procs, data["token"], channel, {n: devices[n] for n in users}, args.window, factory
            )
        if args.only_codes:
            return
        bridge, udp, metrics_url = start_bridge(procs, data["token"], args.held_channel)
        every = dict(list(data["devices"].items())[: args.held])
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(
                held_pushes(
                    procs, bridge, udp, metrics_url, every, args.held, args.rate, args.answers
                )
            )
        print(f"    bridge stopped with them held in {procs.stop(bridge):.1f} s", flush=True)
        # What the wait itself cost the backend: the bridge is gone, its channel (or its
        # long-polls) with it, while the challenges stay pending in the database.
        time.sleep(2)
        after = procs.read_probe()
        last = json.loads(procs.probe.read_text().splitlines()[-2])
        still = args.held - args.answers
        print(
            f"(b) the backend's objects once the bridge left: {last['objects']} -> "
            f"{after['objects']}: {(last['objects'] - after['objects']) / max(1, still):.1f} "
            f"per held request were the wait's own ({still} were still held)",
            flush=True,
        )
    finally:
        procs.stop_all()
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
        procs.probe.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
