"""The bridges' wait channel: ``/gateway/v1/channel``, one WebSocket per bridge and node.

Instead of one HTTP long-poll per held push and one HTTP round trip per code check, a RADIUS
bridge keeps one WebSocket open (bridge-scope token, ``Authorization: Bearer`` on the
upgrade; refused before the upgrade is accepted, with the HTTP status and problem document
a plain call would get, and audited like every refusal). JSON text frames, each a batch:

client -> server::

    {"watch": ["ch_...", ...]}           # tell me when these are final
    {"unwatch": ["ch_...", ...]}         # the gateway stopped waiting
    {"calls": [{"n": 1, "op": "verify_code", "body": {...}},
               {"n": 2, "op": "submit_code", "id": "ch_...", "body": {"code": "123456"}}]}

server -> client::

    {"outcomes": [{"id": "ch_...", "state": "approved", "answered_at": "...Z"},
                  {"id": "ch_...", "problem": {...}}]}       # cannot be watched (404, 429)
    {"results": [{"n": 1, "status": 200, "body": {...}}]}    # HTTP's status and body

Ops: ``start`` (``POST /authentications``), ``submit_code`` (``.../{id}/code``), ``cancel``
(``.../{id}/cancel``), ``verify_code`` (``/otp/verify``), ``verify_password``
(``/password/verify``); bodies, answers and problem documents are those of the HTTP endpoint
(the same service calls, :func:`backend.api.problems.problem_of` for errors).

What a held push costs here: the bus's callback entry (:meth:`OutcomeBus.watch`, no task per
challenge), one dict entry and one heap entry; the channel has ONE timer for expiries (a
heap of ``(expires_at, id)``; a due id is settled through :meth:`ChallengeService.get`,
which expires it and publishes the outcome). Bounded: :data:`MAX_WATCHED` ids per channel,
:data:`MAX_CALLS` calls in flight (the channel stops reading while full: backpressure onto
the bridge's socket), :data:`MAX_FRAME` characters per frame, and a consumer that does not
take a frame within :data:`SEND_TIMEOUT` is disconnected rather than buffered for.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from backend.api.bridge_v1 import BRIDGE, password_op
from backend.api.client_address import client_address
from backend.api.gateway_v1 import bearer_of, cancel_op, start_op, submit_op, verify_op
from backend.api.http import parse_data
from backend.api.problems import audit_refusal, problem_of
from backend.api.schemas import CodeRequest, PasswordVerifyRequest, StartRequest, VerifyRequest
from backend.errors import BadRequest, NotFound, OpenMFAError, TooManyWatched
from backend.events import Outcome
from backend.logs import request_id_var
from backend.services.context import Actor
from backend.services.tokens import ApiTokenRecord
from backend.store.fastpath import Tx

if TYPE_CHECKING:
    from backend.services import Services

log = logging.getLogger("openmfa.api.channel")

PATH = "/gateway/v1/channel"
#: Challenge ids one channel may watch at once (a bridge holds at most ``max_held``).
MAX_WATCHED = 20_000
#: Calls one channel may have in flight (answered but not yet sent counts): while full the
#: channel reads no further frame, so a flood waits in the bridge's socket, not here.
MAX_CALLS = 512
#: Characters in one client frame (a frame of 512 calls is ~100 KB).
MAX_FRAME = 1 << 20
#: Items per server frame (20,000 outcomes would be 2 MB in one frame).
MAX_ITEMS = 1000
#: A frame the bridge does not take within this long ends the channel (a slow consumer).
SEND_TIMEOUT = 10.0
#: The expiry timer fires at least this often, so a clock that jumps is honoured.
EXPIRY_RECHECK = 1.0
#: The token is checked again before calls when its last check is older than this (a
#: revoked token stops working on an open channel too).
RECHECK_TOKEN_SECONDS = 10.0
#: Ids read per query when watching many at once.
READ_CHUNK = 500
MAX_ID = 64

#: Close codes: the token was refused while open (401, 403), a broken protocol rule (1008),
#: a frame that is not JSON (1007), too big (1009), not text (1003).
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_POLICY = 1008
CLOSE_INVALID = 1007
CLOSE_TOO_BIG = 1009
CLOSE_UNSUPPORTED = 1003

_STATE_SQL = "SELECT id, state, answered_at, expires_at, started_by FROM challenges WHERE id IN "


class _Closed(Exception):
    """The channel ends with this close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _read_states(ids: list[str]) -> Callable[[Tx], list[tuple[str, str, Any, Any, Any]]]:
    """A job reading (id, state, answered_at, expires_at, started_by) of ``ids``."""

    def job(tx: Tx) -> list[tuple[str, str, Any, Any, Any]]:
        rows: list[tuple[str, str, Any, Any, Any]] = []
        for start in range(0, len(ids), READ_CHUNK):
            chunk = ids[start : start + READ_CHUNK]
            sql = _STATE_SQL + "(" + ", ".join("?" * len(chunk)) + ")"
            for row in tx.all(sql, *chunk):
                rows.append((row[0], row[1], tx.read_time(row[2]), tx.read_time(row[3]), row[4]))
        return rows

    return job


