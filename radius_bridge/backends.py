"""Several backend nodes behind one bridge: which one a call goes to, and which are up.

``openmfa radius --backend https://mfa1.example --backend https://mfa2.example`` gives the
bridge a :class:`BackendSet`: one :class:`Backend` per URL, each with its own connection
pools, and a health mark per backend that comes from two sources:

* **calls**: a connection that cannot be made (refused, unreachable, connect timeout), or a
  502/503/504 answer, marks the backend down at once; any other answer marks it up. A call
  that fails *after* its request was sent (reset, closed, timed out) marks nothing: that may
  be a keep-alive race or a slow node, and a node that did die refuses the next connection;
* **checks**: with more than one backend, ``GET /readyz`` on each every ``check_seconds``
  (2 s) with a short timeout; 200 marks it up, anything else down. So a node that died is
  skipped within a check period even when no call noticed, and a restarted node is used
  again within one (a single backend needs no check: there is nothing to choose).

When a backend is marked down while another is up, the long-polls held on it are cut (their
connections aborted) and re-attach on the other: a node whose host went silent (no reset)
would otherwise hold them until the slice ends.

The choice: **preferred first**, not round robin. :meth:`BackendSet.ordered` lists the
backends that are up in the configured order, then those marked down (a mark is a hint,
not a verdict: with every backend marked down a call still tries each, so a bridge whose
only backend restarted does not wait for a check to use it). Why not round robin: spreading
HTTP load over the nodes is the load balancer's job for portal and app traffic, and the
gateway's job (two bridges, each with its own order) for RADIUS; what a bridge gains from
staying on one node is warm keep-alive connections, and the node that started a push --
whose dispatcher sends it and whose bus wakes its long-poll locally, without a cross-node
notification -- also holds the long-poll. Two bridges listing the nodes in opposite orders
spread the load and each still fails over.

How calls move (see :class:`~radius_bridge.backend_client.BackendClient`): a short call
that fails to *connect* moves on to the next backend at once (nothing was sent); after a
request was sent only idempotent calls move on (start, by its idempotency key; cancel; the
clients document; the long-poll, which re-attaches by the authentication id on another
node -- the state lives in the shared database and the other node's bus wakes it).

This module is the I/O side of that choice; the timing rule of re-attaching a cut long-poll
stays in :mod:`radius_bridge.protocol.reattach`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from radius_bridge.http11 import LeanTransport, Origin

log = logging.getLogger("openmfa.radius.backends")

#: Seconds between health checks of every backend (only with more than one).
CHECK_SECONDS = 2.0
#: The longest a health check may take: a node that cannot answer ``/readyz`` this fast is
#: not one to send sign-ins to.
CHECK_TIMEOUT = 1.5
#: Connecting to a backend may take this long at most (or ``http_timeout`` if shorter), so a
#: node whose host is gone (no RST, just silence) costs a call this much before the next.
CONNECT_TIMEOUT = 3.0
#: Answers that mean "this node cannot serve now" (a proxy whose node is gone, a node whose
#: database is unreachable): the backend is marked down like one that refuses connections.
DOWN_STATUSES = frozenset({502, 503, 504})
#: Idle keep-alive connections are dropped after this long, well below uvicorn's default of
#: 5 s: when the server closes an idle connection first, the next request on it fails with
#: "server disconnected" (a known race between client and server keep-alive timers).
KEEPALIVE_EXPIRY = 2.0
USER_AGENT = "openmfa-radius-bridge"

#: ``(url, up)`` after a backend's mark changes, and once for each backend at the start.
HealthListener = Callable[[str, bool], None]
#: ``url`` of the backend a call moved away from.
FailoverListener = Callable[[str], None]


@dataclass(eq=False, slots=True)
class Backend:
    """One backend node: its URL, pools and health mark."""

    url: str
    #: Short calls (start, verify, submit, cancel, audit, clients): a small keep-alive pool.
    http: httpx.AsyncClient
    #: Long-polls, one connection per held push (a pool of their own, see BackendClient).
    polls: httpx.AsyncClient
    #: The poll pool's transport when it is real sockets (the long-poll fast path uses it).
    lean: LeanTransport | None
    origin: Origin
    #: The URL's path (requests are sent as ``prefix + /gateway/v1/...``), no trailing slash.
    prefix: bytes
    #: Request headers of a long-poll in wire form (host, token, ...), ending the head.
    poll_head: bytes
    up: bool = True
    #: Why it was last marked down ("" while up).
    reason: str = ""
    #: When the mark last changed (``time.monotonic()``).
    since: float = field(default_factory=time.monotonic)

    async def aclose(self) -> None:
        """Close both pools."""
        await self.http.aclose()
        await self.polls.aclose()


def make_backend(
    url: str,
    token: str,
    *,
    transport: httpx.AsyncBaseTransport | None,
    http_timeout: float,
    backend_connections: int,
    max_long_polls: int,
) -> Backend:
    """A :class:`Backend` for ``url`` with its pools (``transport`` injected: ASGI, mock)."""
    headers = {"authorization": f"Bearer {token}", "user-agent": USER_AGENT}
    # pool=None: waiting for a pooled connection is bounded by the request's deadline, not
    # by a fixed few seconds that would turn a burst of 10,000 pushes into failures.
    timeout = httpx.Timeout(http_timeout, connect=min(http_timeout, CONNECT_TIMEOUT), pool=None)
    # Real sockets go through the lean transport (see radius_bridge.http11 for why); an
    # injected transport (ASGI in-process, a mock) serves both clients.
    short = transport or LeanTransport(backend_connections, KEEPALIVE_EXPIRY)
    polls = transport or LeanTransport(max_long_polls, KEEPALIVE_EXPIRY)
    http, poll_client = (
        httpx.AsyncClient(
            base_url=url, headers=headers, timeout=timeout, transport=pool, follow_redirects=False
        )
        for pool in (short, polls)
    )
    parsed = httpx.URL(url)
    default_port = 443 if parsed.scheme == "https" else 80
    head = (
        f"host: {parsed.netloc.decode('ascii')}\r\nauthorization: Bearer {token}\r\n"
        f"user-agent: {USER_AGENT}\r\naccept: application/json\r\n"
        "accept-encoding: identity\r\n\r\n"
    ).encode()
    return Backend(
        url=url,
        http=http,
        polls=poll_client,
        lean=polls if isinstance(polls, LeanTransport) else None,
        origin=(parsed.scheme, parsed.host, parsed.port or default_port),
        prefix=parsed.raw_path.split(b"?", 1)[0].rstrip(b"/"),
        poll_head=head,
    )


class BackendSet:
    """The backends of one bridge, in order of preference; see the module docstring."""

    def __init__(
        self,
        urls: Sequence[str],
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        http_timeout: float = 10.0,
        backend_connections: int = 64,
        max_long_polls: int = 20_000,
        check_seconds: float = CHECK_SECONDS,
        check_timeout: float = CHECK_TIMEOUT,
        on_health: HealthListener | None = None,
        on_failover: FailoverListener | None = None,
    ) -> None:
        if not urls:
            raise ValueError("a BackendSet needs at least one URL")
        self.backends = tuple(
            make_backend(
                url.rstrip("/"),
                token,
                transport=transport,
                http_timeout=http_timeout,
                backend_connections=backend_connections,
                max_long_polls=max_long_polls,
            )
            for url in urls
        )
        self.check_seconds = check_seconds
        self.check_timeout = min(check_timeout, http_timeout)
        self._on_health = on_health
        self._on_failover = on_failover
        self._checker: asyncio.Task[None] | None = None
        for backend in self.backends:
            if on_health is not None:
                on_health(backend.url, True)

    def __len__(self) -> int:
        return len(self.backends)

    # -- the choice -------------------------------------------------------------------------

    def ordered(self) -> list[Backend]:
        """Backends to try, in this order: those up (configured order), then those down."""
        if len(self.backends) == 1:
            return list(self.backends)
        up = [b for b in self.backends if b.up]
        return up + [b for b in self.backends if not b.up] if len(up) < len(self.backends) else up

    @property
    def preferred(self) -> Backend:
        """The backend a call goes to first."""
        for backend in self.backends:
            if backend.up:
                return backend
        return self.backends[0]

    # -- marks ------------------------------------------------------------------------------

    def failed(self, backend: Backend, why: str) -> None:
        """``backend`` could not serve a call (or a check): mark it down."""
        if not backend.up:
            backend.reason = why
            return
        backend.up, backend.reason, backend.since = False, why, time.monotonic()
        others = sum(1 for b in self.backends if b.up)
        # Long-polls held on it are cut now, so they re-attach on a node that is up: a node
        # whose host vanished (no reset, just silence) or that lost its database would
        # otherwise keep them until their slice ends, long after the gateway gave up. With
        # one backend, or none other up, there is nowhere better to go.
        cut = backend.lean.abort_in_use() if backend.lean is not None and others else 0
        log.warning(
            "backend %s is down (%s); %s%s",
            backend.url,
            why,
            f"{others} other backend(s) up" if others else "no backend is up",
            f"; {cut} long-poll(s) re-attach elsewhere" if cut else "",
            extra={"backend": backend.url, "backends_up": others, "long_polls_cut": cut},
        )
        if self._on_health is not None:
            self._on_health(backend.url, False)

    def answered(self, backend: Backend) -> None:
        """``backend`` answered a call or passed a check: mark it up."""
        if backend.up:
            return
        down_for = time.monotonic() - backend.since
        backend.up, backend.reason, backend.since = True, "", time.monotonic()
        log.info(
            "backend %s is up again (after %.1f s)",
            backend.url,
            down_for,
            extra={"backend": backend.url},
        )
        if self._on_health is not None:
            self._on_health(backend.url, True)

    def moved_on(self, backend: Backend) -> None:
        """A call that failed on ``backend`` goes on to the next one (counted)."""
        if self._on_failover is not None:
            self._on_failover(backend.url)

    # -- health checks ----------------------------------------------------------------------

    def start(self) -> None:
        """Start checking every backend periodically (with more than one; call in a loop)."""
        if len(self.backends) > 1 and self._checker is None:
            self._checker = asyncio.get_running_loop().create_task(
                self._check_loop(), name="radius-backend-checks"
            )

    async def check_all(self) -> None:
        """Check every backend once, concurrently (see :meth:`check`)."""
        await asyncio.gather(*(self.check(b) for b in self.backends))

    async def check(self, backend: Backend) -> bool:
        """``GET /readyz`` on ``backend`` (the node and its database answer): its new mark."""
        try:
            async with asyncio.timeout(self.check_timeout):
                response = await backend.http.get("/readyz", timeout=self.check_timeout)
        except (TimeoutError, httpx.HTTPError) as exc:
            self.failed(backend, f"health check: {type(exc).__name__}")
            return False
        if response.status_code != 200:
            self.failed(backend, f"health check: /readyz answered {response.status_code}")
            return False
        self.answered(backend)
        return True

    async def _check_loop(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:  # a bug must not stop the checks for good
                log.exception("checking the backends failed")
            await asyncio.sleep(self.check_seconds)

    async def aclose(self) -> None:
        """Stop the checks and close every pool."""
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
            self._checker = None
        for backend in self.backends:
            await backend.aclose()
