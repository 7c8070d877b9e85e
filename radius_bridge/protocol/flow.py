"""The decision for one Access-Request, as a generator of effects (sans-IO).

``authenticate(request, ...)`` yields effects (``VerifyPassword``, ``StartAuthentication``,
``WaitOutcome``...); the runner performs each one and sends its result back with
``.send(result)``; the generator finally *returns* the decision (``StopIteration.value``)::

    flow = core.authenticate(request, clock)
    result = None
    while True:
        try:
            effect = flow.send(result)
        except StopIteration as stop:
            decision = stop.value
            break
        result = await perform(effect)

Rules (issue 4), in the order they apply:

0. A request whose User-Name, Calling-Station-Id or NAS-Identifier holds a control character
   (``alice\n``) is rejected at once, with an ``Audit`` that shows the value escaped.
1. A request carrying a State answers a challenge round: the State must be known, unused,
   younger than 300 s and bound to this client and user, or the answer is Reject.
2. ``password<sep>code`` in User-Password: split at the *last* separator, and only when what
   follows is 6-8 digits, so passwords containing the separator still work. With primary
   ``none`` the password is not ours to check, so a User-Password that is nothing but a
   code is taken as the code (a gateway's "OTP" field forwarded as the password).
3. Primary authentication: ``none`` (the gateway checked it, as NPS does), ``local`` or
   ``ldap`` (``VerifyPassword`` with the client's name: the backend checks the password, for
   ``ldap`` by binding to the client's directory; an empty password is refused before) or
   ``radius`` (``UpstreamAuthenticate``; its Class, Filter-Id,
   Framed-* and VSAs are kept). Failing it is Reject, whatever the failmode.
4. Exemptions (``exempt_users``, ``exempt_networks`` against Calling-Station-Id) skip the
   second factor, after the primary, each with an ``Audit``.
5. The second factor: the code from rule 2 (``VerifyCode``); else per mode — *push*: start a
   push and hold the request until it is answered or ``push_timeout`` passes (also without
   any password: RD Gateway via NPS sends only User-Name); *challenge*: start a push and
   answer Access-Challenge at once, the next request carries a code (``SubmitCode``) or an
   empty / non-numeric answer (wait for the push); *otp*: Access-Challenge for the code.
   A user who can only answer with codes gets the otp challenge in every mode; with number
   matching, push mode answers a challenge too, since the number must be shown somewhere.
   A new request for a user whose push is still pending joins that push instead of sending
   another only when it is provably the same sign-in: same non-empty Calling-Station-Id,
   same NAS-Identifier and NAS-IP-Address (:mod:`.pending`).
6. Refusals: unknown or unenrolled users per the client's ``unenrolled`` (``allow`` audits);
   blocked, disabled, locked: Reject at once, no push.
7. The backend refusing the bridge's own token (``Refused("bridge-unauthorized")``), or the
   core knowing it already (``refused``): Reject, whatever the failmode, exemptions included.
   ``Unavailable`` (backend down or slow) during the second factor: failmode ``secure``
   rejects; ``safe`` accepts with an ``Audit`` because the primary already succeeded. With
   primary ``none`` it succeeded at the gateway: the bridge is only asked once the gateway
   (NPS, a VPN's own directory check) verified the password, so "safe" still means "the
   password was right", which is the promise ``--failmode safe`` makes.
8. An unexpected result (a runner bug) is Reject, never Accept, whatever the failmode.

Audits are fire-and-forget: the decision does not wait on the audit being stored, since an
exemption or a failsafe accept must not depend on the backend that may be down; the runner
logs an audit it could not deliver.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Final

from radius_bridge.model import (
    Accept,
    AccessRequest,
    Audit,
    CancelAuthentication,
    Challenge,
    ChallengeRound,
    Checked,
    Decision,
    Effect,
    Outcome,
    Refused,
    Reject,
    Result,
    StartAuthentication,
    Started,
    SubmitCode,
    Unavailable,
    UpstreamAnswer,
    UpstreamAuthenticate,
    VerifyCode,
    VerifyPassword,
    WaitOutcome,
)
from radius_bridge.names import printable
from radius_bridge.protocol.pending import PendingPush, PendingPushes, SignIn
from radius_bridge.protocol.state import StateTable, new_state
from radius_vocabulary.dictionary import Attribute
from radius_vocabulary.settings import DEFAULT_PROMPT, MAX_CODE_CHARS

Flow = Generator[Effect, Result, Decision]

MAX_REPLY_MESSAGE: Final = 253
CODE_LENGTHS: Final = range(6, 9)  # what counts as a code after the separator

OTP_PROMPT: Final = "Type the code from your authenticator app"
WRONG_CODE_PREFIX: Final = "Wrong code, try again. "

#: Reply-Message per Reject reason. Short and plain: gateways show it in a small box. Only
#: for what the user can act on after the password was right; a wrong password gets no
#: message (the gateway says so itself, and we do not tell an attacker why).
MESSAGES: Final[dict[str, str]] = {
    "denied": "Sign-in denied on your phone",
    "fraud": "Sign-in reported as fraud. Contact your help desk",
    "timeout": "No answer from your phone in time. Try again",
    "cancelled": "Sign-in cancelled. Try again",
    "wrong-code": "Wrong code",
    "too-many-attempts": "Too many wrong answers. Start again",
    "not-enrolled": "Multi-factor sign-in is not set up for you. Contact your help desk",
    "blocked": "Your sign-in is blocked. Contact your help desk",
    "disabled": "Your account is disabled. Contact your help desk",
    "locked": "Too many wrong codes. Try again later",
    "backend-unavailable": "Sign-in service unavailable. Try again later",
    "bridge-unauthorized": "Sign-in service unavailable. Try again later",
    "invalid-state": "Sign-in expired or already used. Start again",
    "push-limited": "Too many sign-in requests. Use the code from your app",
    "number-matching": "This sign-in needs number matching, which this gateway cannot show",
}

_FINAL: Final[dict[str, str]] = {
    "denied": "denied",
    "fraud": "fraud",
    "expired": "timeout",
    "cancelled": "cancelled",
}
_REFUSED: Final[dict[str, str]] = {
    "user-disabled": "disabled",
    "user-blocked": "blocked",
    "otp-locked": "locked",
    "invalid-name": "invalid-name",
    "challenge-expired": "timeout",
    "challenge-closed": "cancelled",
    "push-limited": "push-limited",
    "number-matching-unavailable": "number-matching",
    "refused": "denied",
    "bridge-unauthorized": "bridge-unauthorized",
}

#: The backend's reasons for a refused password that the bridge keeps apart in its log and
#: metrics (the audit in the backend has the detail); anything else is ``wrong-password``.
_PASSWORD_REASONS: Final[dict[str, str]] = {
    "no-password": "no-password",
    "directory-unavailable": "directory-unavailable",
    "not-in-directory": "wrong-password",
}


@dataclass(frozen=True)
class FlowLimits:
    """Bounds on one flow."""

    max_code_attempts: int = 3  # wrong or empty answers in one challenge round trip
    #: WaitOutcome calls per push wait: a runner answering "pending" early (a backend
    #: restarting) cannot make the flow spin without end.
    max_waits: int = 256


def truncate_message(text: str, limit: int = MAX_REPLY_MESSAGE) -> str:
    """``text`` cut to at most ``limit`` octets of UTF-8, never inside a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def split_code(
    password: bytes, separator: str, *, code_alone: bool = False
) -> tuple[bytes | None, str | None]:
    """``(password, code)`` from User-Password. ``b"pa,ss,123456"`` -> ``(b"pa,ss",
    "123456")``: split at the last separator, only when 6-8 ASCII digits follow it. With
    ``code_alone`` a value that is only a code gives ``(None, code)``."""
    if code_alone and _is_code(password):
        return None, password.decode("ascii")
    head, found, tail = password.rpartition(separator.encode("utf-8"))
    if found and _is_code(tail):
        return head, tail.decode("ascii")
    return password, None


