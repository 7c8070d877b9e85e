"""The decision for a relayed MS-CHAPv2, CHAP or EAP request (sans-IO, like
:mod:`.flow`): a generator of effects returning the decision.

One gateway request is one ``UpstreamRelay`` effect, so one upstream request: the core's
duplicate cache absorbs the gateway's retransmissions while the flow runs and answers them
from its cache afterwards (RFC 5080), and the upstream client retransmits the *same*
upstream request. An EAP conversation is several gateway requests, each relayed on its own;
only the round the upstream accepts reaches the second factor, so a sign-in gets one push.

* Upstream Access-Challenge (an EAP round): relayed with its State and EAP-Message.
* Upstream Access-Reject: relayed as it came (EAP-Failure, MS-CHAP-Error, Reply-Message).
* Upstream Access-Accept: the push, for the user named by the Accept's User-Name (the
  *inner* identity of PEAP / TTLS, when the upstream sends it back) or else the request's
  User-Name / EAP identity (the outer one) -- but never the outer identity of a tunnelled
  method (PEAP, TTLS...), which nobody checks: someone holding another user's password
  could put their own name outside and approve on their own phone. An anonymous or
  realm-only identity is refused and audited too: a push to a guessed user is a push to
  the wrong person. Push only: neither EAP nor MS-CHAPv2 can carry a code or show a number, so the
  flow runs as for a ``push`` client that cannot show a number (number matching falls back
  as the user's policy says, or refuses), and a user who can only answer with codes is
  refused with an audit. Approved: Accept with the upstream's EAP-Success, MS-CHAP2-Success
  and MPPE keys (re-encrypted by the core) plus what it granted. Otherwise: Reject with an
  EAP-Failure (Identifier of the EAP-Success it replaces) or MS-CHAP-Error.
* Upstream silent: Reject, whatever the failmode (the password was never proven), as for
  PAP with ``primary radius``; the failmode applies to the second factor only.

Refused at once, audited: a relayed request to a client whose primary is not ``radius``
(nobody here can check an MS-CHAPv2 response or run an EAP method), MS-CHAPv1 (DES over
the NT hash, deprecated by Microsoft; its MS-CHAP-MPPE-Keys use another hiding scheme), and
a client in ``otp`` mode (a code has nowhere to go).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Final

from radius_bridge.model import (
    Accept,
    AccessRequest,
    Audit,
    Challenge,
    Reject,
    RelayAnswer,
    Relayed,
    Unavailable,
    UpstreamRelay,
)
from radius_bridge.names import has_control, normalise, printable, split_name
from radius_bridge.protocol import packet as codec
from radius_bridge.protocol import relay
from radius_bridge.protocol.flow import MESSAGES, Flow, FlowLimits, second_factor
from radius_bridge.protocol.pending import PendingPushes
from radius_bridge.protocol.state import StateTable
from radius_vocabulary.dictionary import Attribute, Dictionary

DEFAULT_LIMITS: Final = FlowLimits()

#: Outer identities that name nobody (RFC 7542 2.4 "anonymous"; Windows and many
#: supplicants use it for PEAP's outer identity).
ANONYMOUS: Final = frozenset({"anonymous", "anon"})

RELAY_MESSAGES: Final[dict[str, str]] = {
    # Codes only: the user has no app, or the push-fatigue guard or number matching turned
    # the push into a code request. Either way there is nowhere to type a code.
    "code-only": "This sign-in needs a code, which this connection cannot take. Try later",
}


def authenticate(
    request: AccessRequest,
    *,
    clock: Callable[[], float],
    states: StateTable,
    pushes: PendingPushes,
    dictionary: Dictionary,
    limits: FlowLimits = DEFAULT_LIMITS,
) -> Flow:
    """The decision flow for a request with ``request.relay`` set (module docstring)."""
    packet = codec.decode(request.raw)
    eap = relay.eap_message(packet.attributes)
    eap_id = eap[1] if len(eap) >= 4 else None
    client = request.client
    refusal = _refusal(request)
    if refusal is not None:
        yield Audit(
            "radius.relay_refused",
            printable(request.user_name),
            f"client {client.name}: {refusal}",
        )
        return Reject("relay-refused", None, _failure(request, packet, eap_id))

    answer = yield UpstreamRelay(relay.upstream_attributes(packet, dictionary))
    if isinstance(answer, Unavailable):
        message = MESSAGES["backend-unavailable"]
        return Reject("upstream-unavailable", message, _failure(request, packet, eap_id, message))
    if not isinstance(answer, RelayAnswer):
        return Reject("internal-error", None, _failure(request, packet, eap_id))
    if answer.code == codec.ACCESS_CHALLENGE:
        return Challenge(b"", "", reason="relayed-challenge", relayed=answer.relayed)
    if answer.code != codec.ACCESS_ACCEPT:
        return Reject("wrong-password", None, answer.relayed)

    if answer.eap_identifier is not None:
        eap_id = answer.eap_identifier  # the EAP-Failure replaces this EAP-Success
    outer = request.user_name or relay.eap_identity(eap) or ""
    name = answer.user_name or outer
    if answer.user_name is None and relay.tunnelled(eap):
        # PEAP / TTLS: the outer identity is never checked by anyone. Pushing to it would
        # let a user holding another's password send their *own* name outside and approve
        # on their own phone. Only the name the upstream vouches for will do.
        yield Audit(
            "radius.relay_refused",
            printable(outer),
            f"client {client.name}: the upstream accepted a tunnelled EAP sign-in "
            f"(outer identity {printable(outer, 64)!r}) without naming the inner user "
            "(User-Name in its Access-Accept); no push sent",
        )
        return Reject("anonymous-identity", None, _failure(request, packet, eap_id))
    if has_control(name):
        yield Audit(
            "radius.relay_refused",
            printable(name),
            f"client {client.name}: the upstream's User-Name holds a control character",
        )
        return Reject("invalid-attribute", None, _failure(request, packet, eap_id))
    user = normalise(name, client.user_names)
    if _anonymous(name, user):
        # Also when the upstream's User-Name is the anonymous one: FreeRADIUS copies the
        # outer User-Name into an EAP Accept unless told to send the inner one.
        yield Audit(
            "radius.relay_refused",
            printable(name),
            f"client {client.name}: the upstream accepted the anonymous identity "
            f"{printable(name, 64)!r} without naming the inner user (User-Name in its "
            "Access-Accept); no push sent",
        )
        return Reject("anonymous-identity", None, _failure(request, packet, eap_id))

    granted: tuple[Attribute, ...] = answer.granted + tuple(
        Attribute(attr, value) for attr, value in client.reply_attributes
    )
    # Push only: a push client cannot show a number (ClientConfig.can_show_number).
    pushed = replace(request, user=user, client=replace(client, mode="push"))
    decision = yield from second_factor(
        pushed, granted, clock=clock, states=states, pushes=pushes, limits=limits
    )
    if isinstance(decision, Accept):
        return replace(decision, relayed=answer.relayed)
    if isinstance(decision, Challenge):
        # A user who can only answer with a code: nowhere to type it.
        yield Audit(
            "radius.relay_refused",
            user,
            f"client {client.name}: the user can only answer with a code, which "
            f"{request.relay} cannot carry",
        )
        message = RELAY_MESSAGES["code-only"]
        return Reject("code-only", message, _failure(request, packet, eap_id, message))
    return replace(decision, relayed=_failure(request, packet, eap_id, decision.reply_message))


def _refusal(request: AccessRequest) -> str | None:
    client = request.client
    if client.primary != "radius" or client.upstream is None:
        return (
            f"{request.relay} needs primary radius: only the upstream server can check "
            f"it (this client's primary is {client.primary})"
        )
    if request.relay == "mschapv1":
        return "MS-CHAPv1 is not relayed (broken, deprecated); use MS-CHAPv2 or EAP"
    if client.mode == "otp":
        return f"mode otp needs a code, which {request.relay} cannot carry; use mode push"
    return None


def _failure(
    request: AccessRequest, packet: codec.Packet, eap_id: int | None, message: str | None = None
) -> Relayed | None:
    """What a Reject the bridge decides carries for the gateway's method: EAP-Failure for
    EAP (the Identifier of the EAP-Success it replaces, else of the request's EAP-Response:
    RFC 3748 4.2), MS-CHAP-Error for MS-CHAPv2 (``message`` as its text), nothing for
    CHAP."""
    if request.relay == "eap":
        return relay.eap_failure(eap_id if eap_id is not None else 0)
    if request.relay == "mschapv2":
        ident = relay.mschap_ident(packet.attributes)
        return relay.mschap_error(ident or 0, message or "Sign-in refused")
    return None


def _anonymous(outer: str, user: str) -> bool:
    """True for an outer identity that names nobody: empty, realm only (``@corp``) or
    ``anonymous`` in any realm."""
    bare, _ = split_name(outer)
    return not user or not bare or bare.casefold() in ANONYMOUS
