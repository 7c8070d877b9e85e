"""Processes for the benchmarks: ``openmfa run`` on a free port, ready, and stopped again.

Shared by the benchmarks that run the server as a process of its own (bench/totp_gateway.py,
bench/radius_bridge.py, bench/push.py, bench/webpush.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

EXE = Path(sys.executable).parent / "openmfa"  # the venv's command


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A free loopback port: TCP, or UDP with ``socket.SOCK_DGRAM``."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_ok(url: str) -> bool:
    """``GET url`` answers 200."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 0.1 s; SystemExit naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def start_server(
    home: Path,
    port: int,
    env: Mapping[str, str] | None = None,
    *,
    cpu: int = 0,
    log: Path | None = None,
    timeout: float = 30.0,
) -> subprocess.Popen[bytes]:
    """``openmfa run --port PORT`` on the data directory ``home``, pinned to ``cpu``, with
    RADIUS off and log level warning (``env`` adds or overrides ``OPENMFA_*`` variables).

    Returns once ``/readyz`` answers 200. Its output goes to the file ``log`` if given;
    otherwise stdout is dropped and stderr kept for the error: if the server exits or is not
    ready within ``timeout`` seconds, it is killed and SystemExit says why.
    """
    environ = {
        **os.environ,
        "OPENMFA_HOME": str(home),
        "OPENMFA_LOG_LEVEL": "warning",
        "OPENMFA_RADIUS_PORT": "0",  # UDP 1812 may be taken; a standalone bridge talks HTTP
        **(env or {}),
    }
    command = ["taskset", "-c", str(cpu), str(EXE), "run", "--port", str(port)]
    if log is None:
        server = subprocess.Popen(
            command, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    else:
        with log.open("wb") as out:
            server = subprocess.Popen(command, env=environ, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not http_ok(f"http://127.0.0.1:{port}/readyz"):
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            _, err = server.communicate(timeout=10)
            detail = err.decode(errors="replace") if err is not None else f"see {log}"
            raise SystemExit(f"server did not become ready:\n{detail}")
        time.sleep(0.1)
    return server


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> float:
    """SIGTERM, and SIGKILL if it has not exited after ``timeout`` seconds; the seconds it
    took to exit."""
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return time.monotonic() - began


@contextmanager
def serving(
    home: Path,
    port: int,
    env: Mapping[str, str] | None = None,
    *,
    cpu: int = 0,
    log: Path | None = None,
    timeout: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`start_server` for the ``with`` block, and :func:`stop` at its end."""
    server = start_server(home, port, env, cpu=cpu, log=log, timeout=timeout)
    try:
        yield server
    finally:
        stop(server)