def _is_code(value: bytes) -> bool:
    # bytes.isdigit() is ASCII-only: no Unicode digits sneaking through as a "code".
    return len(value) in CODE_LENGTHS and value.isdigit()


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None  # a MAC address (Wi-Fi), a phone number (dial-up): not an IP
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def authenticate(
    request: AccessRequest,
    *,
    clock: Callable[[], float],
    states: StateTable,
    pushes: PendingPushes,
    limits: FlowLimits = FlowLimits(),
    bridge_refused: bool = False,
) -> Flow:
    """The decision flow for ``request`` (see the module docstring). ``clock`` is the
    runner's monotonic clock in seconds; push deadlines and State ages use it.
    ``bridge_refused``: the backend refuses this bridge's token, so nothing is accepted."""
    return _Flow(request, clock, states, pushes, limits, bridge_refused).run()


def second_factor(
    request: AccessRequest,
    granted: tuple[Attribute, ...],
    *,
    clock: Callable[[], float],
    states: StateTable,
    pushes: PendingPushes,
    limits: FlowLimits = FlowLimits(),
) -> Flow:
    """Rules 4-7 alone, for a request whose password someone else already proved (the
    upstream accepted a relayed MS-CHAPv2 or EAP sign-in, :mod:`.relay_flow`): exemptions,
    then the push for ``request.user``. ``granted`` goes on the Accept."""
    flow = _Flow(request, clock, states, pushes, limits)
    flow.granted = granted
    exempt = yield from flow._exemption()
    if exempt is not None:
        return exempt
    return (yield from flow._second_factor())


