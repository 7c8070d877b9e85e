"""The gateway API as the bridge uses it: performs the flow's effects over HTTP.

One :class:`BackendClient` per bridge, over a :class:`~radius_bridge.backends.BackendSet`
(one or several backend nodes, preferred first, with health marks; which calls may move to
another node after a failure is decided here, per call). Each backend has two
:class:`httpx.AsyncClient` pools:

* **short calls** (start, verify, submit, cancel, audit, the clients document) share a small
  keep-alive pool (``backend_connections``, 64 by default), so the hot OTP path reuses warm
  connections and never waits behind a held push;
* **long-polls** (``GET /gateway/v1/authentications/{id}?wait=``) get a pool of their own
  sized to the most requests the bridge holds (``max_held``, 20,000): the backend holds each
  long-poll on a connection of its own, so a held push *is* a connection, and sharing the
  short pool would let 64 held pushes starve every code check.

The transport is injectable: ``httpx.ASGITransport`` when the bridge runs inside
``openmfa run`` (no sockets, no pool), :class:`~radius_bridge.http11.LeanTransport` over real
sockets standalone (httpx's own transport costs ~15 times the CPU per request here),
``httpx.MockTransport`` in tests.

Time: httpx's timeouts bound each *phase* (connect, each read, each write, waiting for a
pooled connection), not a request as a whole, so a backend that trickles bytes could hold a
call far past them. Every call here therefore also runs under ``asyncio.timeout_at`` on the
request's deadline (derived from the client's push timeout): the flow always gets a result by
then, :class:`~radius_bridge.model.Unavailable` if the backend did not answer.

Results: problem documents whose type is a user-state refusal become
:class:`~radius_bridge.model.Refused`; 5xx, connection failures and timeouts become
:class:`~radius_bridge.model.Unavailable` (the failmode applies). A 4xx caused by what the
user sent is never ``Unavailable`` -- that would let a malformed code reach a fail-safe
accept. Nor is the backend refusing the *bridge* (401, or 403 that is not about the user: a
revoked token, a token of the wrong scope): that is ``Refused("bridge-unauthorized")``, a
Reject whatever the failmode, and ``on_credential_refused`` tells the runner, which then
refuses every request and deletes its clients cache. A revoked token must shut the bridge,
never open it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, cast

import httpx

from radius_bridge.backends import (
    CHECK_SECONDS,
    CHECK_TIMEOUT,
    CONNECT_TIMEOUT,
    DOWN_STATUSES,
    Backend,
    BackendSet,
    FailoverListener,
    HealthListener,
)
from radius_bridge.cache import CachedDocument
from radius_bridge.channel import BackendChannel, wait_on_channel
from radius_bridge.model import (
    REFUSED_KINDS,
    Audit,
    CancelAuthentication,
    Checked,
    Done,
    Effect,
    Outcome,
    Refused,
    RefusedKind,
    Result,
    StartAuthentication,
    Started,
    SubmitCode,
    Unavailable,
    VerifyCode,
    VerifyPassword,
    WaitOutcome,
)
from radius_bridge.protocol.reattach import DEFAULT_GRACE, Reattach
from radius_vocabulary.settings import MAX_CODE_CHARS

log = logging.getLogger("openmfa.radius.backend")

#: The backend refusing the *bridge* (revoked token, wrong scope): never "unavailable" (the
#: failmode would then accept), never a verdict on one user either.
CREDENTIAL_KINDS = frozenset({"unauthorized", "forbidden"})
#: Extra time on a long-poll beyond the wait the backend was asked for: the backend answers
#: at ``wait`` seconds, so this only runs out when it is truly stuck or overloaded.
LONG_POLL_GRACE = 5.0
#: Idempotent calls (start with its idempotency key, long-poll, cancel) are retried after a
#: connection failure, with these pauses, while the deadline allows. A cut long-poll is
#: re-attached for ``cut_grace`` seconds only (:mod:`radius_bridge.protocol.reattach`).
RETRY_PAUSES = (0.1, 0.25, 0.5, 1.0, 2.0)
START_RETRY_WINDOW = 3.0
#: A long-poll that comes back this close to the end of the wait ends it.
WAIT_SLACK = 0.01
EARLY_ANSWER_PAUSE = 1.0


class BackendError(Exception):
    """The backend could not be used for a non-effect call (the clients document)."""


class CredentialRefused(BackendError):
    """The backend refused the bridge's token (401, or a 403 that is not about a user)."""


