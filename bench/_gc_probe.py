"""Run ``openmfa`` with a garbage-collection probe, for benchmarks that must see inside the
backend process (bench/bridge_channel.py).

    python -m bench._gc_probe run --port 8080      # exactly `openmfa run --port 8080`

``gc.callbacks`` time every collection. On SIGUSR1 the process writes one JSON line to the
file named by ``OPENMFA_BENCH_PROBE``: objects tracked by the collector now
(``len(gc.get_objects())``, frozen ones included), collections and the longest pause per
generation since the last SIGUSR1, how many pauses exceeded 50 ms; then starts counting
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

_started: list[float] = [0.0]
_longest = [0.0, 0.0, 0.0]
_count = [0, 0, 0]
_over_50ms = [0]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _started[0]
    generation = int(info.get("generation", 2))
    _count[generation] += 1
    _longest[generation] = max(_longest[generation], took)
    if took > 0.05:
        _over_50ms[0] += 1


def _report(signum: int, frame: Any) -> None:
    line = {
        "objects": len(gc.get_objects()),
        "frozen": gc.get_freeze_count(),
        "collections": list(_count),
        "longest_ms": [round(x * 1000, 2) for x in _longest],
        "over_50ms": _over_50ms[0],
    }
    with open(os.environ["OPENMFA_BENCH_PROBE"], "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
    _longest[:] = [0.0, 0.0, 0.0]
    _count[:] = [0, 0, 0]
    _over_50ms[0] = 0


def main() -> int:
    gc.callbacks.append(_callback)
    signal.signal(signal.SIGUSR1, _report)
    from backend.cli.main import main as openmfa

    return openmfa(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
