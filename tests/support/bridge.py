"""A RADIUS bridge for interop tests: the real :class:`~radius_bridge.runner.Bridge` on its own
event loop in a background thread, talking real HTTP to a backend and real UDP to clients.

``with BridgeThread(settings) as bridge:`` binds the sockets, loads the client list and
serves until the block ends. The test thread reads the bridge's state (client revision,
held requests, metrics) to wait on observable conditions, and can move the bridge's clock
(``advance``) to let States expire without sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from radius_bridge.config import BridgeSettings, ListenAddress
from radius_bridge.runner import Bridge
from radius_bridge.server import loop_factory
from radius_vocabulary.dictionary import DICTIONARY_FILE
from tests.support.process import wait_for

if TYPE_CHECKING:
    from backend.authenticator.client import AppClient
    from tests.support.freeradius import FreeRadius

T = TypeVar("T")


class BridgeThread:
    """A started bridge on a loop of its own (uvloop when installed, as in production)."""

    def __init__(
        self,
        settings: BridgeSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        stop_grace: float = 2.0,
    ) -> None:
        self.settings = settings
        self.loop = loop_factory()()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._transport = transport
        self._stop_grace = stop_grace
        self._offset = 0.0
        self._bridge: Bridge | None = None
        self._stopped = False

    # -- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> BridgeThread:
        self._thread.start()
        try:
            self._bridge = self.run(self._make())
            self.run(self._bridge.start())
        except BaseException:
            self._close_loop()
            raise
        return self

    async def _make(self) -> Bridge:
        return Bridge(
            self.settings,
            transport=self._transport,
            clock=self._clock,
            stop_grace=self._stop_grace,
        )

    def _clock(self) -> float:
        return self.loop.time() + self._offset

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self._close_loop()

    def stop(self) -> None:
        """Stop the bridge (held requests are left unanswered, as on SIGTERM)."""
        if self._bridge is not None and not self._stopped:
            self._stopped = True
            self.run(self._bridge.stop())

    def _close_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the bridge's loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- what tests look at ---------------------------------------------------------------------

    @property
    def bridge(self) -> Bridge:
        assert self._bridge is not None, "use BridgeThread as a context manager"
        return self._bridge

    def port(self, family: int = socket.AF_INET) -> int:
        """The UDP port bound for the first listen address of ``family``."""
        for endpoint in self.bridge.endpoints:
            if endpoint.address.family_v6 == (family == socket.AF_INET6):
                return endpoint.bound.port
        raise LookupError("no listen address of that family")

    @property
    def revision(self) -> str | None:
        """The revision of the client list in use."""
        return self.bridge.revision

    @property
    def held(self) -> int:
        """Requests in progress."""
        return self.bridge.held

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """A sample of the bridge's registry (0 when it was never touched)."""
        value = self.bridge.metrics.registry.get_sample_value(name, dict(labels or {}))
        return 0.0 if value is None else value

    def advance(self, seconds: float) -> None:
        """Move the bridge's clock (States, pending pushes, duplicate cache) forward."""
        self._offset += seconds

    def refresh(self) -> bool:
        """Re-read the client list now (as the periodic refresh does)."""
        return self.run(self.bridge.refresh_clients())


def bridge_settings(
    backend_url: str | tuple[str, ...],
    token: str,
    listen: tuple[str, ...] = ("127.0.0.1",),
    **extra: Any,
) -> BridgeSettings:
    """Settings for a test bridge: ephemeral ports, a fast client refresh; one backend URL
    or several."""
    values: dict[str, Any] = {
        "refresh_seconds": 0.2,
        "http_timeout": 5.0,
        "long_poll_seconds": 25.0,
        "max_held": 1000,
        "receive_buffer_bytes": 1 << 20,
    }
    values.update(extra)
    return BridgeSettings(
        backend_urls=(backend_url,) if isinstance(backend_url, str) else backend_url,
        token=token,
        listen=tuple(ListenAddress(host, 0) for host in listen),
        **values,
    )


# -- a backend and a bridge together ------------------------------------------------------------


