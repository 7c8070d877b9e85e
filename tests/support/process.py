"""The ``openmfa`` command: one-shot commands (in this process or as a subprocess), and
``openmfa run`` in the background on a free loopback port, stopped with SIGTERM (or killed)
whatever happens."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.support.cli import run_in_process, runs_in_process

EXE = Path(sys.executable).parent / "openmfa"


def system_program(name: str) -> str | None:
    """Path of a Debian-installed program, also where a user's PATH lacks it (/usr/sbin,
    /sbin), or None."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def require_program(name: str, missing: str) -> str:
    """:func:`system_program`, or a failure (not a skip) saying ``missing``."""
    found = system_program(name)
    if found is None:
        raise RuntimeError(missing)
    return found


def free_port() -> int:
    """A TCP port nobody listens on right now (on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    every: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` (and ``detail()``, when given,
    e.g. the last error seen or a server's log) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            message = f"timed out after {timeout} s waiting for {what}"
            if detail is not None:
                message = f"{message}: {detail()}"
            raise AssertionError(message)
        time.sleep(every)


async def until(
    condition: Callable[[], bool], what: str, limit: float = 10.0, every: float = 0.005
) -> None:
    """:func:`wait_for` on the event loop: poll ``condition`` (state that offers no event of
    its own) until it holds; fail with ``what`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(every)


def stop_process(process: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    return process.returncode


class Cli:
    """``cli("user", "add", "alice")`` runs ``openmfa`` on ``home`` with extra environment.

    In this process (``tests/support/cli.py``), except ``run`` and ``radius``, which serve
    until stopped; :class:`CliProcess` runs every command as the installed script.
    """

    in_process = True

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        # RADIUS off unless the test asks for it, as for ServerProcess: since `openmfa run`
        # claims its ports before anything else, tests on parallel workers that each run a
        # server (even one meant to stop at a configuration error) would race for UDP 1812.
        self.extra_env = {"OPENMFA_HOME": str(home), "OPENMFA_RADIUS_PORT": "0", **env}
        self.env = {**os.environ, **self.extra_env}

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        if self.in_process and runs_in_process(args):
            # What the test set on ``env`` after construction counts too, as it does for a
            # subprocess (tests change one variable of a prepared Cli).
            changed = {k: v for k, v in self.env.items() if os.environ.get(k) != v}
            result = run_in_process(args, {**self.extra_env, **changed}, stdin)
        else:
            result = subprocess.run(
                [str(EXE), *args],
                input=stdin,
                capture_output=True,
                text=True,
                env=self.env,
                timeout=timeout,
                check=False,
            )
        if check and result.returncode != 0:
            raise AssertionError(
                f"openmfa {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def fails(self, *args: str, stdin: str | None = None, status: int = 1) -> str:
        """Run a command that must fail with ``status``; return its stderr.

        Status 1 means an error the command reports itself: one ``openmfa: error:`` line on
        stderr, no traceback. Status 2 is argparse's bad-usage exit.
        """
        result = self(*args, stdin=stdin, check=False)
        assert result.returncode == status, (args, result.returncode, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        if status == 1:
            assert result.stderr.startswith("openmfa: error: "), result.stderr
        else:
            assert "usage: openmfa" in result.stderr, result.stderr
        return result.stderr


class CliProcess(Cli):
    """:class:`Cli` as the installed ``openmfa`` script in a subprocess, for the end-to-end
    tests of the command itself (its entry point, exit status and streams as a shell sees
    them)."""

    in_process = False


class ServerProcess:
    """``with ServerProcess(home, port, env) as server:`` runs ``openmfa run --port PORT``.

    Its stdout and stderr go to files in ``home`` (read them with :attr:`log`); readiness is
    ``/healthz`` answering. On leaving the block the process gets SIGTERM and, should it not
    exit within 15 s, SIGKILL.
    """

    def __init__(
        self,
        home: Path,
        port: int,
        env: dict[str, str],
        tls_ca: Path | None = None,
        exe: Path = EXE,
        cwd: Path | None = None,
    ) -> None:
        self.exe = exe
        self.cwd = cwd
        self.home = home
        self.port = port
        # With ``tls_ca`` the server is expected to serve HTTPS with a certificate of that CA.
        self.url = f"{'https' if tls_ca else 'http'}://127.0.0.1:{port}"
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else True
        )
        # RADIUS off unless a test asks for it (OPENMFA_RADIUS_PORT in ``env``): servers
        # running side by side would otherwise all claim UDP 1812.
        self.env = {**os.environ, "OPENMFA_HOME": str(home), "OPENMFA_RADIUS_PORT": "0", **env}
        self.stdout_path = home / "server.stdout"
        self.stderr_path = home / "server.stderr"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        """Start and wait until ``/healthz`` answers 200 (bounded)."""
        self.home.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [str(self.exe), "run", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.cwd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"openmfa run exited {self.process.returncode} during start-up:\n{self.log}"
                )
            try:
                answer = httpx.get(self.url + "/healthz", timeout=2, verify=self.verify)
                return answer.status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout, "openmfa run to answer /healthz")

    @property
    def log(self) -> str:
        """Everything the server wrote to stderr so far (its structured log)."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait for the exit status (``subprocess.TimeoutExpired`` if it hangs)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """Make sure the process is gone (SIGTERM, then SIGKILL)."""
        if self.process is not None:
            stop_process(self.process, timeout=15)

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


def request_consumed(server_port: int, client_port: int) -> bool:
    """True once the server side of the loopback connection from ``client_port`` exists and
    has read everything sent to it (its receive queue is empty), i.e. the server has the
    request in hand. Reads ``/proc/net/tcp`` (Linux)."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote and fields[3] == "01":  # ESTABLISHED
            rx_queue = int(fields[4].split(":")[1], 16)
            return rx_queue == 0
    return False