class _Unauthorized(Exception):
    """The backend refused the bridge's token while performing an effect."""


class _Refusal(Exception):
    """A problem document for a 4xx, to be mapped by the effect that got it."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(f"{status} {kind}: {detail}")
        self.status = status
        self.kind = kind
        self.detail = detail


class _Down(Exception):
    """The backend failed (5xx, bad body)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


_RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
#: Failures that mean the request never reached the backend: any call may go to the next.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


def _problem(response: httpx.Response) -> tuple[str, str]:
    """(kind, detail) of a problem document; ``http-<status>`` when the body is not one."""
    try:
        body = response.json()
        kind = str(body.get("type", "")).rsplit("/", 1)[-1]
        detail = str(body.get("detail") or body.get("title") or "")
    except (ValueError, AttributeError):
        kind, detail = "", ""
    return kind or f"http-{response.status_code}", detail[:300]


def _refuses_token(status: int, kind: str) -> bool:
    """401 whatever the body; 403 unless it names a user's state (user-blocked...)."""
    return (
        status == 401
        or (status == 403 and kind not in REFUSED_KINDS)
        or (status < 500 and kind in CREDENTIAL_KINDS)
    )


def _check(response: httpx.Response) -> None:
    if response.status_code >= 500:
        kind, detail = _problem(response)
        raise _Down(
            f"backend answered {response.status_code} {kind}: {detail}", response.status_code
        )
    if response.status_code >= 400:
        kind, detail = _problem(response)
        if _refuses_token(response.status_code, kind):
            raise _Unauthorized(
                f"the backend refused this bridge's token ({response.status_code} {kind}): {detail}"
            )
        raise _Refusal(response.status_code, kind, detail)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise _Down(f"backend answered {response.status_code} without a JSON body") from None
    if not isinstance(body, dict):
        raise _Down("backend answered with JSON that is not an object")
    return cast(dict[str, Any], body)


