"""Run ``openmfa`` with a garbage-collection probe, for benchmarks that must see inside the
backend process (bench/bridge_channel.py).

    python -m bench._gc_probe run --port 8080      # exactly `openmfa run --port 8080`

``gc.callbacks`` time every collection, in wall time (what a request in flight waits) and in
the thread's CPU time (the collection's own work: on a loaded machine the wall time also holds
whatever preempted the process). On SIGUSR1 the process writes one JSON line to the file
named by ``OPENMFA_BENCH_PROBE``: objects tracked by the collector now
(``len(gc.get_objects())``, frozen ones included), collections and the longest pause per
generation since the last SIGUSR1 (wall and CPU), how many exceeded 50 ms of wall time, and
the time of one full collection run right then (``gc.collect()``); then starts counting
afresh. Nothing in the product imports this.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from typing import Any

_started: list[float] = [0.0, 0.0]
_longest = [0.0, 0.0, 0.0]
_longest_cpu = [0.0, 0.0, 0.0]
_count = [0, 0, 0]
_over_50ms = [0]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        _started[1] = time.thread_time()
        return
    took = time.perf_counter() - _started[0]
    cpu = time.thread_time() - _started[1]
    generation = int(info.get("generation", 2))
    _count[generation] += 1
    _longest[generation] = max(_longest[generation], took)
    _longest_cpu[generation] = max(_longest_cpu[generation], cpu)
    if took > 0.05:
        _over_50ms[0] += 1


def _report(signum: int, frame: Any) -> None:
    line: dict[str, Any] = {
        "objects": len(gc.get_objects()),
        "frozen": gc.get_freeze_count(),
        "collections": list(_count),
        "longest_ms": [round(x * 1000, 2) for x in _longest],
        "longest_cpu_ms": [round(x * 1000, 2) for x in _longest_cpu],
        "over_50ms": _over_50ms[0],
    }
    gc.callbacks.remove(_callback)
    wall, cpu = time.perf_counter(), time.thread_time()
    gc.collect()
    line["full_collect_ms"] = round((time.perf_counter() - wall) * 1000, 2)
    line["full_collect_cpu_ms"] = round((time.thread_time() - cpu) * 1000, 2)
    gc.callbacks.append(_callback)
    with open(os.environ["OPENMFA_BENCH_PROBE"], "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
    _longest[:] = [0.0, 0.0, 0.0]
    _longest_cpu[:] = [0.0, 0.0, 0.0]
    _count[:] = [0, 0, 0]
    _over_50ms[0] = 0


def main() -> int:
    gc.callbacks.append(_callback)
    signal.signal(signal.SIGUSR1, _report)
    from backend.cli.main import main as openmfa

    return openmfa(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