async def channel_endpoint(websocket: WebSocket) -> None:
    """Authenticate the upgrade (bridge scope), then serve the channel until it closes."""
    services: Services = websocket.app.state.services
    request_id = secrets.token_hex(8)
    request_id_var.set(request_id)
    client = client_address(websocket)
    actor = Actor("anonymous", client, request_id)
    try:
        bearer = bearer_of(websocket.headers.get("authorization", ""))
        record = await services.tokens.authenticate(bearer)
        actor = Actor(f"gateway:{record.name}", client, request_id)
        services.tokens.authorize(record, BRIDGE)
    except OpenMFAError as exc:
        await audit_refusal(services, actor, exc, "", f"WebSocket {PATH}: {exc.detail}")
        await _deny(websocket, exc)
        return
    await websocket.accept()
    log.info("wait channel opened by %s from %s", record.name, client or "?")
    channel = Channel(websocket, services, record, bearer, actor)
    await channel.serve()
    log.info("wait channel of %s closed", record.name)


async def _deny(websocket: WebSocket, exc: OpenMFAError) -> None:
    """Refuse the upgrade with the status and problem document HTTP would answer."""
    status, body = problem_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    response = JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:  # a server without the denial extension: a bare 403
        await websocket.close(code=CLOSE_POLICY)