class RadiusLab:
    """A live backend (:class:`~tests.support.api.ApiHarness`, real HTTP on loopback) and a
    bridge (:class:`BridgeThread`) fetching its clients from it with a bridge-scope token.

    ``lab.client(name, address, mode=...)`` adds or changes a RADIUS client through the
    backend's service and waits until the bridge uses the new client list; ``lab.user``
    enrols a user with the reference authenticator; ``lab.pyrad(source)`` is a pyrad client
    sending from a loopback address of the test's choosing.
    """

    def __init__(
        self,
        home: Path,
        listen: tuple[str, ...] = ("127.0.0.1",),
        bridge_options: Mapping[str, Any] | None = None,
        public_url: str = "http://127.0.0.1:8080",
        backends: Callable[[str], tuple[str, ...]] | None = None,
    ) -> None:
        from backend.config import load_settings
        from tests.support.api import ApiHarness
        from tests.support.clock import FakeClock
        from tests.support.database import migrated_sqlite

        migrated_sqlite(home)
        self.api = ApiHarness(
            load_settings(config_file=None, home=home, public_url=public_url),
            FakeClock(),
        )
        self._listen = listen
        self._bridge_options = dict(bridge_options or {})
        # The bridge's backend URLs given the live backend's (default: that one alone).
        self._backends = backends or (lambda url: (url,))
        self._clients: set[str] = set()
        self._pyrad: list[Any] = []
        self.bridge: BridgeThread
        self.token = ""

    def __enter__(self) -> RadiusLab:
        from tests.support.api import ADMIN

        self.api.__enter__()
        try:
            self.token = self.api.run(self.api.services.tokens.create(ADMIN, "lab", scope="bridge"))
            self.bridge = BridgeThread(
                bridge_settings(
                    self._backends(self.api.url),
                    self.token,
                    self._listen,
                    **self._bridge_options,
                )
            )
            self.bridge.__enter__()
        except BaseException:
            self.api.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.bridge.__exit__(exc_type, exc, tb)
        finally:
            self.api.__exit__(exc_type, exc, tb)

    @property
    def port(self) -> int:
        return self.bridge.port()

    def client(
        self, name: str, addresses: Sequence[str] | None, secret: str | None, **changes: Any
    ) -> None:
        """Add client ``name`` or change it to these settings; return once the bridge uses
        the resulting client list (bounded wait on its revision)."""
        from backend.domain.radius import ClientChanges
        from tests.support.api import ADMIN

        service = self.api.services.radius_clients
        wanted = ClientChanges(
            addresses=None if addresses is None else list(addresses), secret=secret, **changes
        )
        if name in self._clients:
            self.api.run(service.update(ADMIN, name, wanted))
        else:
            self.api.run(service.add(ADMIN, name, wanted))
            self._clients.add(name)
        revision = self.api.run(service.revision())
        wait_for(
            lambda: self.bridge.revision == revision, 10, f"the bridge to load revision {revision}"
        )

    def upstream_client(
        self,
        name: str,
        source: str,
        secret: str,
        upstream: FreeRadius,
        upstream_secret: str,
        **changes: Any,
    ) -> None:
        """Client ``name`` at ``source``: push mode with primary RADIUS towards ``upstream``
        (5 s upstream timeout), ``changes`` on top; as :meth:`client`."""
        settings: dict[str, Any] = {
            "mode": "push",
            "primary": "radius",
            "upstream_host": upstream.host,
            "upstream_port": upstream.port,
            "upstream_secret": upstream_secret,
            "upstream_timeout": 5.0,
        }
        settings.update(changes)
        self.client(name, [source], secret, **settings)

    def user(self, name: str, password: str | None = None) -> AppClient:
        """A user (with a local password when given) with an activated reference
        authenticator."""
        self.unenrolled_user(name, password)
        return self.api.device(name)

    def unenrolled_user(self, name: str, password: str | None = None) -> None:
        """A user (with a local password when given) with no device and no token."""
        from tests.support.api import ADMIN

        self.api.add_user(name)
        if password is not None:
            self.api.run(self.api.services.users.set_password(ADMIN, name, password))

    def audit(self, user: str, action: str) -> list[Any]:
        """Audit rows of ``user`` with ``action``, newest first."""
        return self.api.run(self.api.services.audit.query(user_name=user, action=action))

    def pyrad(self, source: str, secret: str, timeout: float = 10, retries: int = 1) -> Any:
        """A pyrad client bound to ``source``, talking to the bridge, requiring signed
        replies (Message-Authenticator) like a patched gateway does."""
        from pyrad.client import Client

        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        server = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        client = Client(
            server=server,
            authport=self.bridge.port(family),
            secret=secret.encode(),
            dict=pyrad_dictionary(),
            retries=retries,
            timeout=timeout,
            enforce_ma=True,
        )
        client.bind((source, 0))
        self._pyrad.append(client)
        return client

    def close_pyrad_clients(self) -> None:
        """Close the sockets of every pyrad client made so far (pyrad never does)."""
        for client in self._pyrad:
            client._CloseSocket()
        self._pyrad.clear()


@functools.cache
def pyrad_dictionary() -> Any:
    """The bridge's own dictionary file, loaded by pyrad."""
    from pyrad.dictionary import Dictionary

    return Dictionary(str(DICTIONARY_FILE))
