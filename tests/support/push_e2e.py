"""What the push end-to-end tests share (tests/test_push_end_to_end.py for APNs and FCM,
tests/test_push_webpush_end_to_end.py for Web Push): the fakes' event loop thread, the
database they start from, and the gateway's view of ``openmfa run``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx

from backend.config import load_settings
from backend.domain.stepup import ADMINISTRATOR
from backend.services import Services
from backend.services.context import Actor
from tests.support.process import Cli, ServerProcess, free_port

T = TypeVar("T")
ADMIN = Actor("test:admin")


class LoopThread:
    """An event loop in a background thread, for the fakes (the server is another process)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


async def prepare(
    home: Path, users: Sequence[str], *, unlimited_pushes: bool = False
) -> tuple[str, dict[str, str]]:
    """A database with the users, a gateway token and an activation code per user; with
    ``unlimited_pushes`` the push_limit policy is off."""
    settings = load_settings(config_file=None, home=home)
    services = await Services.open(settings, push=False)
    try:
        token = await services.tokens.create(ADMIN, "vpn")
        codes = {}
        for user in users:
            await services.users.add(ADMIN, user)
            codes[user] = (await services.activation.create_code(ADMIN, ADMINISTRATOR, user)).code
        if unlimited_pushes:
            await services.policies.set(ADMIN, "push_limit", "0")
    finally:
        await services.close()
    return token, codes


@contextmanager
def gateway_server(
    home: Path, token: str, env: Mapping[str, str]
) -> Iterator[tuple[ServerProcess, httpx.Client]]:
    """``openmfa run`` on a free port with ``env``, and a gateway client holding ``token``."""
    with (
        ServerProcess(home, free_port(), dict(env)) as server,
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as gateway,
    ):
        yield server, gateway


@dataclass
class PushWorld:
    """The running server, its CLI, the fakes' loop, a gateway client and activation codes."""

    server: ServerProcess
    cli: Cli
    fakes: LoopThread
    gateway: httpx.Client
    codes: dict[str, str]

    def activation_uri(self, user: str) -> str:
        """The activation URI of ``user``'s code for the running server."""
        query = urlencode({"url": self.server.url, "code": self.codes[user]})
        return f"openmfa://activate?{query}"

    def start_push(self, user: str) -> dict[str, Any]:
        """Start a push authentication for ``user`` as the gateway; the 201 body."""
        response = self.gateway.post(
            "/gateway/v1/authentications",
            json={
                "user": user,
                "method": "push",
                "context": {"client_name": "vpn", "client_ip": "203.0.113.7"},
            },
        )
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    def outcome(self, auth_id: str) -> str:
        """The gateway's long-poll: the state once final (or after 10 s)."""
        response = self.gateway.get(f"/gateway/v1/authentications/{auth_id}", params={"wait": 10})
        assert response.status_code == 200, response.text
        return str(response.json()["state"])

    def audit(self, action: str) -> list[dict[str, Any]]:
        """The audit rows of ``action``, through the CLI."""
        rows: list[dict[str, Any]] = json.loads(
            self.cli("audit", "--action", action, "--json").stdout
        )
        return rows