class Channel:
    """One open channel: the ids it watches, its calls in flight, its writer; see the module
    docstring."""

    def __init__(
        self,
        websocket: WebSocket,
        services: Services,
        token: ApiTokenRecord,
        bearer: str,
        actor: Actor,
    ) -> None:
        self._ws = websocket
        self._services = services
        self._token = token
        self._bearer = bearer
        self._ephemeral = token.id is None  # the in-process bridge's: no row to re-check
        self._actor = actor
        self._loop = asyncio.get_running_loop()
        self._token_checked = self._loop.time()
        # id -> the bus's unwatch: what a held push costs here, with its heap entry.
        self._watched: dict[str, Callable[[], None]] = {}
        # Ids whose visibility is being read: an outcome arriving meanwhile waits here.
        self._checking: dict[str, Outcome | None] = {}
        self._heap: list[tuple[float, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._on_outcome_cb = self._on_outcome  # one bound method for every watch
        self._outcomes: list[dict[str, Any]] = []
        self._results: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed: _Closed | None = None

    # -- the loop ------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Read frames until the bridge closes the channel or breaks a rule."""
        writer = self._loop.create_task(self._write_loop())
        try:
            while self._closed is None:
                if self._in_flight >= MAX_CALLS:
                    self._room.clear()
                    await self._room.wait()
                    continue
                message = await self._ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await self._frame(message)
        except _Closed as closed:
            self._closed = closed
        except OSError:
            pass  # the connection is gone
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self._stop_watching()
        if self._closed is not None:
            log.warning("closing a wait channel: %s", self._closed.reason)
            with contextlib.suppress(Exception):
                await self._ws.close(code=self._closed.code, reason=self._closed.reason[:120])

    async def _frame(self, message: Mapping[str, Any]) -> None:
        text = message.get("text")
        if text is None:
            raise _Closed(CLOSE_UNSUPPORTED, "frames are JSON text")
        if len(text) > MAX_FRAME:
            raise _Closed(CLOSE_TOO_BIG, f"a frame has at most {MAX_FRAME} characters")
        try:
            frame = json.loads(text)
        except ValueError:
            raise _Closed(CLOSE_INVALID, "a frame is one JSON object") from None
        if not isinstance(frame, dict):
            raise _Closed(CLOSE_INVALID, "a frame is one JSON object")
        unknown = set(frame) - {"watch", "unwatch", "calls"}
        if unknown:
            raise _Closed(CLOSE_POLICY, f"unknown frame member {sorted(unknown)[0]!r}")
        unwatch = _list(frame.get("unwatch", []), "unwatch")
        for challenge_id in unwatch:
            self._unwatch(challenge_id)
        calls = _list(frame.get("calls", []), "calls")
        if len(calls) > MAX_CALLS:
            raise _Closed(CLOSE_POLICY, f"a frame carries at most {MAX_CALLS} calls")
        watch = _list(frame.get("watch", []), "watch")
        if calls or watch:
            await self._recheck_token()
        for call in calls:
            self._start_call(call)
        if watch:
            await self._watch(watch)

    async def _recheck_token(self) -> None:
        """A token revoked while the channel is open ends it (at most every few seconds)."""
        if self._ephemeral or self._loop.time() - self._token_checked < RECHECK_TOKEN_SECONDS:
            return
        try:
            self._token = await self._services.tokens.authenticate(self._bearer)
        except OpenMFAError as exc:
            await audit_refusal(self._services, self._actor, exc, "", f"{PATH}: {exc.detail}")
            raise _Closed(CLOSE_UNAUTHORIZED, exc.detail) from None
        self._token_checked = self._loop.time()

    # -- writing -------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outcomes or self._results:
                outcomes, self._outcomes = self._outcomes[:MAX_ITEMS], self._outcomes[MAX_ITEMS:]
                results, self._results = self._results[:MAX_ITEMS], self._results[MAX_ITEMS:]
                frame: dict[str, Any] = {}
                if outcomes:
                    frame["outcomes"] = outcomes
                if results:
                    frame["results"] = results
                try:
                    async with asyncio.timeout(SEND_TIMEOUT):
                        await self._ws.send_text(json.dumps(frame, separators=(",", ":")))
                except TimeoutError:
                    self._closed = _Closed(CLOSE_POLICY, "the bridge does not read its frames")
                    self._room.set()  # a reader parked on backpressure sees the end
                    # The reader may be parked in receive(): ending the socket wakes it.
                    with contextlib.suppress(Exception):
                        await self._ws.close(code=CLOSE_POLICY, reason=self._closed.reason)
                    return
                self._in_flight -= len(results)
                if self._in_flight < MAX_CALLS:
                    self._room.set()

    def _emit(self, item: dict[str, Any]) -> None:
        self._outcomes.append(item)
        self._wake.set()

    def _emit_problem(self, challenge_id: str, exc: OpenMFAError) -> None:
        self._emit({"id": challenge_id, "problem": problem_of(exc)[1]})

    # -- watching ------------------------------------------------------------------------------

    async def _watch(self, ids: list[Any]) -> None:
        fresh: list[str] = []
        bus = self._services.bus
        for challenge_id in ids:
            if not isinstance(challenge_id, str) or not 0 < len(challenge_id) <= MAX_ID:
                raise _Closed(CLOSE_POLICY, "a challenge id is a string of 1 to 64 characters")
            if challenge_id in self._watched:
                continue
            if len(self._watched) >= MAX_WATCHED:
                self._emit_problem(
                    challenge_id, TooManyWatched(f"a channel watches at most {MAX_WATCHED}")
                )
                continue
            # Watch first, read second: an outcome published between the two is not lost.
            self._checking[challenge_id] = None
            self._watched[challenge_id] = bus.watch(challenge_id, self._on_outcome_cb)
            fresh.append(challenge_id)
        if not fresh:
            return
        try:
            rows = await self._services.db.run_read(_read_states(fresh))
        except OpenMFAError as exc:
            for challenge_id in fresh:
                self._checking.pop(challenge_id, None)
                self._drop(challenge_id)
                self._emit_problem(challenge_id, exc)
            return
        found = {row[0]: row for row in rows}
        for challenge_id in fresh:
            early = self._checking.pop(challenge_id, None)
            row = found.get(challenge_id)
            if challenge_id not in self._watched:
                continue  # unwatched meanwhile
            if row is None or not self._token.may_see(row[4]):
                self._drop(challenge_id)
                self._emit_problem(challenge_id, NotFound("no such challenge"))
            elif early is not None:
                self._drop(challenge_id)
                self._emit_outcome(early.challenge_id, early.state, early.answered_at)
            elif row[1] != "pending":
                self._drop(challenge_id)
                self._emit_outcome(challenge_id, row[1], row[2])
            else:
                heapq.heappush(self._heap, (row[3].timestamp(), challenge_id))
        self._compact_heap()
        self._arm()

    def _on_outcome(self, outcome: Outcome) -> None:
        """The bus's callback (the watcher is spent once it fires)."""
        challenge_id = outcome.challenge_id
        if challenge_id in self._checking:
            self._checking[challenge_id] = outcome
            return
        if self._watched.pop(challenge_id, None) is not None:
            self._emit_outcome(challenge_id, outcome.state, outcome.answered_at)

    def _emit_outcome(self, challenge_id: str, state: str, answered_at: datetime | None) -> None:
        self._emit({"id": challenge_id, "state": state, "answered_at": _iso(answered_at)})

    def _unwatch(self, challenge_id: object) -> None:
        if isinstance(challenge_id, str):
            self._checking.pop(challenge_id, None)
            self._drop(challenge_id)

    def _drop(self, challenge_id: str) -> None:
        unwatch = self._watched.pop(challenge_id, None)
        if unwatch is not None:
            unwatch()

    def _stop_watching(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for unwatch in self._watched.values():
            unwatch()
        self._watched.clear()
        self._checking.clear()
        self._heap.clear()

    # -- expiry: one timer per channel -----------------------------------------------------------

    def _compact_heap(self) -> None:
        """Drop entries of ids no longer watched once they outnumber the watched ones."""
        if len(self._heap) > 2 * len(self._watched) + 1000:
            self._heap = [entry for entry in self._heap if entry[1] in self._watched]
            heapq.heapify(self._heap)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._heap:
            return
        left = self._heap[0][0] - self._services.clock().timestamp()
        self._timer = self._loop.call_later(min(EXPIRY_RECHECK, max(0.0, left)), self._expire_due)

    def _expire_due(self) -> None:
        self._timer = None
        now = self._services.clock().timestamp()
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            _, challenge_id = heapq.heappop(self._heap)
            if challenge_id in self._watched and challenge_id not in self._checking:
                due.append(challenge_id)
        if due:
            self._spawn(self._settle(due))
        self._arm()

    async def _settle(self, due: list[str]) -> None:
        """Expire due challenges (their outcome reaches us through the bus)."""
        for challenge_id in due:
            try:
                view = await self._services.challenges.get(challenge_id)
            except OpenMFAError:
                log.warning("could not settle an expired challenge", exc_info=True)
                continue
            if view.state.is_final and challenge_id in self._watched:
                self._drop(challenge_id)
                self._emit_outcome(challenge_id, view.state.value, view.answered_at)

    def _spawn(self, job: Any) -> None:
        task = self._loop.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- calls ---------------------------------------------------------------------------------

    def _start_call(self, call: Any) -> None:
        if not isinstance(call, dict) or not isinstance(call.get("n"), int):
            raise _Closed(CLOSE_POLICY, "a call is an object with a number n")
        self._in_flight += 1
        self._spawn(self._call(call["n"], call))

    async def _call(self, n: int, call: dict[str, Any]) -> None:
        user = ""
        try:
            body = call.get("body", {})
            if isinstance(body, dict) and isinstance(body.get("user"), str):
                user = body["user"].casefold()
            status, answer = await self._perform(str(call.get("op", "")), call, body)
        except OpenMFAError as exc:
            detail = f"{PATH} {call.get('op')!s:.32}: {exc.detail}"
            await audit_refusal(self._services, self._actor, exc, user, detail)
            status, answer = problem_of(exc)
        except Exception:  # a bug: the call fails, the channel and the other calls go on
            log.exception("a wait-channel call failed")
            status, answer = problem_of(OpenMFAError("an unexpected error occurred"))
        self._results.append({"n": n, "status": status, "body": answer})
        self._wake.set()

    async def _perform(
        self, op: str, call: dict[str, Any], body: object
    ) -> tuple[int, dict[str, Any]]:
        services, actor, token = self._services, self._actor, self._token
        if op == "verify_code":
            bearer = None if self._ephemeral else self._bearer
            verified = await verify_op(services, actor, bearer, parse_data(body, VerifyRequest))
            return 200, verified.model_dump(mode="json")
        if op == "verify_password":
            checked = await password_op(services, actor, parse_data(body, PasswordVerifyRequest))
            return 200, checked.model_dump(mode="json")
        if op == "start":
            started = await start_op(services, actor, token, parse_data(body, StartRequest))
            return 201, started.model_dump(mode="json")
        if op == "submit_code":
            payload = parse_data(body, CodeRequest)
            answered = await submit_op(services, actor, token, _call_id(call), payload)
            return 200, answered.model_dump(mode="json")
        if op == "cancel":
            cancelled = await cancel_op(services, actor, token, _call_id(call))
            return 200, cancelled.model_dump(mode="json")
        raise BadRequest(f"unknown op {op[:32]!r}")


def _list(value: object, member: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Closed(CLOSE_POLICY, f"{member} is a list")
    return value


def _call_id(call: dict[str, Any]) -> str:
    challenge_id = call.get("id")
    if not isinstance(challenge_id, str) or not 0 < len(challenge_id) <= MAX_ID:
        raise BadRequest("this call needs the challenge id (id)")
    return challenge_id


routes = [WebSocketRoute(PATH, channel_endpoint)]
