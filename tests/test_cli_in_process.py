"""The in-process CLI runner (tests/support/cli.py) answers as the installed script does, and
leaves the test process as it found it."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from tests.support.cli import run_in_process, runs_in_process
from tests.support.process import Cli, CliProcess


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Cli, Cli]:
    """The same command line twice: in this process, and as the script in a subprocess."""
    inside, outside = Cli(tmp_path / "a"), CliProcess(tmp_path / "b")
    for cli in (inside, outside):
        cli("db", "upgrade")
    return inside, outside


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (("--version",), None),
        (("user", "add", "carol", "--password-stdin"), "correct horse battery\n"),
        (("user", "add", "dave", "--password-stdin"), "short\n"),  # refused: status 1
        (("user", "add"), None),  # bad usage: status 2
        (("user", "show", "nobody"), None),
        (("user", "delete", "nobody"), None),  # no terminal on stdin: needs --yes
        (("policy", "show", "--json"), None),
    ],
)
def test_same_status_and_output_as_the_script(
    homes: tuple[Cli, Cli], args: tuple[str, ...], stdin: str | None
) -> None:
    inside, outside = (cli(*args, stdin=stdin, check=False) for cli in homes)
    assert inside.returncode == outside.returncode, (inside, outside)
    assert inside.stdout == outside.stdout
    assert inside.stderr == outside.stderr


def test_the_process_is_left_as_it_was(tmp_path: Path) -> None:
    before_env, before_streams = dict(os.environ), (sys.stdin, sys.stdout, sys.stderr)
    root = logging.getLogger()
    before_logging = (root.level, list(root.handlers))
    result = run_in_process(
        ("user", "list"), {"OPENMFA_HOME": str(tmp_path), "OPENMFA_LOG_LEVEL": "debug"}
    )
    assert result.returncode == 1  # no database yet
    assert "openmfa db upgrade" in result.stderr
    assert dict(os.environ) == before_env
    assert (sys.stdin, sys.stdout, sys.stderr) == before_streams
    assert (root.level, list(root.handlers)) == before_logging


@pytest.mark.anyio
async def test_an_async_test_is_told_to_use_a_subprocess(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="synchronous test only"):
        run_in_process(("--version",), {"OPENMFA_HOME": str(tmp_path)})


def test_servers_run_as_subprocesses() -> None:
    assert not runs_in_process(("run", "--port", "8080"))
    assert not runs_in_process(("--home", "run", "radius", "--config", "x"))
    assert runs_in_process(("run", "--help"))
    assert runs_in_process(("--home", "run", "user", "list"))
