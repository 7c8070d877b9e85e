"""What a portal sign-in costs the server, to compare the per-address limit in the database
(migration 0015, shared by every node) with the in-process one it replaced.

Starts ``openmfa run`` pinned to one CPU and signs in through the portal form, one sign-in
after another (GET the form, POST it, a fresh cookie jar each time), and reports the
server's CPU per sign-in read from /proc (all its threads, argon2id's pool included: robust
on a busy machine, unlike wall time) and the median wall time. Three kinds:

* ``right``: the right password (the limiter claims, argon2id checks, the claim is released);
* ``wrong``: a wrong password (claimed and kept; the address limit is set high enough);
* ``unknown``: made-up names past the unknown-user budget: no argon2id CPU at all, so the
  rest of the path (page, limiter, audit row) is what is measured.

Everything is set up through the ``openmfa`` command beside this Python, so the same script
measures another checkout: ``/other/checkout/.venv/bin/python bench/web_sign_in.py``.

    python bench/web_sign_in.py [--count 200] [--postgres ADMIN_URL]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._process import EXE, free_port, serving
from bench._setup import fresh_postgres

PASSWORD = "correct horse battery staple"  # noqa: S105 - a benchmark user's
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _openmfa(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    subprocess.run(
        [str(EXE), *args], env=env, input=stdin, text=True, check=True, stdout=subprocess.DEVNULL
    )


def _sign_ins(
    port: int, pid: int, names: list[str], password: str
) -> tuple[float, float, dict[int, int]]:
    """Sign in once per name: (server CPU ms per sign-in, median wall ms, statuses)."""
    statuses: dict[int, int] = {}
    walls: list[float] = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        cpu_before = _cpu_seconds(pid)
        for name in names:
            http.cookies.clear()
            started = time.perf_counter()
            page = http.get("/portal/sign-in")
            found = _CSRF.search(page.text)
            if found is None:
                raise SystemExit(f"no sign-in form: {page.status_code}")
            form = {"csrf_token": found.group(1), "username": name, "password": password}
            answer = http.post("/portal/sign-in", data=form)
            walls.append(time.perf_counter() - started)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        cpu = _cpu_seconds(pid) - cpu_before
    return cpu / len(names) * 1000, statistics.median(walls) * 1000, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="sign-ins per kind")
    parser.add_argument("--postgres", help="admin URL; a database beside it is re-created")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="openmfa-bench-signin-"))
    database_url = fresh_postgres(args.postgres, "openmfa_bench_limits") if args.postgres else ""
    env = {
        **os.environ,
        "OPENMFA_HOME": str(home),
        "OPENMFA_DATABASE_URL": database_url,
        # Wrong passwords must neither lock the user nor block the address mid-run, and
        # made-up names must be past their budget from the start.
        "OPENMFA_WEB_SIGN_IN_ADDRESS_LIMIT": "1000",
        "OPENMFA_WEB_SIGN_IN_ADDRESS_WINDOW_SECONDS": "10",
        "OPENMFA_UNKNOWN_USER_CHECKS_PER_SECOND": "1",
    }
    _openmfa(env, "db", "upgrade")
    _openmfa(env, "user", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    _openmfa(env, "policy", "set", "otp_max_failures", "100")
    port = free_port()
    kinds = {
        "right": (["alice"] * args.count, PASSWORD),
        # Under the lockout of 100: the right sign-ins between kinds reset the count.
        "wrong": (["alice"] * min(args.count, 99), "not the password"),
        "unknown": ([f"nobody{n}" for n in range(args.count)], "not the password"),
    }
    print(f"database: {'PostgreSQL' if database_url else 'SQLite'}, {args.count} sign-ins each")
    with serving(home, port, {k: v for k, v in env.items() if k.startswith("OPENMFA_")}) as server:
        _sign_ins(port, server.pid, ["alice"] * 20, PASSWORD)  # warm-up
        for kind, (names, password) in kinds.items():
            cpu, wall, statuses = _sign_ins(port, server.pid, names, password)
            print(
                f"{kind:8} server CPU {cpu:6.2f} ms/sign-in, median wall {wall:6.2f} ms, {statuses}"
            )


if __name__ == "__main__":
    main()
