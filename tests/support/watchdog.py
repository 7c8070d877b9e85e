"""Stop a test server whose owners have all died without stopping it.

    python watchdog.py PGID --owner PID                          # slapd: the pytest worker
    python watchdog.py PGID --owner PID --state FILE --lock FILE # the DC: the owners in the
                                                                 # state file, else the starter

The fixtures stop their servers in finalizers, but a worker killed by a timeout or by
SIGKILL runs no finalizer, and a DC shared by a run's workers outlives the worker that
started it by design. This process (its own session, standard library only, started next to
the server) checks once a second; when no owner is alive any more it sends SIGTERM to the
server's process group, then SIGKILL after 10 s. It exits as soon as the server is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def owners_from_state(state: Path, lock: Path, pgid: int) -> list[int] | None:
    """The owner pids in the state file, or ``None`` when the file does not describe this
    server (not written yet while it starts, or removed when it was stopped)."""
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            return None
        if data.get("pid") != pgid:
            return None
        return [int(p) for p in data.get("users", [])]


def stop(pgid: int) -> None:
    """SIGTERM to the group, SIGKILL if it is still there after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pgid):
                return
            time.sleep(0.1)


def start_watchdog(pgid: int, *args: str) -> None:
    """Start a watchdog for ``pgid`` (arguments as in the module's docstring), detached:
    ``setsid --fork`` makes it nobody's child, so no Popen is left running behind us."""
    subprocess.run(
        ["setsid", "--fork", sys.executable, __file__, str(pgid), *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        check=True, timeout=10,
    )  # fmt: skip


def main() -> None:
    """Watch until the server is gone, stopping it when its owners are."""
    parser = argparse.ArgumentParser()
    parser.add_argument("pgid", type=int)
    parser.add_argument("--owner", type=int, required=True)
    parser.add_argument("--state", type=Path)
    parser.add_argument("--lock", type=Path)
    args = parser.parse_args()
    while alive(args.pgid):
        owners = [args.owner]
        if args.state is not None:
            owners = owners_from_state(args.state, args.lock, args.pgid) or owners
        if not any(alive(p) for p in owners):
            stop(args.pgid)
            return
        time.sleep(1)  # a poll interval, not a synchronisation: nothing waits on us


if __name__ == "__main__":
    main()
