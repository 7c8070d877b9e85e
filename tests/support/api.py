"""A live backend over real HTTP for API tests, with the domain services at hand.

:class:`ApiHarness` runs ``create_app(settings)`` under uvicorn on 127.0.0.1 and opens a second
:class:`Services` container on the same database in an event loop of its own (a background
thread), so tests can prepare users, policies and tokens and inspect rows without sharing one
container between two event loops. Everything the app must *react* to (answers, long-polls)
goes over HTTP, so the server's own outcome bus sees it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select
from starlette.routing import BaseRoute

from backend.app import create_app
from backend.authenticator.client import AppClient
from backend.config import Settings
from backend.domain import signing
from backend.domain.stepup import ADMINISTRATOR
from backend.services import Services
from backend.services.audit import AuditEntry
from backend.services.context import Actor
from backend.store.tables import fraud_reports_t
from tests.support.clock import FakeClock
from tests.support.server import LiveServer

T = TypeVar("T")
ADMIN = Actor("test:admin")
PROBLEM_BASE = "https://openmfa.org/problems/"


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Built once: making one per client costs ~40 ms (the tests speak plain HTTP anyway)."""
    return ssl.create_default_context()


class SharedTransport(httpx.BaseTransport):
    """One connection pool for every client of a harness; closing a client leaves it open."""

    def __init__(self, inner: httpx.HTTPTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(request)

    def close(self) -> None:
        """The harness closes the pool, not the clients."""


class ApiHarness:
    """``with ApiHarness(settings, clock) as api: api.http.get("/healthz")``."""

    def __init__(
        self, settings: Settings, clock: FakeClock, extra_routes: Sequence[BaseRoute] = ()
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.app = create_app(settings, clock=clock)
        self.app.router.routes.extend(extra_routes)  # test-only endpoints (e.g. one that fails)
        self.server = LiveServer(self.app)
        self.url = self.server.url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._services: Services | None = None
        self._pool = httpx.HTTPTransport(verify=_tls_context())
        self.transport = SharedTransport(self._pool)
        self._clients: list[httpx.Client] = []
        self._token: str | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> ApiHarness:
        self._thread.start()
        try:
            self._services = self.run(Services.open(self.settings, clock=self.clock))
            self.server.__enter__()
        except BaseException:
            self._stop_loop()
            raise
        self.http = self.client()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for client in self._clients:
            client.close()
        self._pool.close()
        try:
            self.server.__exit__(exc_type, exc, tb)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        try:
            if self._services is not None:
                self.run(self._services.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    # -- services ---------------------------------------------------------------------------

    @property
    def services(self) -> Services:
        """The test's own container (not the server's): for set-up and inspection."""
        assert self._services is not None, "use the harness as a context manager"
        return self._services

    @property
    def server_services(self) -> Services:
        """The server's container (read its state only; it lives on the server's loop)."""
        services: Services = self.app.state.services
        return services

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the harness loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def add_user(self, name: str = "alice", **policy: object) -> str:
        """A user, with optional per-user policy overrides."""
        self.run(self.services.users.add(ADMIN, name, email=f"{name}@example.com"))
        for key, value in policy.items():
            self.set_policy(key, value, user=name)
        return name

    def set_policy(self, key: str, value: object, user: str | None = None) -> None:
        raw = str(value).lower() if isinstance(value, bool) else str(value)
        self.run(self.services.policies.set(ADMIN, key, raw, user))

    def activation_uri(self, user: str) -> str:
        """An activation URI pointing at this live server (not at settings.public_url)."""
        offer = self.run(self.services.activation.create_code(ADMIN, ADMINISTRATOR, user))
        return f"openmfa://activate?{urlencode({'url': self.url, 'code': offer.code})}"

    def activation_code(self, user: str, ttl_seconds: int | None = None) -> str:
        return self.run(
            self.services.activation.create_code(ADMIN, ADMINISTRATOR, user, ttl_seconds)
        ).code

    def device(self, user: str, pin: str | None = None) -> AppClient:
        """An activated reference authenticator for ``user``."""
        client = AppClient(transport=self.transport)
        client.activate(self.activation_uri(user), name=f"{user}'s phone", pin=pin)
        return client

    def refusals(self) -> list[AuditEntry]:
        """Audit rows of refused requests, newest first."""
        return self.run(self.services.audit.query(action="request.refused", limit=1000))

    def fraud_reports(self) -> list[Any]:
        async def load() -> list[Any]:
            async with self.services.db.read() as conn:
                return list((await conn.execute(select(fraud_reports_t))).all())

        return self.run(load())

    # -- HTTP -------------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client on the live server, closed with the harness."""
        client = httpx.Client(base_url=self.url, timeout=30.0, transport=self.transport, **kwargs)
        self._clients.append(client)
        return client

    @property
    def token(self) -> str:
        """A gateway API token (created on first use)."""
        if self._token is None:
            self._token = self.run(self.services.tokens.create(ADMIN, "gateway"))
        return self._token

    @property
    def gateway(self) -> httpx.Client:
        """A client sending the gateway token."""
        client = getattr(self, "_gateway", None)
        if client is None:
            client = self.client(headers={"Authorization": f"Bearer {self.token}"})
            self._gateway: httpx.Client = client
        return client

    def start(self, user: str, method: str = "push", **extra: Any) -> dict[str, Any]:
        """Start an authentication through the gateway API; asserts it was created."""
        response = self.gateway.post(
            "/gateway/v1/authentications", json={"user": user, "method": method, **extra}
        )
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    def long_poll_in_background(
        self, auth_id: str, wait: str
    ) -> tuple[threading.Thread, dict[str, Any]]:
        """The gateway's long-poll on ``auth_id`` (``wait`` seconds) on a thread of its own,
        started: the thread, and the dict that gets the ``response`` and the
        ``time.monotonic()`` it ``returned``."""
        result: dict[str, Any] = {}

        def poll() -> None:
            response = self.gateway.get(
                f"/gateway/v1/authentications/{auth_id}", params={"wait": wait}
            )
            result["response"], result["returned"] = response, time.monotonic()

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        return thread, result

    def status(self, auth_id: str, wait: float | None = None) -> dict[str, Any]:
        params = {} if wait is None else {"wait": str(wait)}
        response = self.gateway.get(f"/gateway/v1/authentications/{auth_id}", params=params)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data


def new_key() -> tuple[Ed25519PrivateKey, str]:
    """A device key pair: the private key and the public key as base64url."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return key, signing.b64u_encode(public)


def signed_request(
    http: httpx.Client,
    method: str,
    target: str,
    key: signing.SigningKey,
    device: str,
    payload: Any = None,
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Send a request signed as the app does, with hooks to break it."""
    body = b"" if payload is None else json.dumps(payload).encode()
    signed = signing.sign_request(
        key, device, method, target, body, int(time.time()) if timestamp is None else timestamp
    )
    sent = {**signed, **({"content-type": "application/json"} if payload is not None else {})}
    return http.request(method, target, content=body, headers={**sent, **(headers or {})})


def assert_problem(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    """An RFC 9457 problem document with this status and type, and a request id."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["type"] == PROBLEM_BASE + type_, problem
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    assert problem["request_id"] == response.headers["x-request-id"]
    return problem


def harness(settings: Settings, clock: FakeClock) -> Iterator[ApiHarness]:
    """Body of the per-module ``api`` fixture."""
    with ApiHarness(settings, clock) as api:
        yield api
