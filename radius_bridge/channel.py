"""The bridge's end of the wait channel: one WebSocket to the backend for every held push and
every code or password check (``/gateway/v1/channel``; the protocol is described in
docs/api.md and in the backend's ``backend/api/channel_v1.py``).

Why: a held push over HTTP is one long-poll (a connection and a request on both sides), and a
code check is one HTTP round trip, most of the bridge's CPU per request. Over the channel a
held push is one Future here and a callback entry on the backend; calls made in the same
loop tick go out in one frame and their answers come back batched.

:class:`BackendChannel` connects, reconnects with a short backoff (so a restarted backend is
found within about a second, inside the cut grace), and cuts every watch and call in flight
when the connection drops: the caller then re-attaches the wait over an HTTP long-poll by
the authentication id, with the cut grace of any cut long-poll, then the failmode
(:func:`wait_on_channel`). A backend that does not serve the channel (an older one, a proxy without
WebSocket) answers the upgrade with a plain HTTP status: the bridge then stays on HTTP and
tries again every :data:`UNSUPPORTED_RETRY` seconds. A refused token (401/403) is reported
like a refused HTTP call: the bridge shuts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Final

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

log = logging.getLogger("openmfa.radius.channel")

PATH: Final = "/gateway/v1/channel"
USER_AGENT: Final = "openmfa-radius-bridge"
#: Reconnect pauses, doubling up to the last: quick enough to be back within the cut grace.
BACKOFF: Final = (0.05, 0.1, 0.2, 0.5, 1.0)
#: After an upgrade the backend does not serve (404, 400...): stay on HTTP this long.
UNSUPPORTED_RETRY: Final = 60.0
#: After the backend refused the token: retry this seldom (the bridge refuses meanwhile).
REFUSED_RETRY: Final = 30.0
#: Largest frame taken from the backend (it sends at most 1,000 items per frame).
MAX_FRAME_IN: Final = 4 << 20
#: Close codes the backend uses when it refuses the token of an open channel.
CREDENTIAL_CLOSE_CODES: Final = frozenset({4401, 4403})
#: Call ops by (gateway API path) for the calls the bridge sends over the channel.
_OPS: Final = {
    "/gateway/v1/otp/verify": "verify_code",
    "/gateway/v1/password/verify": "verify_password",
}
_AUTHENTICATIONS: Final = "/gateway/v1/authentications/"


def _problem_kind(body: bytes | bytearray | None) -> str:
    """The last segment of a problem document's ``type`` ("" when the body is not one)."""
    try:
        problem = json.loads(body or b"")
    except ValueError:
        return ""
    kind = problem.get("type") if isinstance(problem, dict) else None
    return kind.rsplit("/", 1)[-1] if isinstance(kind, str) else ""


class ChannelCut(httpx.ReadError):
    """The channel dropped under a watch or a call (handled like a cut HTTP connection)."""


def channel_url(base_url: str) -> str:
    """The channel's ``ws://`` / ``wss://`` URL for a backend base URL."""
    url = base_url.rstrip("/")
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :] + PATH
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :] + PATH
    raise ValueError(f"not an http(s) URL: {base_url!r}")


