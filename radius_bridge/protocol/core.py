"""The sans-IO RADIUS server: datagrams and a clock in, what to send out.

The asyncio layer calls three methods, nothing else decides anything::

    out = core.receive(datagram, source, now)
    match out:
        case Drop():       # count it (core.drops); log it if out.log (rate-limited)
        case Send():       # transport.sendto(out.data, source)
        case Absorbed():   # a retransmission of a request being decided: nothing to do
        case Begin():      # run core.authenticate(out.request, clock) to its Decision, then
            data = core.finish(out.request, decision, clock())
            transport.sendto(data, source)
            # if the flow is dropped without a decision: core.abandon(out.request)

``receive`` order, cheapest refusal first: unknown client (no parsing for strangers),
malformed, Message-Authenticator (missing when required, or wrong: the shared secret
differs), Status-Server (answered here, RFC 5997), then duplicates (RFC 5080). Only a
request that passed all of these reaches the flow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from radius_bridge.clients import ClientTable
from radius_bridge.model import Accept, AccessRequest, Challenge, ClientConfig, Decision, Reject
from radius_bridge.names import has_control, normalise
from radius_bridge.protocol import dedup, relay, relay_flow
from radius_bridge.protocol import packet as codec
from radius_bridge.protocol.flow import Flow, FlowLimits, authenticate, truncate_message
from radius_bridge.protocol.pending import PendingPushes
from radius_bridge.protocol.state import StateTable
from radius_vocabulary.dictionary import Dictionary, default_dictionary

#: Drop reasons (the keys of :attr:`BridgeCore.drops`).
DROP_REASONS: Final = (
    "unknown-client",
    "malformed",
    "unsupported-code",
    "missing-message-authenticator",
    "bad-message-authenticator",
)
DEFAULT_LOG_INTERVAL: Final = 60.0
_MAX_LOG_KEYS: Final = 1024


@dataclass(frozen=True, slots=True)
class Drop:
    """Send nothing. ``reason`` is one of :data:`DROP_REASONS`; ``detail`` says more (the
    malformation, the source); ``log`` is True at most once per reason and source address
    per log interval, so a misconfigured or hostile sender cannot flood the log."""

    reason: str
    detail: str = ""
    log: bool = False


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data`` back to the source. ``reason``: ``status-server``, ``duplicate``
    (a cached response, byte for byte)."""

    data: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Absorbed:
    """A retransmission of a request still being decided: send nothing, start nothing."""


@dataclass(frozen=True, slots=True)
class Begin:
    """A new, verified Access-Request: run the flow for it."""

    request: AccessRequest


Received = Drop | Send | Absorbed | Begin
ABSORBED: Final = Absorbed()


#: Decisions taken because the backend could not be reached (the client's failmode): never
#: replayed to a retransmission.
UNAVAILABLE_REASONS: Final = frozenset({"backend-unavailable", "failsafe"})