class BackendClient:
    """Carries out effects against the gateway API; see the module docstring."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        http_timeout: float = 10.0,
        long_poll_seconds: float = 50.0,
        backend_connections: int = 64,
        max_long_polls: int = 20_000,
        cut_grace: float = DEFAULT_GRACE,
        on_unavailable: Callable[[str], None] | None = None,
        on_credential_refused: Callable[[str], None] | None = None,
        on_health: HealthListener | None = None,
        on_failover: FailoverListener | None = None,
        check_seconds: float = CHECK_SECONDS,
        check_timeout: float = CHECK_TIMEOUT,
        channels: bool = False,
        on_channel: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.http_timeout = http_timeout
        self.long_poll_seconds = long_poll_seconds
        self.cut_grace = cut_grace
        self._on_unavailable = on_unavailable
        self._on_credential_refused = on_credential_refused
        self._on_health = on_health
        self.channels: dict[str, BackendChannel] = {}  # filled below with ``channels``
        self.backends = BackendSet(
            (base_url,) if isinstance(base_url, str) else tuple(base_url),
            token,
            transport=transport,
            http_timeout=http_timeout,
            backend_connections=backend_connections,
            max_long_polls=max_long_polls,
            on_health=self._health,
            on_failover=on_failover,
            check_seconds=check_seconds,
            check_timeout=check_timeout,
        )
        #: With ``channels`` (``--channel auto``) one wait channel per backend
        #: (:mod:`radius_bridge.channel`): while the preferred backend's is open, waits and
        #: code / password checks go over it; HTTP otherwise.
        if channels:
            self.channels = {
                backend.url: BackendChannel(
                    backend.url,
                    token,
                    open_timeout=http_timeout,
                    on_credential_refused=on_credential_refused,
                    on_state=on_channel,
                )
                for backend in self.backends.backends
            }

    @property
    def channel(self) -> BackendChannel | None:
        """The preferred backend's wait channel when it is open, else ``None`` (use HTTP)."""
        if not self.channels:
            return None
        channel = self.channels.get(self.backends.preferred.url)
        return channel if channel is not None and channel.connected else None

    def _health(self, url: str, up: bool) -> None:
        # A node marked down while another is up: the waits held on its channel are cut
        # now, so they re-attach on a node that is up (as its long-polls are).
        channel = self.channels.get(url)
        if not up and channel is not None and any(b.up for b in self.backends.backends):
            channel.cut("its backend was marked down")
        if self._on_health is not None:
            self._on_health(url, up)

    def start(self) -> None:
        """Start the backends' health checks and wait channels (on the running loop)."""
        self.backends.start()
        for channel in self.channels.values():
            channel.start()

    async def aclose(self) -> None:
        """Stop the health checks, close the wait channels and every pool."""
        for channel in self.channels.values():
            await channel.aclose()
        await self.backends.aclose()

    # -- effects ----------------------------------------------------------------------------

    async def perform(self, effect: Effect, deadline: float) -> Result:
        """Carry out ``effect`` and return its result no later than ``deadline``.

        ``deadline`` is in the running loop's clock (``loop.time()``). Never raises for
        backend trouble: that is :class:`Unavailable`.
        """
        loop = asyncio.get_running_loop()
        name = type(effect).__name__
        if deadline - loop.time() <= 0:
            return self._unavailable(name, "no time left before the client's deadline")
        try:
            if isinstance(effect, WaitOutcome):
                # Bounded inside (below the deadline), and the hot state of a held push:
                # one frame and one timer fewer per held request.
                return await self._wait(effect, deadline)
            async with asyncio.timeout_at(deadline):
                return await self._dispatch(effect, deadline)
        except (TimeoutError, httpx.TimeoutException):
            return self._unavailable(name, "the backend did not answer in time")
        except httpx.HTTPError as exc:
            return self._unavailable(name, f"{type(exc).__name__}: {exc}")
        except _Down as exc:
            return self._unavailable(name, str(exc))
        except _Unauthorized as exc:
            if self._on_credential_refused is not None:
                self._on_credential_refused(str(exc))
            return Refused("bridge-unauthorized", str(exc))

    def _unavailable(self, effect: str, detail: str) -> Unavailable:
        log.warning("backend unavailable for %s: %s", effect, detail, extra={"effect": effect})
        if self._on_unavailable is not None:
            self._on_unavailable(effect)
        return Unavailable(detail)

    async def _dispatch(self, effect: Effect, deadline: float) -> Result:
        if isinstance(effect, StartAuthentication):
            return await self._start(effect, deadline)
        if isinstance(effect, SubmitCode):
            return await self._submit(effect)
        if isinstance(effect, VerifyCode):
            return await self._verify_code(effect)
        if isinstance(effect, VerifyPassword):
            return await self._verify_password(effect)
        if isinstance(effect, CancelAuthentication):
            return await self._cancel(effect, deadline)
        if isinstance(effect, Audit):
            return await self._audit(effect)
        raise TypeError(f"the backend client does not perform {type(effect).__name__}")

    async def _short(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        idempotent: bool = False,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One short call, each attempt bounded by ``http_timeout``, on the first backend
        that takes it (:meth:`BackendSet.ordered`).

        A backend that cannot be connected to, or answers 502/503/504, is marked down (a
        failure after sending is not enough, see below); the call moves on to the next at
        once when nothing was sent (a connection failure) or when ``idempotent`` (the same
        request twice has one effect). A code check that
        reached a backend is never sent to another: the code may be spent there.
        """
        candidates = self.backends.ordered()
        for index, backend in enumerate(candidates):
            last = index == len(candidates) - 1
            try:
                async with asyncio.timeout(self.http_timeout):
                    response = await backend.http.request(method, path, json=body, headers=headers)
            except _NOT_SENT as exc:
                self.backends.failed(backend, f"{type(exc).__name__}: {exc}")
                if last:
                    raise
            except (TimeoutError, httpx.TimeoutException, *_RETRYABLE):
                # After sending: slow is not dead (a burst of password checks), and a closed
                # connection may be a keep-alive race, not a death (marking the node down
                # would also cut every long-poll held there). A node that did die refuses
                # the next connection, and its health check fails; a repeatable call goes on.
                if last or not idempotent:
                    raise
            else:
                if response.status_code not in DOWN_STATUSES:
                    self.backends.answered(backend)
                    _check(response)
                    return response
                self.backends.failed(backend, f"answered {response.status_code}")
                if last or not idempotent:
                    _check(response)
                    return response
            self.backends.moved_on(backend)
        raise AssertionError("unreachable: the last backend returns or raises")  # pragma: no cover

    async def _retrying(
        self,
        call: Callable[[], Awaitable[httpx.Response]],
        deadline: float,
        window: float | None,
    ) -> httpx.Response:
        """``call()`` again after a connection failure (idempotent calls only): each call
        already tried every backend, so this is for all of them being down at once (a
        restart of the only one)."""
        loop = asyncio.get_running_loop()
        stop = deadline if window is None else min(deadline, loop.time() + window)
        attempt = 0
        while True:
            try:
                return await call()
            except _RETRYABLE as exc:
                pause = RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)]
                if loop.time() + pause >= stop:
                    raise
                log.debug("retrying after %s", type(exc).__name__)
                attempt += 1
                await asyncio.sleep(pause)

    async def _start(self, effect: StartAuthentication, deadline: float) -> Result:
        body = {
            "user": effect.user,
            "method": effect.method,
            "idempotency_key": effect.idempotency_key,
            "context": {
                "client_name": effect.client_name[:128],
                "client_ip": (effect.client_ip or "")[:64],
                "nas_identifier": (effect.nas_identifier or "")[:128],
            },
            "number_matching": effect.number_matching,
            "can_show_number": effect.can_show_number,
        }
        try:
            # The idempotency key makes a repeat of a start that did reach the backend
            # return the same authentication: retrying cannot push twice.
            response = await self._retrying(
                lambda: self._short("POST", "/gateway/v1/authentications", body, idempotent=True),
                deadline,
                START_RETRY_WINDOW,
            )
        except _Refusal as exc:
            return self._refused(exc, "start")
        data = _json(response)
        method: Literal["push", "otp"] = "otp" if data.get("method") == "otp" else "push"
        number = data.get("number")
        return Started(
            authentication_id=str(data["id"]),
            method=method,
            state=str(data.get("state", "pending")),
            number=number if isinstance(number, int) else None,
        )

    async def _wait(self, effect: WaitOutcome, deadline: float) -> Result:
        """Long-poll in slices of at most ``long_poll_seconds`` until the authentication is
        final or ``effect.seconds`` (the flow's own push deadline) have passed.

        The last slice asks the backend to answer exactly at the end, so the flow sees the
        time run out on its clock and rejects on timeout; no tight loop of empty polls near
        the end. Should the answer be late (a busy backend), the wait still ends at most
        ``LONG_POLL_GRACE`` later with the last state seen: a backend that answered before
        and is merely slow is "not answered yet", not an outage. Only a backend that never
        answered during this wait is :class:`Unavailable` (and the failmode applies).
        A *cut* poll (connection refused, reset or closed under it, a 5xx from a proxy whose
        backend is gone) is re-attached to the same authentication id for ``cut_grace``
        seconds (:class:`~radius_bridge.protocol.reattach.Reattach`), so a backend restarted
        within the grace still answers; after that the wait is :class:`Unavailable` at once
        and the flow answers by the client's failmode, instead of at the end of the slice.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, effect.seconds)
        channel = self.channel
        if channel is not None:
            until = min(end, deadline - 0.05)
            state = await wait_on_channel(channel, effect.authentication_id, until)
            if state is not None:
                return Outcome(state)
            # The channel was cut (or would not watch this one): the long-poll below
            # re-attaches by the id, with the cut grace of a cut long-poll.
        path = f"/gateway/v1/authentications/{effect.authentication_id}"
        state = "pending"
        reached = False
        retry = Reattach(self.cut_grace)
        try:
            # Strictly inside perform()'s bound on the deadline, so this one fires first
            # and the last state seen is returned.
            async with asyncio.timeout_at(min(deadline - 0.05, end + LONG_POLL_GRACE)):
                while True:
                    wait = min(self.long_poll_seconds, max(0.0, end - loop.time()))
                    asked = loop.time()
                    try:
                        state = await self._poll(path, wait)
                    except (*_RETRYABLE, _Down) as exc:
                        pause = retry.cut(loop.time(), end)
                        if pause is None:
                            raise
                        if retry.attempts == 1:
                            log.info(
                                "long-poll cut (%s), re-attaching for up to %.1f s",
                                type(exc).__name__,
                                self.cut_grace,
                            )
                        await asyncio.sleep(pause)
                        continue
                    except _Refusal as exc:
                        if exc.status == 404:  # gone (a backend whose data was reset)
                            return Outcome("expired")
                        return self._refused(exc, "wait")
                    retry.reached()
                    reached = True
                    if state != "pending" or loop.time() >= end - WAIT_SLACK:
                        return Outcome(state)
                    if wait >= 1.0 and loop.time() - asked < wait / 2:
                        # "Still pending" long before the wait was up: a backend shutting
                        # down wakes its waiters early. Pause instead of polling in a loop.
                        await asyncio.sleep(min(EARLY_ANSWER_PAUSE, end - loop.time()))
        except TimeoutError:
            if reached:
                return Outcome(state)
            raise

    async def _poll(self, path: str, wait: float) -> str:
        """One ``GET ...?wait=`` (bounded by the caller): the state it reports.

        Goes to the first backend that takes the connection; a cut after that is the
        caller's to re-attach (on whichever backend is then first).
        """
        candidates = self.backends.ordered()
        for index, backend in enumerate(candidates):
            try:
                state = await self._poll_on(backend, path, wait)
            except _NOT_SENT as exc:
                self.backends.failed(backend, f"{type(exc).__name__}: {exc}")
                if index == len(candidates) - 1:
                    raise
                self.backends.moved_on(backend)
                continue
            except _Down as exc:
                if exc.status in DOWN_STATUSES:
                    self.backends.failed(backend, f"answered {exc.status}")
                raise
            self.backends.answered(backend)
            return state
        raise AssertionError("unreachable: the last backend returns or raises")  # pragma: no cover

    async def _poll_on(self, backend: Backend, path: str, wait: float) -> str:
        target = f"{path}?wait={wait:.3f}"
        if backend.lean is None:
            response = await backend.polls.get(
                target, timeout=httpx.Timeout(self.http_timeout, read=None, pool=None)
            )
            _check(response)
            return str(_json(response).get("state", "pending"))
        request = b"GET " + backend.prefix + target.encode() + b" HTTP/1.1\r\n" + backend.poll_head
        status, headers, body = await backend.lean.exchange(
            backend.origin,
            request,
            "GET",
            min(self.http_timeout, CONNECT_TIMEOUT),
            None,
            self.http_timeout,
        )
        if status != 200:
            _check(httpx.Response(status, headers=headers, content=body))
        try:
            data = json.loads(body)
        except ValueError:
            raise _Down("backend answered a long-poll without a JSON body") from None
        return str(data.get("state", "pending")) if isinstance(data, dict) else "pending"

    async def _submit(self, effect: SubmitCode) -> Result:
        if not effect.code or len(effect.code) > MAX_CODE_CHARS:
            return Checked(False, "malformed-code")
        # Not retried: a code that reached the backend is spent (replay protection), so a
        # blind second try could turn an accept into "replayed".
        path = f"/gateway/v1/authentications/{effect.authentication_id}/code"
        return await self._checked(path, {"code": effect.code}, "submit")

    async def _verify_code(self, effect: VerifyCode) -> Result:
        if not effect.code or len(effect.code) > MAX_CODE_CHARS:
            return Checked(False, "malformed-code")
        body = {"user": effect.user, "code": effect.code}
        return await self._checked("/gateway/v1/otp/verify", body, "verify")

    async def _verify_password(self, effect: VerifyPassword) -> Result:
        body: dict[str, Any] = {"user": effect.user, "password": effect.password}
        if effect.client_name is not None:
            body["client"] = effect.client_name  # which directory, for primary ldap
        return await self._checked("/gateway/v1/password/verify", body, "password")

    async def _checked(self, path: str, body: dict[str, Any], where: str) -> Result:
        """A code or password check: the backend's verdict, or what its refusal means."""
        try:
            data = await self._checked_call(path, body)
        except _Refusal as exc:
            return self._refused(exc, where)
        return Checked(data.get("result") == "accept", str(data.get("reason", "")))

    async def _checked_call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST path``: over the wait channel while it is open (batched with the other
        calls of the same moment), else over HTTP."""
        channel = self.channel
        if channel is None:
            return _json(await self._short("POST", path, body))
        async with asyncio.timeout(self.http_timeout):
            status, data = await channel.post(path, body)
        if status >= 400:  # the refusal mapping of HTTP answers, for the rare error
            _check(httpx.Response(status, json=data))
        return data

    async def _cancel(self, effect: CancelAuthentication, deadline: float) -> Result:
        path = f"/gateway/v1/authentications/{effect.authentication_id}/cancel"
        # A refusal means it was answered or expired already: nothing left to cancel.
        with contextlib.suppress(_Refusal):
            await self._retrying(
                lambda: self._short("POST", path, idempotent=True), deadline, START_RETRY_WINDOW
            )
        return Done()

    async def _audit(self, effect: Audit) -> Result:
        try:
            await self._short(
                "POST",
                "/gateway/v1/audit",
                {"action": effect.action, "user": effect.user, "detail": effect.detail[:500]},
            )
        except _Refusal as exc:
            log.error("the backend refused an audit record: %s %s", exc.kind, exc.detail)
        return Done()

    @staticmethod
    def _refused(exc: _Refusal, where: str) -> Result:
        if exc.kind in REFUSED_KINDS:
            return Refused(cast(RefusedKind, exc.kind), exc.detail)
        if where in ("submit", "verify", "password"):
            # The backend found the input unusable (too long, bad characters): a wrong code.
            return Checked(False, exc.kind)
        # Any other refusal is still a refusal: reject, never the failmode.
        log.warning("backend refused %s: %s %s", where, exc.status, exc.kind)
        return Refused("refused", f"{exc.kind}: {exc.detail}")

    # -- the clients document -----------------------------------------------------------------

    async def fetch_clients(self, etag: str | None) -> CachedDocument | None:
        """The clients document, or ``None`` when it has not changed since ``etag``.

        Raises :class:`BackendError` when the backend cannot be used.
        """
        headers = {"if-none-match": f'"{etag}"'} if etag else {}
        try:
            response = await self._short(
                "GET", "/gateway/v1/radius/clients", idempotent=True, headers=headers
            )
        except (TimeoutError, httpx.HTTPError) as exc:
            raise BackendError(f"cannot fetch the RADIUS clients: {type(exc).__name__}") from exc
        except _Unauthorized as exc:
            raise CredentialRefused(str(exc)) from None
        except _Refusal as exc:
            raise BackendError(
                f"fetching the RADIUS clients: {exc.status} {exc.kind}: {exc.detail}"
            ) from None
        except _Down as exc:
            raise BackendError(f"fetching the RADIUS clients: {exc}") from None
        if response.status_code == 304:
            return None
        if response.status_code != 200:
            raise BackendError(f"fetching the RADIUS clients: answered {response.status_code}")
        try:
            data = response.json()
        except json.JSONDecodeError as exc:
            raise BackendError("the RADIUS clients document is not JSON") from exc
        if not isinstance(data, dict):
            raise BackendError("the RADIUS clients document is not a JSON object")
        revision = str(data.get("revision") or response.headers.get("etag", "").strip('"'))
        return CachedDocument(revision, cast(dict[str, Any], data))
