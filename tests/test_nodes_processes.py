"""Two real ``openmfa run`` processes on one database (SQLite file and PostgreSQL): each duty
is held by one node; ``kill -9`` of the holder hands its duties to the other once the leases
run out (measured); a node stopped with SIGTERM shows as stopped and holds nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.support.cli import run_in_process
from tests.support.process import ServerProcess, free_port, wait_for

HEARTBEAT, TIMEOUT = 0.5, 2.0
DUTIES = {"directory-sync", "retention"}


def nodes(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``openmfa nodes --json`` by pid (the nodes' ids are random)."""
    shown = run_in_process(["nodes", "--json"], env)
    assert shown.returncode == 0, shown.stderr
    return {node["pid"]: node for node in json.loads(shown.stdout)["nodes"]}


def test_kill_minus_nine_hands_the_duties_over_and_sigterm_releases(
    database_url: str, tmp_path: Path
) -> None:
    env = {
        "OPENMFA_DATABASE_URL": database_url,
        "OPENMFA_KEY_FILE": str(tmp_path / "server.key"),  # one server key for both
        "OPENMFA_NODE_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "OPENMFA_NODE_TIMEOUT_SECONDS": str(TIMEOUT),
    }
    cli_env = {"OPENMFA_HOME": str(tmp_path / "cli"), **env}
    (tmp_path / "cli").mkdir()
    first = ServerProcess(tmp_path / "a", free_port(), {**env, "OPENMFA_NODE_NAME": "a"})
    second = ServerProcess(tmp_path / "b", free_port(), {**env, "OPENMFA_NODE_NAME": "b"})
    with first:
        assert first.process is not None
        a_pid = first.process.pid
        wait_for(
            lambda: set(nodes(cli_env).get(a_pid, {}).get("duties", ())) >= DUTIES,
            15,
            "node a to take the duties",
        )
        with second:
            assert second.process is not None
            b_pid = second.process.pid
            wait_for(lambda: b_pid in nodes(cli_env), 15, "node b to register")
            time.sleep(3 * HEARTBEAT)  # a window for b to (wrongly) take a duty: it must not
            shown = nodes(cli_env)
            assert shown[b_pid]["state"] == "alive"
            assert shown[b_pid]["duties"] == []
            assert set(shown[a_pid]["duties"]) >= DUTIES

            first.process.kill()  # kill -9: no clean stop, the leases must run out
            first.process.wait(timeout=10)
            killed = time.monotonic()
            wait_for(
                lambda: set(nodes(cli_env)[b_pid]["duties"]) >= DUTIES,
                TIMEOUT + 10,
                "node b to take the dead node's duties",
            )
            handover = time.monotonic() - killed
            print(f"handover after kill -9: {handover:.2f} s (timeout {TIMEOUT} s)")  # noqa: T201
            # Not before the lease could have run out (renewed every TIMEOUT / 3).
            assert handover >= TIMEOUT / 3
            wait_for(lambda: nodes(cli_env)[a_pid]["state"] == "dead", 10, "a to show as dead")

            assert second.terminate() == 0
            shown = nodes(cli_env)
            assert shown[b_pid]["state"] == "stopped"
            assert shown[b_pid]["duties"] == []
            assert shown[a_pid]["duties"] == []
