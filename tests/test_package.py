"""The released artefacts work without a checkout: the sdist and the wheel are built the way a
release builds them (``python -m build``), each is installed with its dependencies into a fresh
venv, and from a directory outside the checkout ``openmfa db upgrade`` migrates a new database
and ``openmfa run`` serves ``/readyz``.

Building and installing take most of a minute, so the artefacts are built once for the module
and each venv is made once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest

from backend.store.migrations import SCHEMA_REVISION
from tests.support.process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
# What a checkout holds that is no source: copying it would only slow the build down.
_NOT_SOURCE = shutil.ignore_patterns(
    ".venv",
    ".git",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    ".*_cache",
    ".hypothesis",
    "*.db*",
)
MIGRATIONS = [p.name for p in (ROOT / "backend" / "migrations" / "versions").glob("*.py")]


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would put the checkout on ``sys.path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OPENMFA_"))}
    env.pop("VIRTUAL_ENV", None)
    return {**env, **extra}


def _run(args: list[str], cwd: Path, timeout: float, **env: str) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=_clean_env(**env), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built from a copy of the source tree (so that the build's
    ``build/`` and ``*.egg-info`` never land in the checkout). ``python -m build`` builds the
    wheel from the sdist, so the wheel also proves the sdist is complete."""
    work = tmp_path_factory.mktemp("package")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    dist = work / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)], work, 600)
    (wheel,) = dist.glob("openmfa-*.whl")
    (sdist,) = dist.glob("openmfa-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_both_artefacts_carry_the_migrations(artefacts: dict[str, Path]) -> None:
    with zipfile.ZipFile(artefacts["wheel"]) as wheel:
        names = set(wheel.namelist())
    for name in ["env.py", "script.py.mako", *(f"versions/{m}" for m in MIGRATIONS)]:
        assert f"backend/migrations/{name}" in names
    # Every file of the packages, not only modules: a template or data file added later
    # without its package-data pattern would otherwise be missing from installs alone.
    for package in ("backend", "webportal", "radius_bridge", "radius_vocabulary"):
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert path.relative_to(ROOT).as_posix() in names, path
    # A top-level ``alembic`` package in the wheel would shadow the Alembic library.
    assert not any(n.startswith("alembic/") for n in names)
    with tarfile.open(artefacts["sdist"]) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    assert {f"backend/migrations/versions/{m}" for m in MIGRATIONS} <= members
    # Enough to build, test and read about it (MANIFEST.in).
    assert {"Makefile", "tests/conftest.py", "tests/support/process.py", "docs/install.md"} <= (
        members
    )


@pytest.fixture(scope="module", params=["wheel", "sdist"])
def installed(
    request: pytest.FixtureRequest,
    artefacts: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A fresh venv with one artefact installed (dependencies from the index, through pip's
    cache); its ``bin`` directory."""
    venv = tmp_path_factory.mktemp(f"venv-{request.param}")
    outside = venv.parent
    _run([sys.executable, "-m", "venv", str(venv)], outside, 120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    _run([*pip, str(artefacts[request.param])], outside, 600)
    return venv / "bin"


def test_the_installed_command_migrates_and_serves(installed: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"  # the working directory: no checkout in it or above it
    outside.mkdir()
    home = tmp_path / "home"
    python = str(installed / "python")

    where = _run(
        [python, "-c", "import alembic, backend; print(alembic.__file__); print(backend.__file__)"],
        outside,
        60,
    )
    for path in where.split():
        assert Path(path).is_relative_to(installed.parent), where
        assert not Path(path).is_relative_to(ROOT), where

    upgraded = _run(
        [str(installed / "openmfa"), "db", "upgrade"], outside, 120, OPENMFA_HOME=str(home)
    )
    # The installed package knows every migration of this checkout.
    assert upgraded.startswith(f"database at {SCHEMA_REVISION}:"), upgraded
    current = _run(
        [str(installed / "openmfa"), "db", "current"], outside, 60, OPENMFA_HOME=str(home)
    )
    assert current.strip() == SCHEMA_REVISION

    env = {**_clean_env(), "OPENMFA_RADIUS_PORT": str(free_port())}
    with ServerProcess(home, free_port(), env, exe=installed / "openmfa", cwd=outside) as server:
        assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200
        # The templates and static files came along (package data, not only modules).
        page = httpx.get(server.url + "/portal/", timeout=5, follow_redirects=True)
        assert page.status_code == 200, page.text
        assert "text/html" in page.headers["content-type"]
        assert httpx.get(server.url + "/static/style.css", timeout=5).status_code == 200
        assert server.terminate() == 0