class _Flow:
    def __init__(
        self,
        request: AccessRequest,
        clock: Callable[[], float],
        states: StateTable,
        pushes: PendingPushes,
        limits: FlowLimits,
        bridge_refused: bool = False,
    ) -> None:
        self.bridge_refused = bridge_refused
        self.request = request
        self.client = request.client
        self.user = request.user
        self.clock = clock
        self.states = states
        self.pushes = pushes
        self.limits = limits
        self.granted: tuple[Attribute, ...] = ()

    # -- entry -------------------------------------------------------------------------------

    def run(self) -> Flow:
        if self.bridge_refused:
            # Not even an exempt user: a bridge whose token was revoked must not let anyone
            # in on its own say-so.
            return Reject("bridge-unauthorized", MESSAGES["bridge-unauthorized"])
        if self.request.malformed is not None:
            yield Audit(
                "radius.invalid_attribute",
                printable(self.request.user_name),
                f"client {self.client.name} ({self.request.source[0]}): "
                f"{self.request.malformed}; refused. User-Name "
                f"{printable(self.request.user_name, 160)!r}, Calling-Station-Id "
                f"{printable(self.request.calling_station_id or '', 64)!r}, NAS-Identifier "
                f"{printable(self.request.nas_identifier or '', 64)!r}",
            )
            return Reject("invalid-attribute")
        if not self.user:
            return Reject("invalid-name")
        if self.request.state is not None:
            round_ = self.states.take(self.request.state, self.client.name, self.user, self.clock())
            if round_ is None:
                return Reject("invalid-state", MESSAGES["invalid-state"])
            self.granted = round_.attributes
            return (yield from self._answer(round_))
        return (yield from self._first_round())

    def _first_round(self) -> Flow:
        client = self.client
        password: bytes | None = None
        code: str | None = None
        if self.request.password is not None:
            password, code = split_code(
                self.request.password,
                client.password_separator,
                code_alone=client.primary == "none",
            )
        granted: list[Attribute] = []
        if client.primary != "none":
            if password is None:
                return Reject("no-password")
            primary = yield from self._primary(password)
            if isinstance(primary, Reject):
                return primary
            granted.extend(primary)
        granted.extend(Attribute(name, value) for name, value in client.reply_attributes)
        self.granted = tuple(granted)

        exempt = yield from self._exemption()
        if exempt is not None:
            return exempt
        if code is not None:
            result = yield VerifyCode(self.user, code)
            return (yield from self._code_checked(result, None))
        if client.mode == "otp":
            return self._challenge(ChallengeRound(None, "otp", attributes=self.granted))
        return (yield from self._second_factor())

    # -- primary authentication ----------------------------------------------------------------

    def _primary(self, password: bytes) -> Generator[Effect, Result, Reject | list[Attribute]]:
        if self.client.primary in ("local", "ldap"):
            try:
                text = password.decode("utf-8")
            except UnicodeDecodeError:
                return Reject("wrong-password")  # no stored password is invalid UTF-8
            if not text:
                # An empty password is never checked: to a directory it is an anonymous bind,
                # which "succeeds" without proving anything.
                return Reject("no-password")
            result = yield VerifyPassword(self.user, text, self.client.name)
            if isinstance(result, Checked):
                if result.accepted:
                    return []
                # No message either way: before the password is proven we do not say why.
                return Reject(_PASSWORD_REASONS.get(result.reason, "wrong-password"))
            if isinstance(result, Refused):
                # No message: before the password is proven we do not tell why.
                return Reject(_REFUSED.get(result.kind, result.kind))
            if isinstance(result, Unavailable):
                return Reject("backend-unavailable", MESSAGES["backend-unavailable"])
            return Reject("internal-error")
        answer = yield UpstreamAuthenticate(self.request.user_name, password)
        if isinstance(answer, UpstreamAnswer):
            if answer.accepted:
                return list(answer.attributes)
            message = (
                None if answer.reply_message is None else truncate_message(answer.reply_message)
            )
            return Reject("wrong-password", message)
        if isinstance(answer, Unavailable):
            return Reject("upstream-unavailable", MESSAGES["backend-unavailable"])
        return Reject("internal-error")

    def _exemption(self) -> Generator[Effect, Result, Accept | None]:
        client = self.client
        if self.user.lower() in client.exempt_users:
            yield Audit(
                "radius.exempt_user",
                self.user,
                f"client {client.name}: second factor skipped, user is exempt",
            )
            return Accept(self.granted, reason="exempt-user")
        # Parse Calling-Station-Id only when there is something to match it against.
        ip = _ip(self.request.calling_station_id) if client.exempt_networks else None
        if ip is not None:
            for network in client.exempt_networks:
                if ip.version == network.version and ip in network:
                    yield Audit(
                        "radius.exempt_network",
                        self.user,
                        f"client {client.name}: second factor skipped, "
                        f"Calling-Station-Id {ip} is in exempt network {network}",
                    )
                    return Accept(self.granted, reason="exempt-network")
        return None

    # -- second factor ---------------------------------------------------------------------------

    def _second_factor(self) -> Flow:
        """Push and challenge modes: start a push (or join the pending one)."""
        client = self.client
        origin = SignIn(
            self.request.calling_station_id,
            self.request.nas_identifier,
            self.request.nas_ip_address,
        )
        entry = self.pushes.joinable(client.name, self.user, self.clock(), origin)
        if entry is not None:
            if client.mode == "challenge" or entry.number is not None:
                return self._challenge(
                    ChallengeRound(entry.authentication_id, "push", entry.number, self.granted)
                )
            return (yield from self._wait_push(entry.authentication_id))
        calling = _ip(self.request.calling_station_id)
        result = yield StartAuthentication(
            user=self.user,
            method="auto",  # push if the user has an app, otherwise a code-only challenge
            idempotency_key=self.request.idempotency_key,
            client_name=client.name,
            client_ip=None if calling is None else str(calling),
            nas_identifier=self.request.nas_identifier or self.request.nas_ip_address,
            number_matching=client.number_matching_override,
            can_show_number=client.can_show_number,
        )
        if isinstance(result, Started):
            if result.state != "pending":
                # A repeat of an idempotency key (the bridge restarted while the gateway
                # retransmitted): the first copy's outcome stands.
                return self._final(result.state)
            if result.method == "otp":
                return self._challenge(
                    ChallengeRound(result.authentication_id, "otp", attributes=self.granted)
                )
            self.pushes.add(
                client.name,
                self.user,
                result.authentication_id,
                result.number,
                self.clock() + client.push_timeout,
                origin,
            )
            if client.mode == "challenge" or result.number is not None:
                return self._challenge(
                    ChallengeRound(result.authentication_id, "push", result.number, self.granted)
                )
            return (yield from self._wait_push(result.authentication_id))
        return (yield from self._failed(result))

    def _wait_push(self, authentication_id: str) -> Flow:
        """Hold the request until the push is final or ``push_timeout`` passes."""
        now = self.clock()
        entry: PendingPush | None = self.pushes.find(self.client.name, self.user, now)
        if entry is not None and entry.authentication_id != authentication_id:
            entry = None
        if entry is not None:
            self.pushes.hold(entry)
        last = True
        try:
            result = yield from self._wait(authentication_id, now + self.client.push_timeout)
        finally:
            # Also on GeneratorExit (the runner dropped the flow): never leave a holder behind.
            if entry is not None:
                last = self.pushes.release(entry)
        if result is None:
            if last:
                # Nobody else waits on it: take it off the phone, refuse late answers.
                yield CancelAuthentication(authentication_id)
                if entry is not None:
                    self.pushes.remove(entry)
            return Reject("timeout", MESSAGES["timeout"])
        if entry is not None and not isinstance(result, Unavailable):
            self.pushes.remove(entry)
        if isinstance(result, Outcome):
            return self._final(result.state)
        return (yield from self._failed(result))

    def _wait(
        self, authentication_id: str, deadline: float
    ) -> Generator[Effect, Result, Result | None]:
        """Long-poll until a final state; None when ``deadline`` passes first."""
        for _ in range(self.limits.max_waits):
            remaining = deadline - self.clock()
            if remaining <= 0:
                return None
            result = yield WaitOutcome(authentication_id, remaining)
            if not (isinstance(result, Outcome) and result.state == "pending"):
                return result
        return None

    def _final(self, state: str) -> Decision:
        if state == "approved":
            return Accept(self.granted, reason="approved")
        reason = _FINAL.get(state, "denied")
        return Reject(reason, MESSAGES[reason])

    # -- challenge rounds --------------------------------------------------------------------------

    def _challenge(self, round_: ChallengeRound, prefix: str = "") -> Challenge:
        prompt = self.client.prompt
        if round_.method == "otp" and prompt == DEFAULT_PROMPT:
            prompt = OTP_PROMPT  # "approve on your phone" would mislead: there is no push
        if round_.number is not None:
            prompt = f"Pick {round_.number} on your phone. {prompt}"
        return Challenge(new_state(), truncate_message(prefix + prompt), next_round=round_)

    def _answer(self, round_: ChallengeRound) -> Flow:
        """The request answering a Challenge: a code, or an empty / placeholder answer."""
        auth_id = round_.authentication_id
        text = (self.request.password or b"").decode("utf-8", "replace")
        answer = "".join(text.split())  # "123 456" as typed from a grouped display
        if answer.isascii() and answer.isdigit() and len(answer) <= MAX_CODE_CHARS:
            if auth_id is None:
                result = yield VerifyCode(self.user, answer)
            else:
                result = yield SubmitCode(auth_id, answer)
                if isinstance(result, Refused) and result.kind == "challenge-expired":
                    # The backend's challenge timed out while the user typed; the code itself
                    # is as good as one sent with the password.
                    result = yield VerifyCode(self.user, answer)
                elif isinstance(result, Refused) and result.kind == "challenge-closed":
                    # Answered on the phone meanwhile (or cancelled): that outcome decides.
                    result = yield WaitOutcome(auth_id, 0.0)
                    if isinstance(result, Outcome):
                        self._forget_push(auth_id)
                        if result.state == "pending":
                            return Reject("cancelled", MESSAGES["cancelled"])
                        return self._final(result.state)
                    return (yield from self._failed(result))
            return (yield from self._code_checked(result, round_))
        if round_.method == "push" and auth_id is not None:
            return (yield from self._wait_push(auth_id))
        return (yield from self._retry(round_, wrong=False))  # nothing to wait for: ask again

    def _code_checked(self, result: Result, round_: ChallengeRound | None) -> Flow:
        """After VerifyCode / SubmitCode. ``round_`` None: the code came with the password,
        one round only, so a wrong code is a Reject rather than another challenge."""
        if isinstance(result, Checked):
            if result.accepted:
                if round_ is not None and round_.authentication_id is not None:
                    self._forget_push(round_.authentication_id)
                return Accept(self.granted, reason="ok")
            if result.reason == "locked":
                return Reject("locked", MESSAGES["locked"])
            if round_ is None:
                return Reject("wrong-code", MESSAGES["wrong-code"])
            return (yield from self._retry(round_, wrong=True))
        return (yield from self._failed(result))

    def _retry(self, round_: ChallengeRound, *, wrong: bool) -> Flow:
        attempts = round_.attempts + 1
        if attempts >= self.limits.max_code_attempts:
            if round_.authentication_id is not None:
                yield CancelAuthentication(round_.authentication_id)
                self._forget_push(round_.authentication_id)
            return Reject("too-many-attempts", MESSAGES["too-many-attempts"])
        prefix = WRONG_CODE_PREFIX if wrong else ""
        return self._challenge(replace(round_, attempts=attempts), prefix)

    def _forget_push(self, authentication_id: str) -> None:
        entry = self.pushes.find(self.client.name, self.user, self.clock())
        if entry is not None and entry.authentication_id == authentication_id:
            self.pushes.remove(entry)

    # -- refusals and failures -------------------------------------------------------------------

    def _failed(self, result: Result) -> Flow:
        """A second-factor effect came back with something other than its normal answer."""
        client = self.client
        if isinstance(result, Refused):
            if result.kind in ("unknown-user", "user-not-enrolled"):
                if client.unenrolled == "allow":
                    yield Audit(
                        "radius.unenrolled_allowed",
                        self.user,
                        f"client {client.name}: {result.kind}, second factor skipped",
                    )
                    return Accept(self.granted, reason="unenrolled-allowed")
                return Reject("not-enrolled", MESSAGES["not-enrolled"])
            reason = _REFUSED.get(result.kind, "denied")
            return Reject(reason, MESSAGES.get(reason))
        if isinstance(result, Unavailable):
            if client.failmode == "safe":
                yield Audit(
                    "radius.failsafe_accept",
                    self.user,
                    f"client {client.name}: second factor skipped, backend unavailable "
                    f"({result.detail}); primary authentication: {client.primary}",
                )
                return Accept(self.granted, reason="failsafe")
            return Reject("backend-unavailable", MESSAGES["backend-unavailable"])
        return Reject("internal-error")