def call_for(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The channel call that does what ``POST path`` with ``body`` does (without ``n``)."""
    op = _OPS.get(path)
    if op is not None:
        return {"op": op, "body": body}
    if path.startswith(_AUTHENTICATIONS) and path.endswith("/code"):
        return {
            "op": "submit_code",
            "id": path[len(_AUTHENTICATIONS) : -len("/code")],
            "body": body,
        }
    raise ValueError(f"no channel call for {path}")


class BackendChannel:
    """One WebSocket to one backend; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        open_timeout: float = 5.0,
        on_credential_refused: Callable[[str], None] | None = None,
        on_state: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.base_url = base_url
        self.url = channel_url(base_url)
        self._on_state = on_state
        self._headers = {"Authorization": f"Bearer {token}"}
        self._open_timeout = open_timeout
        self._on_credential_refused = on_credential_refused
        self._ws: ClientConnection | None = None
        self._watches: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._calls: dict[int, asyncio.Future[tuple[int, dict[str, Any]]]] = {}
        self._next_call = 0
        self._out_watch: list[str] = []
        self._out_unwatch: list[str] = []
        self._out_calls: list[dict[str, Any]] = []
        self._flush_soon = False
        self._sends: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: How many times the channel was (re)opened, and calls sent over it (tests, bench).
        self.opened = 0
        self.calls = 0

    @property
    def connected(self) -> bool:
        """True while the channel is open (calls and watches then go over it)."""
        return self._ws is not None

    @property
    def watching(self) -> int:
        """Held pushes waiting on the channel."""
        return sum(len(futures) for futures in self._watches.values())

    def start(self) -> None:
        """Connect in the background, and again whenever the connection drops."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Close the channel; whatever waits on it is cut."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._cut_all("the bridge is stopping")

    def cut(self, why: str) -> None:
        """Drop the connection now: what waits on it is cut at once (and goes elsewhere);
        the channel reconnects with its usual backoff."""
        ws = self._ws
        if ws is None:
            return
        log.info("cutting the wait channel to %s: %s", self.url, why)
        self._state(False)
        self._ws = None
        self._cut_all(why)
        ws.transport.abort()

    # -- the connection ------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            pause = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            try:
                async with connect(
                    self.url,
                    additional_headers=self._headers,
                    user_agent_header=USER_AGENT,
                    open_timeout=self._open_timeout,
                    max_size=MAX_FRAME_IN,
                    compression=None,  # small JSON frames: deflate costs more CPU than it saves
                    proxy=None,
                ) as ws:
                    self._opened(ws)
                    attempt = 0
                    async for message in ws:
                        self._receive(message)
                    self._closed_by(ws)
            except InvalidStatus as exc:
                status = exc.response.status_code
                kind = _problem_kind(exc.response.body)
                if status in (401, 403) and kind in ("unauthorized", "forbidden"):
                    pause = REFUSED_RETRY
                    self._refused(f"the backend refused the channel's token ({status} {kind})")
                elif status < 500:
                    # Without our problem document a 403 is a server or proxy that has no
                    # such WebSocket route, not a verdict on the token: stay on HTTP.
                    pause = UNSUPPORTED_RETRY
                    log.info("the backend does not serve the wait channel (%s); using HTTP", status)
            except ConnectionClosed as exc:
                self._closed_by_exc(exc)
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.debug("wait channel: %s: %s", type(exc).__name__, exc)
            finally:
                if self._ws is not None:
                    log.info("wait channel to %s closed", self.url)
                    self._state(False)
                self._ws = None
                self._cut_all("the wait channel was cut")
            attempt += 1
            await asyncio.sleep(pause)

    def _opened(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.opened += 1
        log.info("wait channel to %s open", self.url)
        self._state(True)

    def _state(self, is_open: bool) -> None:
        if self._on_state is not None:
            self._on_state(self.base_url, is_open)

    def _closed_by(self, ws: ClientConnection) -> None:
        if ws.close_code in CREDENTIAL_CLOSE_CODES:
            self._refused(f"the backend closed the channel: {ws.close_reason}")

    def _closed_by_exc(self, exc: ConnectionClosed) -> None:
        if exc.rcvd is not None and exc.rcvd.code in CREDENTIAL_CLOSE_CODES:
            self._refused(f"the backend closed the channel: {exc.rcvd.reason}")
        else:
            log.debug("wait channel closed: %s", exc)

    def _refused(self, detail: str) -> None:
        log.error("%s", detail)
        if self._on_credential_refused is not None:
            self._on_credential_refused(detail)

    def _cut_all(self, why: str) -> None:
        watches, self._watches = self._watches, {}
        calls, self._calls = self._calls, {}
        self._out_watch.clear()
        self._out_unwatch.clear()
        self._out_calls.clear()
        for futures in watches.values():
            for future in futures:
                if not future.done():
                    future.set_exception(ChannelCut(why))
        for call in calls.values():
            if not call.done():
                call.set_exception(ChannelCut(why))

    # -- frames ----------------------------------------------------------------------------------

    def _receive(self, message: str | bytes) -> None:
        try:
            frame = json.loads(message)
        except ValueError:
            log.warning("the backend sent a frame that is not JSON")
            return
        for item in frame.get("outcomes", ()):
            for future in self._watches.pop(str(item.get("id")), ()):
                if not future.done():
                    future.set_result(item)
        for item in frame.get("results", ()):
            call = self._calls.pop(item.get("n"), None)
            if call is not None and not call.done():
                body = item.get("body")
                call.set_result(
                    (int(item.get("status", 500)), body if isinstance(body, dict) else {})
                )

    def _schedule(self) -> None:
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Everything asked for in this loop tick, in one frame."""
        self._flush_soon = False
        ws = self._ws
        if ws is None:
            return
        frame: dict[str, Any] = {}
        if self._out_unwatch:
            frame["unwatch"], self._out_unwatch = self._out_unwatch, []
        if self._out_calls:
            frame["calls"], self._out_calls = self._out_calls, []
        if self._out_watch:
            frame["watch"], self._out_watch = self._out_watch, []
        if frame:
            task = asyncio.get_running_loop().create_task(self._send(ws, json.dumps(frame)))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _send(self, ws: ClientConnection, text: str) -> None:
        try:
            await ws.send(text)
        except (ConnectionClosed, OSError) as exc:
            log.debug("could not send on the wait channel: %s", exc)  # _run cuts everything

    # -- what callers use ----------------------------------------------------------------------

    def watch(self, authentication_id: str) -> asyncio.Future[dict[str, Any]]:
        """A Future for the authentication's outcome item (``{"id", "state", "answered_at"}``
        or ``{"id", "problem"}``); :class:`ChannelCut` if the channel drops first."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self._ws is None:
            future.set_exception(ChannelCut("the wait channel is not open"))
            return future
        futures = self._watches.get(authentication_id)
        if futures is None:
            self._watches[authentication_id] = [future]
            self._out_watch.append(authentication_id)
            self._schedule()
        else:
            futures.append(future)
        return future

    def unwatch(self, authentication_id: str, future: asyncio.Future[dict[str, Any]]) -> None:
        """The caller stopped waiting (its deadline, a cancelled request)."""
        futures = self._watches.get(authentication_id)
        if futures is None or future not in futures:
            return
        futures.remove(future)
        if not futures:
            del self._watches[authentication_id]
            if self._ws is not None:
                self._out_unwatch.append(authentication_id)
                self._schedule()

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """``POST path`` with ``body`` as a channel call: (status, JSON body) as HTTP would
        answer; :class:`ChannelCut` when the channel drops before the answer."""
        if self._ws is None:
            raise ChannelCut("the wait channel is not open")
        call = call_for(path, body)
        self.calls += 1
        self._next_call += 1
        n = call["n"] = self._next_call
        future: asyncio.Future[tuple[int, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._calls[n] = future
        self._out_calls.append(call)
        self._schedule()
        try:
            return await future
        finally:
            self._calls.pop(n, None)


async def wait_on_channel(
    channel: BackendChannel, authentication_id: str, until: float
) -> str | None:
    """The authentication's final state, ``"pending"`` when the loop's clock reaches
    ``until`` first, or ``None`` when the channel cannot carry this wait: it was cut (or
    is not open), or the backend would not watch the id (over its limit).

    On ``None`` the caller falls back to the HTTP long-poll, which re-attaches by the id with
    the cut grace (:class:`~radius_bridge.protocol.reattach.Reattach`) and then the
    failmode -- on whichever backend answers. Why not wait for the channel to come back
    instead: a restarting backend binds its socket seconds before it serves, and a long-poll
    parked in its listen queue is answered as soon as it does, where a WebSocket handshake
    would time out; the cut rule is then exactly that of a cut long-poll.
    """
    loop = asyncio.get_running_loop()
    future = channel.watch(authentication_id)
    try:
        item = await asyncio.wait_for(future, max(0.0, until - loop.time()))
    except TimeoutError:
        channel.unwatch(authentication_id, future)
        return "pending"
    except ChannelCut:
        log.info("wait channel cut under a held push; re-attaching over HTTP")
        return None
    except asyncio.CancelledError:
        channel.unwatch(authentication_id, future)
        raise
    problem = item.get("problem")
    if isinstance(problem, dict):
        if problem.get("status") == 404:
            return "expired"  # gone, as a 404 on the long-poll
        return None
    return str(item.get("state", "pending"))
