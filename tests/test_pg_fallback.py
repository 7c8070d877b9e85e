"""The PostgreSQL tests run wherever the test command runs: with no server at
OPENMFA_TEST_PG_URL they start a throw-away one from Debian's binaries (tests/conftest.py),
and with no binaries either they fail with the reason, never skip."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.process import free_port

ROOT = Path(__file__).resolve().parent.parent
# A test that needs the `postgres_url` fixture and passes only on a live server.
TARGET = "tests/test_database_urls.py::test_a_node_connects_past_a_dead_first_host"


def run_pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    closed = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test"
    environment = {**os.environ, "OPENMFA_TEST_PG_URL": closed, **env}
    environment.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-s",
            "-n",
            "0",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'inner'}",
            TARGET,
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.postgres
def test_with_no_server_answering_a_throw_away_one_is_used(tmp_path: Path) -> None:
    result = run_pytest(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed" in output, output
    assert "throw-away server from Debian's binaries" in output  # the report header
    started = re.search(r"throw-away PostgreSQL (\S+) in (\S+)", output)
    assert started is not None, output
    assert ":5432/" not in started.group(1)
    assert not Path(started.group(2)).exists(), "the throw-away server's directory is left"


def test_with_no_binaries_either_the_postgres_tests_fail_not_skip(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, OPENMFA_TEST_PG_BIN=str(tmp_path / "no-such-bin"))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "1 error" in output, output
    assert "skipped" not in output
    assert "no PostgreSQL server binaries" in output
    assert "is not reachable" in output
