"""The bridge's vocabulary: RADIUS client settings (their choices and limits, shared with the
backend, are :mod:`radius_vocabulary.settings`'s), and the effects, results and decisions
that pass between the sans-IO flow (:mod:`radius_bridge.protocol.flow`) and the asyncio
layer that carries them out.

The flow never does I/O. It *yields* an effect (``StartAuthentication``...), the runner
performs it (HTTP to the backend, UDP to an upstream RADIUS server) and sends the result back
in; at the end the flow returns a :data:`Decision`. Tests drive the flow with results of
their choosing, no sockets needed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal, get_args

from radius_vocabulary.audit import BridgeAuditAction
from radius_vocabulary.dictionary import Attribute
from radius_vocabulary.settings import (
    DEFAULT_PROMPT,
    FailMode,
    Mode,
    NameFormat,
    NumberMatching,
    Primary,
    Unenrolled,
)

#: Changes if what goes into :attr:`AccessRequest.idempotency_key` ever changes, so an old
#: and a new bridge never take each other's keys for the same sign-in by accident.
IDEMPOTENCY_KEY_VERSION = b"openmfa-radius-1"

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address
RelayKind = Literal["eap", "mschapv2", "mschapv1", "chap"]


# -- per-client settings (fetched from the backend, or read from a file) ----------------------


@dataclass(frozen=True)
class Upstream:
    """The RADIUS server that checks passwords when ``primary`` is ``radius``."""

    host: str
    port: int
    secret: bytes
    timeout: float = 10.0


@dataclass(frozen=True)
class NameRule:
    """How the User-Name a gateway sends becomes an OpenMFA user name.

    ``strip``: ``CONTOSO\\alice`` and ``alice@contoso.com`` become ``alice``. ``keep``: as
    sent. ``map``: a realm listed in ``realm_map`` is rewritten with its template (``{user}``
    is the bare name, e.g. ``partner.example -> "{user}.partner"``); other realms are stripped.
    """

    format: NameFormat = "strip"
    realm_map: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ClientConfig:
    """Everything the bridge knows about one RADIUS client (a gateway)."""

    name: str
    networks: tuple[Network, ...]
    secret: bytes
    mode: Mode = "push"
    primary: Primary = "none"
    upstream: Upstream | None = None
    require_message_authenticator: bool = True
    failmode: FailMode = "secure"
    unenrolled: Unenrolled = "reject"
    push_timeout: float = 55.0
    prompt: str = DEFAULT_PROMPT
    user_names: NameRule = field(default_factory=NameRule)
    exempt_users: frozenset[str] = frozenset()  # normalised, lower case
    exempt_networks: tuple[Network, ...] = ()  # matched against Calling-Station-Id
    password_separator: str = ","  # noqa: S105 - a separator, not a password
    reply_attributes: tuple[tuple[str, str], ...] = ()  # ("Filter-Id", "vpn-users"), ...
    number_matching: NumberMatching = "policy"  # "policy": the user's policy decides
    #: RadSec (RFC 6614): SHA-256 digests of the client certificates bound to this client.
    #: Empty: UDP only. With no ``secret`` (b""), RadSec only: no UDP datagram matches it.
    radsec_fingerprints: tuple[bytes, ...] = ()

    @property
    def number_matching_override(self) -> bool | None:
        """What the start request says about number matching (``None``: the user's policy)."""
        return None if self.number_matching == "policy" else self.number_matching == "on"

    @property
    def can_show_number(self) -> bool:
        """Only a challenge's Reply-Message can show the number; push mode answers only
        Accept or Reject (RD Gateway through NPS shows no text)."""
        return self.mode != "push"


# -- what the flow sees of an Access-Request ----------------------------------------------------


@dataclass(frozen=True)
class AccessRequest:
    """A verified, decoded Access-Request (Message-Authenticator already checked)."""

    client: ClientConfig
    source: tuple[str, int]
    identifier: int
    authenticator: bytes
    user_name: str  # as sent
    user: str  # normalised by the client's NameRule
    password: bytes | None  # User-Password, decrypted; None when absent
    state: bytes | None  # State attribute of a challenge answer
    calling_station_id: str | None = None
    nas_identifier: str | None = None
    nas_ip_address: str | None = None
    raw: bytes = b""  # the datagram, for forwarding upstream
    proxy_state: tuple[bytes, ...] = ()  # Proxy-State values, copied back in order (RFC 2865)
    #: Why the request is refused before anything else (a string attribute holding a
    #: control character); None for a well-formed request.
    malformed: str | None = None
    #: How the password is proven when it is not User-Password: ``eap``, ``mschapv2``,
    #: ``mschapv1`` or ``chap`` (see :mod:`radius_bridge.protocol.relay`); None for PAP or
    #: no password at all.
    relay: RelayKind | None = None

    @property
    def share_user(self) -> str:
        """Whose share of the held pool this request takes (:mod:`.protocol.shares`): the
        user; for a relayed request (EAP, MS-CHAPv2) the user *and* Calling-Station-Id, since
        PEAP's outer identity is often the same ``anonymous`` for every user of a gateway,
        and 16 held sign-ins for all of them together would be far too few."""
        if self.relay is None:
            return self.user
        return f"{self.user}\x00{self.calling_station_id or ''}"

    @property
    def idempotency_key(self) -> str:
        """Same for every copy of this sign-in, whichever bridge it reaches; different for
        every new one.

        SHA-256 (hex) over the client's name, the user, the Calling-Station-Id and the
        Request Authenticator, each length-prefixed so no two tuples share an encoding.
        Neither the bridge nor the address the packet came from is in it: a gateway that
        fails over to a second bridge (a RADIUS server group) resends the same packet,
        perhaps from another interface, and must join the first bridge's authentication
        instead of sending the user a second push. The Request Authenticator (16 random
        bytes per new request, RFC 2865) is what tells two sign-ins of one user apart; the
        backend keys it for every bridge alike (scope "bridge") and refuses it for another
        user.
        """
        fields = (
            IDEMPOTENCY_KEY_VERSION,
            self.client.name.encode(),
            self.user.encode(),
            (self.calling_station_id or "").encode(),
            self.authenticator,
        )
        encoded = b"".join(len(f).to_bytes(4, "big") + f for f in fields)
        return hashlib.sha256(encoded).hexdigest()


# -- effects the flow yields, and their results ------------------------------------------------


@dataclass(frozen=True)
class VerifyPassword:
    """Primary ``local`` or ``ldap``: the backend checks the user's password.

    ``local``: the OpenMFA password (argon2id), or the directory password for a user who
    comes from a directory. ``ldap``: the backend binds as the user to the directory set for
    ``client_name``; the bridge does no LDAP itself and sends the client's name so the backend
    knows which directory (and refuses a user of another one).
    """

    user: str
    password: str
    client_name: str | None = None


@dataclass(frozen=True)
class UpstreamAuthenticate:
    """Primary ``radius``: forward User-Name and password to the upstream server."""

    user_name: str
    password: bytes


@dataclass(frozen=True)
class UpstreamRelay:
    """Relay the gateway's request to the upstream (EAP, MS-CHAPv2): ``attributes`` in wire
    form, Message-Authenticator and Proxy-State left out (the upstream hop gets its own)."""

    attributes: bytes


@dataclass(frozen=True)
class StartAuthentication:
    """Start (or join) a second-factor authentication in the backend."""

    user: str
    method: Literal["push", "otp", "auto"]
    idempotency_key: str
    client_name: str
    client_ip: str | None
    nas_identifier: str | None
    number_matching: bool | None = None  # the client's override; None: the user's policy
    can_show_number: bool = True


@dataclass(frozen=True)
class WaitOutcome:
    """Long-poll the authentication until it is final or ``seconds`` have passed."""

    authentication_id: str
    seconds: float


@dataclass(frozen=True)
class SubmitCode:
    """The user typed a code in answer to a challenge."""

    authentication_id: str
    code: str


@dataclass(frozen=True)
class VerifyCode:
    """A code that came with the password (``password,code``) or in otp mode."""

    user: str
    code: str


@dataclass(frozen=True)
class CancelAuthentication:
    """The flow gave up on a pending authentication (push timeout)."""

    authentication_id: str


@dataclass(frozen=True)
class Audit:
    """A decision the backend must record because the bridge made it alone."""

    action: BridgeAuditAction
    user: str
    detail: str


Effect = (
    VerifyPassword
    | UpstreamAuthenticate
    | UpstreamRelay
    | StartAuthentication
    | WaitOutcome
    | SubmitCode
    | VerifyCode
    | CancelAuthentication
    | Audit
)


@dataclass(frozen=True)
class Checked:
    """Result of ``VerifyPassword``, ``VerifyCode`` and ``SubmitCode``."""

    accepted: bool
    reason: str  # backend's reason: ok, wrong-code, replayed, wrong-password, ...


@dataclass(frozen=True)
class UpstreamAnswer:
    """Result of ``UpstreamAuthenticate``: accepted or not, and what it granted."""

    accepted: bool
    attributes: tuple[Attribute, ...] = ()  # Class, Filter-Id, Framed-*, VSAs to copy back
    reply_message: str | None = None


@dataclass(frozen=True)
class Started:
    """Result of ``StartAuthentication``."""

    authentication_id: str
    method: Literal["push", "otp"]
    state: str  # pending, or already final for a repeated idempotency key
    number: int | None  # number matching: show it to the user


RefusedKind = Literal[
    "unknown-user",
    "user-not-enrolled",
    "user-disabled",
    "user-blocked",
    "otp-locked",
    "challenge-closed",
    "challenge-expired",
    "invalid-name",
    "push-limited",
    "number-matching-unavailable",
    # Any other 4xx: the backend said no for a reason this bridge does not know (a newer
    # backend). Still a refusal, so a reject, never the failmode.
    "refused",
    # The backend refused the bridge itself (its token revoked, or of the wrong scope).
    "bridge-unauthorized",
]
#: The backend's problem types the flow understands as "this user may not sign in now".
REFUSED_KINDS: frozenset[str] = frozenset(get_args(RefusedKind))


@dataclass(frozen=True)
class Refused:
    """The backend refused the user (result of Start/Verify/Submit effects)."""

    kind: RefusedKind
    detail: str


@dataclass(frozen=True)
class Outcome:
    """Result of ``WaitOutcome``: the state now (``pending`` if the wait ran out)."""

    state: str


@dataclass(frozen=True)
class Unavailable:
    """The backend or upstream did not answer in time, or answered 5xx: apply the failmode."""

    detail: str


@dataclass(frozen=True)
class Done:
    """Result of effects that return nothing (``Audit``, ``CancelAuthentication``)."""


@dataclass(frozen=True)
class Relayed:
    """Attributes passed on from the upstream's answer in wire form: ``attributes`` as
    ``(type, value)`` (EAP-Message, State, MS-CHAP2-Success inside its Vendor-Specific...),
    ``keys`` as ``(Microsoft sub-type, plaintext key)`` -- MS-MPPE-Send-Key and -Recv-Key,
    salt-encrypted for the gateway only when the reply is encoded, since that needs the
    gateway's secret and Request Authenticator (RFC 2548 2.4.2)."""

    attributes: tuple[tuple[int, bytes], ...] = ()
    keys: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class RelayAnswer:
    """Result of ``UpstreamRelay``: the upstream's verified reply, taken apart.

    ``code``: Access-Accept (2), -Reject (3) or -Challenge (11). ``granted``: what an Accept
    grants, as :class:`UpstreamAnswer` copies it. ``relayed``: what goes back to the gateway
    besides (EAP-Message, State, MS-CHAP2-Success / MS-CHAP-Error, the MPPE keys decrypted).
    ``user_name``: the User-Name of an Accept (the inner identity of PEAP / TTLS) or None.
    ``eap_identifier``: the Identifier of the EAP packet in the reply (for the EAP-Failure
    replacing an EAP-Success), or None without EAP-Message.
    """

    code: int
    granted: tuple[Attribute, ...] = ()
    relayed: Relayed = Relayed()
    user_name: str | None = None
    eap_identifier: int | None = None


Result = Checked | UpstreamAnswer | RelayAnswer | Started | Refused | Outcome | Unavailable | Done


# -- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accept:
    attributes: tuple[Attribute, ...] = ()
    reason: str = "ok"
    relayed: Relayed | None = None  # from the upstream (EAP, MS-CHAPv2), after attributes


@dataclass(frozen=True)
class Reject:
    reason: str  # for the log and metrics: wrong-password, denied, timeout, blocked, ...
    reply_message: str | None = None
    relayed: Relayed | None = None  # EAP-Failure, MS-CHAP-Error


@dataclass(frozen=True)
class ChallengeRound:
    """What the request answering a Challenge continues. The core records it under the
    Challenge's State when the Challenge is sent, bound to the client and user."""

    authentication_id: str | None  # the backend authentication; None: check with VerifyCode
    method: Literal["push", "otp"]  # push: an empty answer waits for the phone
    number: int | None = None  # number matching: shown again when asking once more
    attributes: tuple[Attribute, ...] = ()  # granted in the first round, for the final Accept
    attempts: int = 0  # wrong or empty answers so far


@dataclass(frozen=True)
class Challenge:
    """Answer Access-Challenge; the next request must carry ``state``."""

    state: bytes
    reply_message: str
    reason: str = "challenge"
    next_round: ChallengeRound | None = None  # None: the State is not recorded
    #: An upstream's EAP round relayed (its State is among these; ``state`` is then empty).
    relayed: Relayed | None = None


Decision = Accept | Reject | Challenge
