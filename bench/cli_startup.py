"""Start-up time of the ``openmfa`` command: median wall time of repeated runs.

Each command runs as its own process, as an operator types it, against a migrated SQLite home
in a temporary directory (one user, so ``user list`` reads a row). The first run of each
command is a warm-up (file cache, ``.pyc``) and is not counted.

    python bench/cli_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = Path(sys.executable).parent / "openmfa"  # the venv's command
COMMANDS = (
    ("--help",),
    ("--version",),
    ("user", "list"),
    ("db", "current"),
    ("audit", "--limit", "5"),
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(argv: tuple[str, ...], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each run. CPU time (user + system of the child) varies less
    than wall time when other work shares the machine."""
    subprocess.run([str(EXE), *argv], env=env, check=True, capture_output=True)  # warm-up
    walls, cpus = [], []
    for _ in range(runs):
        cpu, start = _cpu(), time.perf_counter()
        subprocess.run([str(EXE), *argv], env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    return walls, cpus


def main() -> None:
    """Print the median, minimum and maximum wall time and the median CPU time of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "OPENMFA_HOME": home}
        subprocess.run([str(EXE), "db", "upgrade"], env=env, check=True, capture_output=True)
        subprocess.run([str(EXE), "user", "add", "alice"], env=env, check=True, capture_output=True)
        print(
            f"{'command':<26} {'median':>8} {'min':>8} {'max':>8} {'cpu':>8}   ({args.runs} runs)"
        )
        for argv in COMMANDS:
            walls, cpus = _time(argv, env, args.runs)
            print(
                f"openmfa {' '.join(argv):<18} {statistics.median(walls):>7.3f}s"
                f" {min(walls):>7.3f}s {max(walls):>7.3f}s {statistics.median(cpus):>7.3f}s"
            )


if __name__ == "__main__":
    main()
