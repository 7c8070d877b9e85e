"""Start-up cost of the ``openmfa`` command, guarded by what it imports rather than by a clock.

Timings depend on the machine and its load; the set of modules a command loads does not. Each
check runs the command in a fresh interpreter (a subprocess: this test process has loaded
everything already) and lists the heavy packages it imported. The figures are in
docs/performance.md (`bench/cli_startup.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import openmfa

# What each command may not load: the web stack is for `openmfa run` only, the database and
# settings libraries for commands that use them, httpx for the reference authenticator, the
# PostgreSQL driver, SMTP and GeoIP libraries for set-ups and commands that use them.
NOT_FOR_HELP = ("sqlalchemy", "sqlmodel", "pydantic", "starlette", "uvicorn", "httpx", "asyncio")
NOT_FOR_ADMIN = ("starlette", "uvicorn", "httpx", "jinja2", "h2", "aiosmtplib", "asyncpg", "geoip2")

PROBE = """
import json, sys
from backend.cli.main import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
sys.stdout.flush()
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)
"""


def _loaded(home: Path, *argv: str) -> set[str]:
    """The top-level packages ``openmfa ARGV`` imported, in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "OPENMFA_HOME": str(home)},
        timeout=60,
        check=True,
    )
    return set(json.loads(result.stderr.splitlines()[-1]))


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("--version",),
        ("user", "--help"),
        ("client", "add", "--help"),
        ("policy", "set", "--help"),
        ("device", "--help"),
    ],
)
def test_help_loads_no_database_settings_or_web_library(tmp_path: Path, argv: tuple[str]) -> None:
    assert not _loaded(tmp_path, *argv) & set(NOT_FOR_HELP)


def test_a_read_only_command_loads_no_web_stack(tmp_path: Path) -> None:
    openmfa(tmp_path, "db", "upgrade")
    openmfa(tmp_path, "user", "add", "alice")
    loaded = _loaded(tmp_path, "user", "list")
    assert "sqlalchemy" in loaded  # the probe ran the command
    assert not loaded & set(NOT_FOR_ADMIN)