class BridgeCore:
    """Holds the client table, duplicate cache, State table and pending pushes.

    Not thread-safe: one event loop drives it. Counters are plain ints for the metrics layer:
    :attr:`drops` by reason, :attr:`counters` for the rest (``received``, ``status-server``,
    ``duplicate``, ``absorbed``, ``begun``, ``accept``, ``reject``, ``challenge``,
    ``reply-encoding-failed``).
    """

    def __init__(
        self,
        clients: ClientTable,
        *,
        dictionary: Dictionary | None = None,
        duplicates: dedup.DuplicateCache | None = None,
        states: StateTable | None = None,
        pushes: PendingPushes | None = None,
        limits: FlowLimits | None = None,
        log_interval: float = DEFAULT_LOG_INTERVAL,
    ) -> None:
        self.clients = clients  # replace with a new table when the client list changes
        self.dictionary = dictionary or default_dictionary()
        self.duplicates = duplicates or dedup.DuplicateCache()
        self.states = states or StateTable()
        self.pushes = pushes or PendingPushes()
        self.limits = limits or FlowLimits()
        self.log_interval = log_interval
        #: Why the backend refuses this bridge's token (set by the runner on a 401/403);
        #: while set, every request is rejected whatever the client's failmode.
        self.credential_refused: str | None = None
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.counters: dict[str, int] = {}
        self._logged: dict[tuple[str, str], float] = {}

    # -- input -----------------------------------------------------------------------------

    def receive(
        self, datagram: bytes, source: tuple[str, int] | tuple[str, int, int, int], now: float
    ) -> Received:
        """Classify one datagram from ``source`` (the address tuple as the socket gives it,
        IPv4 or IPv6) at time ``now`` (the runner's monotonic clock)."""
        self._count("received")
        host = source[0]
        client = self.clients.match(host)
        if client is None:
            return self._drop("unknown-client", host, now, f"datagram from unknown client {host}")
        return self.receive_for(client, datagram, source, now)

    def receive_for(
        self,
        client: ClientConfig,
        datagram: bytes,
        source: tuple[str, int] | tuple[str, int, int, int],
        now: float,
    ) -> Received:
        """:meth:`receive` for a packet whose client is already known: RadSec, where the
        connection's certificate chose it (and ``client.secret`` is the fixed ``radsec``).
        ``source`` is the connection's peer address, so each connection has its own
        Identifier space for duplicates (RFC 6614 section 2.5)."""
        host, port = source[0], source[1]
        try:
            packet = codec.decode_request(datagram)
        except codec.MalformedPacket as exc:
            reason = "unsupported-code" if exc.reason == "unsupported-code" else "malformed"
            return self._drop(reason, host, now, f"client {client.name} ({host}): {exc}")
        if packet.has_message_authenticator:
            if not codec.verify_message_authenticator(packet, client.secret):
                # RFC 3579: silently discard. Almost always a shared secret that differs.
                return self._drop(
                    "bad-message-authenticator",
                    host,
                    now,
                    f"client {client.name} ({host}): Message-Authenticator does not match;"
                    " the shared secret probably differs",
                )
        elif packet.code == codec.STATUS_SERVER or client.require_message_authenticator:
            # RFC 5997 requires it on Status-Server; BlastRADIUS (CVE-2024-3596) on the rest.
            return self._drop(
                "missing-message-authenticator",
                host,
                now,
                f"client {client.name} ({host}): request without Message-Authenticator",
            )
        if packet.code == codec.STATUS_SERVER:
            self._count("status-server")
            data = codec.encode_reply(
                codec.ACCESS_ACCEPT,
                packet.identifier,
                packet.authenticator,
                client.secret,
                b"",
                packet.get_all(codec.PROXY_STATE),
            )
            return Send(data, "status-server")
        key = (host, port, packet.identifier, packet.authenticator)
        seen = self.duplicates.begin(key, now)
        if seen is dedup.IN_PROGRESS:
            self._count("absorbed")
            return ABSORBED
        if seen is not None:
            self._count("duplicate")
            return Send(seen, "duplicate")
        self._count("begun")
        return Begin(self._request(packet, client, (host, port), datagram))

    def _request(
        self, packet: codec.Packet, client: ClientConfig, source: tuple[str, int], datagram: bytes
    ) -> AccessRequest:
        user_name = ""
        user = ""
        password: bytes | None = None
        state: bytes | None = None
        calling: str | None = None
        nas_identifier: str | None = None
        nas_ip: str | None = None
        proxy_state: list[bytes] = []
        malformed: list[str] = []
        for kind, value in packet.attributes:
            if kind == codec.USER_NAME:
                try:
                    user_name = value.decode("utf-8")
                except UnicodeDecodeError:
                    # Kept for the log; the empty user makes the flow reject it.
                    user_name = value.decode("utf-8", "replace")
                else:
                    user = normalise(user_name, client.user_names)
                if has_control(user_name):
                    malformed.append("User-Name")
            elif kind == codec.USER_PASSWORD:
                password = codec.decrypt_password(value, client.secret, packet.authenticator)
            elif kind == codec.STATE:
                state = value
            elif kind == codec.CALLING_STATION_ID:
                calling = value.decode("utf-8", "replace")
                if has_control(calling):
                    malformed.append("Calling-Station-Id")
            elif kind == codec.NAS_IDENTIFIER:
                nas_identifier = value.decode("utf-8", "replace")
                if has_control(nas_identifier):
                    malformed.append("NAS-Identifier")
            elif kind == codec.NAS_IP_ADDRESS:
                # Length checked by the decoder (4); formatting by hand costs a tenth of
                # ipaddress.IPv4Address, and this runs for every request.
                nas_ip = f"{value[0]}.{value[1]}.{value[2]}.{value[3]}"
            elif kind == codec.PROXY_STATE:
                proxy_state.append(value)
        return AccessRequest(
            client=client,
            source=source,
            identifier=packet.identifier,
            authenticator=packet.authenticator,
            user_name=user_name,
            user=user,
            password=password,
            state=state,
            calling_station_id=calling,
            nas_identifier=nas_identifier,
            nas_ip_address=nas_ip,
            raw=packet.data,
            proxy_state=tuple(proxy_state),
            # A control character is never part of a name or address: refused (and audited)
            # rather than cleaned, so "alice\n" cannot pass as some other user.
            malformed=(f"{', '.join(malformed)} holds a control character" if malformed else None),
            # Only without User-Password: PAP stays PAP whatever else the request carries.
            relay=relay.classify(packet.attributes) if password is None else None,
        )

    # -- the decision -----------------------------------------------------------------------

    def authenticate(self, request: AccessRequest, clock: Callable[[], float]) -> Flow:
        """The decision flow for ``request``, wired to this core's State table and pending
        pushes (see :mod:`radius_bridge.protocol.flow`; MS-CHAPv2, CHAP and EAP requests:
        :mod:`radius_bridge.protocol.relay_flow`)."""
        if (
            request.relay is not None
            and request.malformed is None
            and self.credential_refused is None
        ):
            return relay_flow.authenticate(
                request,
                clock=clock,
                states=self.states,
                pushes=self.pushes,
                dictionary=self.dictionary,
                limits=self.limits,
            )
        return authenticate(
            request,
            clock=clock,
            states=self.states,
            pushes=self.pushes,
            limits=self.limits,
            bridge_refused=self.credential_refused is not None,
        )

    def finish(self, request: AccessRequest, decision: Decision, now: float) -> bytes:
        """Encode ``decision`` as the response to ``request``, cache it for duplicates and, for
        a Challenge, record its State. Returns the datagram to send.

        If an Accept's attributes cannot be encoded or do not fit in 4096 octets, the answer
        is Access-Reject (counted as ``reply-encoding-failed``): dropping attributes such as
        a Filter-Id could grant more access than intended.
        """
        try:
            data = self._encode(request, decision)
        except ValueError:
            self._count("reply-encoding-failed")
            decision = Reject("reply-encoding-failed")
            data = self._encode(request, decision)
        if isinstance(decision, Challenge) and decision.next_round is not None:
            self.states.put(
                decision.state, request.client.name, request.user, decision.next_round, now
            )
        self._count(type(decision).__name__.lower())
        if decision.reason in UNAVAILABLE_REASONS:
            # Decided without the backend (a node restarting, a database failover): the
            # gateway's retransmission is decided afresh and succeeds once it is back.
            self.duplicates.forget(self._key(request))
        else:
            self.duplicates.answer(self._key(request), data, now)
        return data

    def _encode(self, request: AccessRequest, decision: Decision) -> bytes:
        if isinstance(decision, Accept):
            code = codec.ACCESS_ACCEPT
            attributes = codec.encode_attributes(decision.attributes, self.dictionary)
        elif isinstance(decision, Challenge):
            code = codec.ACCESS_CHALLENGE
            attributes = (
                codec.encode_attribute(codec.STATE, decision.state) if decision.state else b""
            ) + _reply_message(decision.reply_message)
        else:
            code = codec.ACCESS_REJECT
            attributes = (
                b"" if decision.reply_message is None else _reply_message(decision.reply_message)
            )
        if decision.relayed is not None:
            # After our own attributes; MPPE keys encrypted for this gateway only now.
            attributes += relay.encode_relayed(
                decision.relayed, request.client.secret, request.authenticator
            )
        return codec.encode_reply(
            code,
            request.identifier,
            request.authenticator,
            request.client.secret,
            attributes,
            request.proxy_state,
        )

    def abandon(self, request: AccessRequest) -> None:
        """The flow for ``request`` ended without a decision (runner error, shutdown): forget
        it, so the client's next retransmission starts over instead of being absorbed."""
        self.duplicates.forget(self._key(request))

    def expire(self, now: float) -> None:
        """Housekeeping (call every few seconds): drop expired duplicates, States, pushes."""
        self.duplicates.expire(now)
        self.states.expire(now)
        self.pushes.expire(now)
        cutoff = now - self.log_interval
        self._logged = {key: at for key, at in self._logged.items() if at > cutoff}

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _key(request: AccessRequest) -> dedup.Key:
        return (request.source[0], request.source[1], request.identifier, request.authenticator)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _drop(self, reason: str, host: str, now: float, detail: str) -> Drop:
        self.drops[reason] += 1
        key = (reason, host)
        last = self._logged.get(key)
        log = last is None or now - last >= self.log_interval
        if log:
            if len(self._logged) >= _MAX_LOG_KEYS and key not in self._logged:
                # Spoofed sources cannot grow this; losing the memory only means an
                # extra log line.
                self._logged.clear()
            self._logged[key] = now
        return Drop(reason, detail, log)


def _reply_message(text: str) -> bytes:
    if not text:
        return b""  # RFC 2865: a text attribute is never empty; leave it out instead
    return codec.encode_attribute(codec.REPLY_MESSAGE, truncate_message(text).encode("utf-8"))
