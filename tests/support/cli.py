"""The ``openmfa`` command run inside the test process: ``main(argv)`` with its own streams.

A subprocess pays the interpreter start and every import again (0.2-0.8 s a command); most
CLI tests want the command's behaviour, not its process. :func:`run_in_process` gives the
same answer a subprocess would (a :class:`subprocess.CompletedProcess` with the exit status
and the text of stdout and stderr), and puts back what a command may change in the process:
the environment, the standard streams, and the logging set-up. A traceback the command would
have printed goes to its stderr with status 1, as the interpreter does.

Long-running commands (``run``, ``radius``) install signal handlers and serve until stopped:
they always run as a subprocess (``tests/support/process.py``), as do the few end-to-end tests
that check the installed script itself.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from backend.cli.main import main

LONG_RUNNING = frozenset({"run", "radius"})
_one_at_a_time = threading.Lock()


def runs_in_process(args: Sequence[str]) -> bool:
    """Whether ``openmfa ARGS`` can run in this process (anything but a server)."""
    values = iter(args)
    for arg in values:
        if arg in ("--home", "--config"):
            next(values, None)
        elif not arg.startswith("-"):
            return arg not in LONG_RUNNING or "--help" in args or "-h" in args
    return True


def run_in_process(
    args: Sequence[str], env: Mapping[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``openmfa ARGS`` with ``env`` added to the environment, ``stdin`` as standard input."""
    _no_running_loop()
    # The environment and the streams belong to the whole process: one command at a time.
    if not _one_at_a_time.acquire(blocking=False):
        raise AssertionError("the CLI runs in process one command at a time (no threads)")
    out, err = io.StringIO(), io.StringIO()
    try:
        with _environment(env), _streams(stdin or "", out, err), _logging_kept():
            try:
                status = main(list(args))
            except SystemExit as exc:  # argparse: --help, --version, bad usage
                status = _exit_status(exc, err)
            except BaseException:  # what the interpreter would print on the way out
                traceback.print_exc(file=err)
                status = 1
    finally:
        _one_at_a_time.release()
    return subprocess.CompletedProcess(
        ["openmfa", *args], status, stdout=out.getvalue(), stderr=err.getvalue()
    )


def _no_running_loop() -> None:
    # The command calls asyncio.run, which cannot nest: an async test must use a subprocess.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise AssertionError("run the CLI in process from a synchronous test only")


def _exit_status(exc: SystemExit, err: io.StringIO) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=err)
    return 1


@contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _streams(stdin: str, out: io.StringIO, err: io.StringIO) -> Iterator[None]:
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved


@contextmanager
def _logging_kept() -> Iterator[None]:
    """Undo what a command does to the logging set-up (handlers on our streams, levels)."""
    loggers = [logging.getLogger(), *map(logging.getLogger, ("openmfa", "uvicorn"))]
    saved = [(lg, lg.level, list(lg.handlers), list(lg.filters)) for lg in loggers]
    try:
        yield
    finally:
        for logger, level, handlers, filters in saved:
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.filters[:] = filters
