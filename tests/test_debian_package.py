"""The Debian package (``make deb``), built, checked, installed on this machine, run as its
system user, and removed and purged again.

Needs root and apt (CI runs as root); elsewhere the module is skipped with the reason. It
refuses to run where an ``openmfa`` package or user already exists: it would replace them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.freeradius import free_udp_port
from tests.support.process import free_port, stop_process, wait_for

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/var/lib/openmfa")
CONFIG = Path("/etc/openmfa")
VENV = Path("/opt/openmfa")
UNITS = [
    Path("/lib/systemd/system/openmfa.service"),
    Path("/lib/systemd/system/openmfa-radius.service"),
]

# Every unit runs with these; no capability at all unless a drop-in grants one (docs).
SANDBOX = {
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "SystemCallFilter=@system-service",
}


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the Debian package test installs a package: it needs root"
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return "the Debian package test needs apt-get and dpkg (a Debian or Ubuntu machine)"
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "openmfa"], capture_output=True, text=True
    )
    if "installed" in installed.stdout.split():
        return "an openmfa package is installed on this machine; the test would replace it"
    try:
        pwd.getpwnam("openmfa")
    except KeyError:
        return None
    return "a user named openmfa exists on this machine; the test would remove it"


pytestmark = [
    pytest.mark.debian,
    pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable())),
]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A command that must succeed; its output in the failure message otherwise."""
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    assert done.returncode == 0, (
        f"{' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done


@pytest.fixture(scope="module")
def build() -> subprocess.CompletedProcess[str]:
    """``make deb``: the package built from (a copy of) this tree, then lintian on it."""
    return run("make", "-C", str(ROOT), "deb", timeout=900)


@pytest.fixture(scope="module")
def deb(build: subprocess.CompletedProcess[str]) -> Path:
    """The one package ``make deb`` made."""
    packages = sorted((ROOT / "build" / "deb").glob("openmfa_*.deb"))
    assert len(packages) == 1, packages
    return packages[0]


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    """The package installed with apt-get; purged afterwards whatever happens."""
    try:
        run("apt-get", "install", "-y", "--no-install-recommends", str(deb), timeout=600)
        yield deb
    finally:
        subprocess.run(["apt-get", "purge", "-y", "openmfa"], capture_output=True, timeout=600)


def test_lintian_finds_no_errors(build: subprocess.CompletedProcess[str]) -> None:
    # `make deb` ends with `lintian --fail-on error`: it succeeded, so there was none; the
    # output is checked too, in case the target is ever changed to keep going.
    assert "lintian --fail-on error" in build.stdout
    assert not [line for line in build.stdout.splitlines() if line.startswith("E: ")]


def test_contents_and_conffiles(deb: Path) -> None:
    conffiles = run("dpkg-deb", "--info", str(deb), "conffiles").stdout.split()
    assert conffiles == ["/etc/openmfa/openmfa.toml", "/etc/openmfa/radius.env"]
    listing = run("dpkg-deb", "-c", str(deb)).stdout
    assert "./usr/bin/openmfa" in listing
    assert "./lib/systemd/system/openmfa.service" in listing
    assert "./var/lib/openmfa" not in listing  # made by postinst: removing never touches it


def test_install_run_as_the_system_user_remove_and_purge(installed: Path, tmp_path: Path) -> None:
    user = pwd.getpwnam("openmfa")
    assert user.pw_shell == "/usr/sbin/nologin"
    info = DATA.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o700, user.pw_uid)
    settings = (CONFIG / "openmfa.toml").stat()
    assert (stat.S_IMODE(settings.st_mode), settings.st_gid) == (0o640, user.pw_gid)
    assert stat.S_IMODE((CONFIG / "radius.env").stat().st_mode) == 0o600

    # postinst created the schema, as the service's user; the wrapper, run by root, works
    # as that user on the packaged data directory.
    assert (DATA / "openmfa.db").stat().st_uid == user.pw_uid
    run("/usr/bin/openmfa", "db", "current")
    run("runuser", "-u", "openmfa", "--", "/usr/bin/openmfa", "db", "upgrade")
    for path in DATA.iterdir():
        assert path.stat().st_uid == user.pw_uid, path

    port, radius_port = free_port(), free_udp_port()
    log_path = tmp_path / "run.log"
    command = ["setpriv", "--reuid=openmfa", "--regid=openmfa", "--init-groups", "--"]
    command += ["/opt/openmfa/bin/openmfa", "run", "--port", str(port)]
    command += ["--radius-port", str(radius_port)]
    environment = {"PATH": "/usr/bin:/bin", "OPENMFA_HOME": str(DATA)}
    environment["OPENMFA_CONFIG"] = str(CONFIG / "openmfa.toml")
    with (
        log_path.open("w") as log,
        subprocess.Popen(command, env=environment, cwd="/", stdout=log, stderr=log) as server,
    ):

        def ready() -> bool:
            assert server.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(ready, 60, "the installed openmfa run to answer /readyz")
        finally:
            assert stop_process(server, 15) == 0, log_path.read_text()

    for unit in UNITS:
        done = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert str(unit) not in done.stderr, done.stderr
        lines = set(unit.read_text().splitlines())
        assert not SANDBOX - lines, SANDBOX - lines
        assert "User=openmfa" in lines

    run("apt-get", "remove", "-y", "openmfa", timeout=600)
    assert not VENV.exists()
    assert not Path("/usr/bin/openmfa").exists()
    assert (CONFIG / "openmfa.toml").is_file()
    assert (DATA / "openmfa.db").is_file()
    assert (DATA / "server.key").is_file()

    run("apt-get", "purge", "-y", "openmfa", timeout=600)
    for path in (DATA, CONFIG, VENV, *UNITS, Path("/var/lib/openmfa-bridge")):
        assert not path.exists(), path
    with pytest.raises(KeyError):
        pwd.getpwnam("openmfa")
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "openmfa"], capture_output=True, text=True
    )
    assert "installed" not in status.stdout.split()
    assert "config-files" not in status.stdout.split()
