"""What the push fakes (:mod:`tests.fakes.apns`, :mod:`tests.fakes.fcm`) share: their TLS
files, the requests and violations they record, and waiting for their state to change."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from tests.fakes.tls import TlsFiles, make_tls

RequestT = TypeVar("RequestT")


class PushFake(Generic[RequestT]):
    """The shape both push fakes share (docs: the push contract): ``url``, ``ca_file``,
    ``requests``, ``violations``, :meth:`wait_for`, :meth:`wait_until`."""

    #: how the fake names itself in assertion messages ("APNs fake")
    label: ClassVar[str]
    #: the folder below ``directory`` its TLS files go to when none are given
    tls_folder: ClassVar[str]

    def __init__(self, directory: Path, tls: TlsFiles | None) -> None:
        self._directory = directory
        self._tls = tls
        self.requests: list[RequestT] = []
        self.violations: list[str] = []
        self.connections_made = 0
        #: seconds every answer waits before it is sent (a slow service)
        self.delay = 0.0
        self._changed: asyncio.Event | None = None
        self.url = ""
        self.port = 0

    @property
    def ca_file(self) -> Path:
        """The CA certificate a client must trust to reach :attr:`url` (``*_ca_file``)."""
        if self._tls is None:
            raise RuntimeError("start() the fake first")
        return self._tls.ca_file

    def _starting(self) -> TlsFiles:
        """The TLS files to serve (made now unless given); waiting works from here on."""
        if self._tls is None:
            self._tls = make_tls(self._directory / self.tls_folder)
        self._changed = asyncio.Event()
        return self._tls

    def assert_clean(self) -> None:
        """Fail the test when anything on the wire was not what the service expects."""
        if self.violations:
            raise AssertionError(
                f"{self.label} saw wire-format violations:\n" + "\n".join(self.violations)
            )

    # -- waiting -----------------------------------------------------------------------------

    # The fakes' shared shape (push contract) takes timeouts as arguments: hence the noqa.
    async def wait_until(
        self,
        condition: Callable[[], bool],
        timeout: float,  # noqa: ASYNC109
        what: str,
    ) -> None:
        """Wait until ``condition()`` holds (re-checked whenever the fake's state changes)."""
        if self._changed is None:
            raise RuntimeError("start() the fake first")
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.label}: timed out after {timeout} s waiting for {what}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[RequestT]:  # noqa: ASYNC109
        """Wait until ``count`` requests were received (answered or not); return them all."""
        await self.wait_until(lambda: len(self.requests) >= count, timeout, f"{count} requests")
        return list(self.requests)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _violation(self, text: str) -> None:
        self.violations.append(text)
        self._notify()
