"""The sans-IO parts of the MS-CHAPv2 / CHAP / EAP relay: salt encryption (RFC 2548 2.4.2,
property-tested and checked against pyrad's independent implementation), the packet
helpers of :mod:`radius_bridge.protocol.relay`, and the relay flow driven through the core
(datagram in, effects answered by the test, reply datagram out and decoded)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyrad import packet as pyrad_packet
from pyrad.dictionary import Dictionary as PyradDictionary

from radius_bridge.clients import ClientTable
from radius_bridge.model import (
    Accept,
    Audit,
    CancelAuthentication,
    ClientConfig,
    Done,
    Effect,
    Outcome,
    Refused,
    Reject,
    RelayAnswer,
    Relayed,
    Result,
    StartAuthentication,
    Started,
    Unavailable,
    Upstream,
    UpstreamRelay,
    WaitOutcome,
)
from radius_bridge.protocol import packet as codec
from radius_bridge.protocol import relay, salt
from radius_bridge.protocol.core import Begin, BridgeCore
from radius_vocabulary.dictionary import DICTIONARY_FILE, default_dictionary

SECRET = b"gateway-secret"
UPSTREAM_SECRET = b"upstream-secret"
SOURCE = ("10.0.0.7", 51812)
AUTH = bytes(range(16))

# -- salt encryption -----------------------------------------------------------------------


@given(
    st.binary(max_size=salt.MAX_PLAIN),
    st.binary(min_size=1, max_size=64),
    st.binary(min_size=16, max_size=16),
)
def test_salt_round_trip_and_padding(plain: bytes, secret: bytes, authenticator: bytes) -> None:
    value = salt.encrypt(plain, secret, authenticator)
    assert value[0] & 0x80  # RFC 2548: the salt's high bit is set
    # length octet + key, zero-padded to 16n (RFC 2548 2.4.2), after 2 octets of salt
    assert len(value) == 2 + 16 * -(-(len(plain) + 1) // 16)
    assert len(value) <= 253 - 6 + 2  # fits a Microsoft sub-attribute
    assert salt.decrypt(value, secret, authenticator) == plain


@given(st.binary(min_size=16, max_size=32), st.binary(min_size=1, max_size=32))
def test_salt_wrong_secret_garbles(plain: bytes, other: bytes) -> None:
    value = salt.encrypt(plain, SECRET, AUTH)
    wrong = SECRET + other
    try:
        garbled = salt.decrypt(value, wrong, AUTH)
    except salt.SaltError:
        return  # the length octet did not fit: the usual outcome
    assert garbled != plain


def test_salt_wrong_authenticator_garbles() -> None:
    key = secrets.token_bytes(32)
    value = salt.encrypt(key, SECRET, AUTH)
    other = bytes(16)
    with contextlib.suppress(salt.SaltError):  # the usual outcome; else it must differ
        assert salt.decrypt(value, SECRET, other) != key


def test_salt_fresh_salt_each_time() -> None:
    key = b"k" * 32
    values = {salt.encrypt(key, SECRET, AUTH) for _ in range(50)}
    assert len(values) > 40  # 15 random bits of salt


def test_salt_matches_pyrad_both_ways() -> None:
    pyrad_dict = PyradDictionary(str(DICTIONARY_FILE))
    key = secrets.token_bytes(32)
    reply = pyrad_packet.AuthPacket(
        code=pyrad_packet.AccessAccept, secret=SECRET, dict=pyrad_dict, authenticator=AUTH
    )
    reply.request_authenticator = AUTH
    assert reply.SaltDecrypt(salt.encrypt(key, SECRET, AUTH)) == key
    assert salt.decrypt(reply.SaltCrypt(key), SECRET, AUTH) == key


def test_salt_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="at most"):
        salt.encrypt(bytes(240), SECRET, AUTH)
    with pytest.raises(ValueError, match="16 octets"):
        salt.encrypt(b"k", SECRET, bytes(15))
    with pytest.raises(ValueError, match="high bit"):
        salt.encrypt(b"k", SECRET, AUTH, salt=b"\x01\x02")
    with pytest.raises(salt.SaltError, match="2 \\+ 16n"):
        salt.decrypt(bytes(17), SECRET, AUTH)
    with pytest.raises(salt.SaltError, match="16 octets"):
        salt.decrypt(bytes(18), SECRET, bytes(3))
    value = salt.encrypt(b"", SECRET, AUTH, salt=b"\x80\x00")
    assert salt.reencrypt(value, SECRET, AUTH, b"other", bytes(16)) != value
    assert (
        salt.decrypt(salt.reencrypt(value, SECRET, AUTH, b"o", bytes(16)), b"o", bytes(16)) == b""
    )


# -- packet helpers -----------------------------------------------------------------------------

MS_CHAP2_RESPONSE = relay.microsoft_attribute(relay.MS_CHAP2_RESPONSE, bytes(50))
MS_CHAP_CHALLENGE = relay.microsoft_attribute(relay.MS_CHAP_CHALLENGE, bytes(16))


def attrs(data: bytes) -> list[tuple[int, bytes]]:
    return codec.decode(bytes((1, 0, 0, 20 + len(data))) + AUTH + data).attributes


def test_classify() -> None:
    eap = codec.encode_attribute(relay.EAP_MESSAGE, b"\x02\x01\x00\x05\x01")
    assert relay.classify(attrs(eap + MS_CHAP2_RESPONSE)) == "eap"
    assert relay.classify(attrs(MS_CHAP_CHALLENGE + MS_CHAP2_RESPONSE)) == "mschapv2"
    v1 = relay.microsoft_attribute(relay.MS_CHAP_RESPONSE, bytes(50))
    assert relay.classify(attrs(MS_CHAP_CHALLENGE + v1)) == "mschapv1"
    assert relay.classify(attrs(codec.encode_attribute(relay.CHAP_PASSWORD, bytes(17)))) == "chap"
    assert relay.classify(attrs(codec.encode_attribute(codec.USER_NAME, b"a"))) is None
    other_vendor = codec.encode_attribute(26, (9).to_bytes(4, "big") + b"\x01\x03x")
    assert relay.classify(attrs(other_vendor)) is None
    broken = codec.encode_attribute(26, (311).to_bytes(4, "big") + b"\x19\x40x")
    assert relay.classify(attrs(broken)) is None
    orphan = codec.encode_attribute(26, (311).to_bytes(4, "big") + b"\x19\x03x\x01")
    assert relay.classify(attrs(orphan)) is None


def test_upstream_attributes_leave_out_the_hops_own() -> None:
    dictionary = default_dictionary()
    hidden_vsa = relay.microsoft_attribute(relay.MS_MPPE_SEND_KEY, bytes(34))
    body = (
        codec.encode_attribute(codec.USER_NAME, b"alice")
        + codec.encode_attribute(codec.PROXY_STATE, b"gw")
        + codec.encode_attribute(relay.TUNNEL_PASSWORD, bytes(19))
        + hidden_vsa
        + codec.encode_attribute(relay.CHAP_PASSWORD, bytes(17))
    )
    datagram = codec.encode_request(3, SECRET, body, authenticator=AUTH)
    out = attrs(relay.upstream_attributes(codec.decode(datagram), dictionary))
    kinds = [kind for kind, _ in out]
    assert codec.MESSAGE_AUTHENTICATOR not in kinds
    assert codec.PROXY_STATE not in kinds
    assert relay.TUNNEL_PASSWORD not in kinds
    assert 26 not in kinds
    # CHAP without CHAP-Challenge: the gateway's Request Authenticator was the challenge.
    assert (relay.CHAP_CHALLENGE, AUTH) in out
    assert (codec.NAS_IDENTIFIER, b"openmfa-bridge") in out
    with_nas = codec.encode_request(
        3, SECRET, codec.encode_attribute(codec.NAS_IP_ADDRESS, bytes(4)) + MS_CHAP2_RESPONSE
    )
    out = attrs(relay.upstream_attributes(codec.decode(with_nas), dictionary))
    assert [kind for kind, _ in out] == [codec.NAS_IP_ADDRESS, 26]


def test_eap_identity() -> None:
    assert relay.eap_identity(b"\x02\x07\x00\x0a\x01alice") == "alice"
    assert relay.eap_identity(b"\x02\x07\x00\x05\x01") == ""
    assert relay.eap_identity(b"\x01\x07\x00\x0a\x01alice") is None  # a Request
    assert relay.eap_identity(b"\x02\x07\x00\x0a\x19alice") is None  # PEAP, not Identity
    assert relay.eap_identity(b"\x02\x07\x00\x40\x01alice") is None  # length beyond
    assert relay.eap_identity(b"\x02") is None


def test_interpret_accept_decrypts_keys_and_splits_granted() -> None:
    dictionary = default_dictionary()
    send, recv = bytes(range(32)), bytes(range(32, 64))
    body = (
        codec.encode_attribute(codec.USER_NAME, b"alice")
        + codec.encode_attribute(relay.EAP_MESSAGE, b"\x03\x09\x00\x04")
        + codec.encode_attribute(25, b"class-1")  # Class: granted
        + relay.microsoft_attribute(
            relay.MS_MPPE_SEND_KEY, salt.encrypt(send, UPSTREAM_SECRET, AUTH, b"\x80\x01")
        )
        + relay.microsoft_attribute(
            relay.MS_MPPE_RECV_KEY, salt.encrypt(recv, UPSTREAM_SECRET, AUTH, b"\x80\x02")
        )
        + relay.microsoft_attribute(relay.MS_CHAP2_SUCCESS, b"\x07S=" + b"0" * 40)
    )
    reply = codec.decode(codec.encode_reply(2, 1, AUTH, UPSTREAM_SECRET, body))
    answer = relay.interpret(reply, UPSTREAM_SECRET, AUTH, dictionary)
    assert answer.code == 2
    assert answer.user_name == "alice"
    assert answer.eap_identifier == 9
    assert answer.relayed.keys == ((relay.MS_MPPE_SEND_KEY, send), (relay.MS_MPPE_RECV_KEY, recv))
    assert (relay.EAP_MESSAGE, b"\x03\x09\x00\x04") in answer.relayed.attributes
    names = [attribute.name for attribute in answer.granted]
    assert "Class" in names
    assert "Vendor-Specific" in names  # MS-CHAP2-Success goes with what the upstream granted
    # Fixed keys and salts: this wrong secret gives a length octet that does not fit (for
    # about 1 secret in 5 it would fit, and the key would be garbage instead).
    with pytest.raises(salt.SaltError):
        relay.interpret(reply, b"a wrong secret", AUTH, dictionary)


def test_interpret_challenge_and_reject_relay_everything_but_the_hops_own() -> None:
    dictionary = default_dictionary()
    body = (
        codec.encode_attribute(codec.STATE, b"upstream-state")
        + codec.encode_attribute(relay.EAP_MESSAGE, b"\x01\x02\x00\x06\x19\x20")
        + codec.encode_attribute(codec.REPLY_MESSAGE, b"hi")
        + codec.encode_attribute(26, (9).to_bytes(4, "big") + b"\x01\x03x")
        # MS-CHAP-MPPE-Keys: hidden with the upstream's secret, never relayed as it came
        + relay.microsoft_attribute(12, bytes(32))
    )
    reply = codec.decode(codec.encode_reply(11, 1, AUTH, UPSTREAM_SECRET, body))
    answer = relay.interpret(reply, UPSTREAM_SECRET, AUTH, dictionary)
    assert answer.code == 11
    assert [kind for kind, _ in answer.relayed.attributes] == [24, 79, 18, 26]
    error = relay.mschap_error(5, "no").attributes[0]
    reject = codec.decode(
        codec.encode_reply(3, 1, AUTH, UPSTREAM_SECRET, codec.encode_attribute(*error))
    )
    answer = relay.interpret(reject, UPSTREAM_SECRET, AUTH, dictionary)
    assert answer.relayed.attributes == (error,)
    assert answer.granted == ()


# -- the relay flow through the core ----------------------------------------------------------


def make_client(**changes: Any) -> ClientConfig:
    base = ClientConfig(
        name="vpn1",
        networks=(ipaddress.ip_network("10.0.0.0/24"),),
        secret=SECRET,
        primary="radius",
        upstream=Upstream("192.0.2.1", 1812, UPSTREAM_SECRET),
        reply_attributes=(("Filter-Id", "vpn-users"),),
    )
    return replace(base, **changes)


Responder = Callable[[Effect], Result]


def run(
    core: BridgeCore, datagram: bytes, respond: Responder
) -> tuple[codec.Packet, list[Effect], Any]:
    """Feed ``datagram`` to the core, answer the flow's effects with ``respond``, return
    the decoded reply, the effects and the decision."""
    received = core.receive(datagram, SOURCE, 0.0)
    assert isinstance(received, Begin)
    flow = core.authenticate(received.request, lambda: 0.0)
    effects: list[Effect] = []
    result: Any = None
    while True:
        try:
            effect = flow.send(result)
        except StopIteration as stop:
            decision = stop.value
            break
        effects.append(effect)
        result = respond(effect)
    data = core.finish(received.request, decision, 0.0)
    reply = codec.decode_reply(data, SECRET, datagram[1], datagram[4:20])
    return reply, effects, decision


def eap_request(
    identifier: int = 1,
    user: bytes | None = b"anonymous@corp",
    eap: bytes = b"\x02\x05\x00\x06\x19\x00",
) -> bytes:
    body = codec.encode_attribute(relay.EAP_MESSAGE, eap)
    if user is not None:
        body = codec.encode_attribute(codec.USER_NAME, user) + body
    body += codec.encode_attribute(codec.NAS_IDENTIFIER, b"ap-1")
    return codec.encode_request(identifier, SECRET, body)


def mschap_request(user: bytes = b"CORP\\alice") -> bytes:
    body = (
        codec.encode_attribute(codec.USER_NAME, user)
        + MS_CHAP_CHALLENGE
        + relay.microsoft_attribute(relay.MS_CHAP2_RESPONSE, b"\x2a" + bytes(49))
    )
    return codec.encode_request(7, SECRET, body)


KEYS = ((relay.MS_MPPE_SEND_KEY, b"s" * 32), (relay.MS_MPPE_RECV_KEY, b"r" * 32))
SUCCESS = Relayed(((relay.EAP_MESSAGE, b"\x03\x0b\x00\x04"),), KEYS)


def accept(user_name: str | None = "alice", relayed: Relayed = SUCCESS) -> RelayAnswer:
    return RelayAnswer(2, (), relayed, user_name, 0x0B)


def backend(outcome: str = "approved", start: Result | None = None) -> Responder:
    def respond(effect: Effect) -> Result:
        if isinstance(effect, StartAuthentication):
            return start or Started("auth-1", "push", "pending", None)
        if isinstance(effect, WaitOutcome):
            return Outcome(outcome)
        return Done()

    return respond


def with_upstream(answer: Result, rest: Responder | None = None) -> Responder:
    rest = rest or backend()

    def respond(effect: Effect) -> Result:
        if isinstance(effect, UpstreamRelay):
            return answer
        return rest(effect)

    return respond


def vsa_keys(reply: codec.Packet, authenticator: bytes) -> dict[int, bytes]:
    """The MPPE keys of a reply, decrypted as the gateway does."""
    keys = {}
    for kind, value in reply.attributes:
        if kind == 26 and int.from_bytes(value[:4], "big") == 311 and value[4] in (16, 17):
            keys[value[4]] = salt.decrypt(value[6:], SECRET, authenticator)
    return keys


def test_challenge_is_relayed_with_the_upstreams_state() -> None:
    core = BridgeCore(ClientTable([make_client()]))
    relayed = Relayed(((24, b"up-state"), (79, b"\x01\x06\x00\x06\x19\x20")))
    datagram = eap_request()
    reply, effects, _ = run(core, datagram, with_upstream(RelayAnswer(11, (), relayed)))
    assert reply.code == codec.ACCESS_CHALLENGE
    assert reply.get(24) == b"up-state"
    assert reply.get(79) == b"\x01\x06\x00\x06\x19\x20"
    assert len(reply.get_all(24)) == 1  # no State of our own
    upstream = effects[0]
    assert isinstance(upstream, UpstreamRelay)
    assert (79, b"\x02\x05\x00\x06\x19\x00") in attrs(upstream.attributes)
    # The next round carries the upstream's State: relayed, not taken for one of ours.
    nxt = codec.encode_request(
        2,
        SECRET,
        codec.encode_attribute(1, b"anonymous@corp")
        + codec.encode_attribute(24, b"up-state")
        + codec.encode_attribute(79, b"\x02\x06\x00\x06\x19\x00"),
    )
    reply, effects, _ = run(core, nxt, with_upstream(RelayAnswer(11, (), relayed)))
    assert reply.code == codec.ACCESS_CHALLENGE
    assert isinstance(effects[0], UpstreamRelay)
    assert (24, b"up-state") in attrs(effects[0].attributes)


def test_accept_pushes_to_the_inner_user_and_reencrypts_keys() -> None:
    core = BridgeCore(ClientTable([make_client()]))
    datagram = eap_request()
    reply, effects, decision = run(core, datagram, with_upstream(accept("CORP\\alice")))
    assert reply.code == codec.ACCESS_ACCEPT
    start = next(e for e in effects if isinstance(e, StartAuthentication))
    assert start.user == "alice"
    assert start.can_show_number is False  # push only
    assert vsa_keys(reply, datagram[4:20]) == {16: b"s" * 32, 17: b"r" * 32}
    assert reply.get(79) == b"\x03\x0b\x00\x04"
    assert reply.get(11) == b"vpn-users"  # the client's own reply attribute
    assert isinstance(decision, Accept)


def test_denied_push_is_eap_failure_with_the_success_identifier() -> None:
    core = BridgeCore(ClientTable([make_client()]))
    reply, _, decision = run(core, eap_request(), with_upstream(accept(), backend("denied")))
    assert reply.code == codec.ACCESS_REJECT
    assert reply.get(79) == b"\x04\x0b\x00\x04"
    assert not [v for k, v in reply.attributes if k == 26]  # no keys on a reject
    assert isinstance(decision, Reject)
    assert decision.reason == "denied"


def test_push_timeout_is_eap_failure() -> None:
    core = BridgeCore(ClientTable([make_client(push_timeout=5.0)]))
    clock = [0.0]

    def respond(effect: Effect) -> Result:
        if isinstance(effect, UpstreamRelay):
            return accept()
        if isinstance(effect, StartAuthentication):
            return Started("auth-1", "push", "pending", None)
        if isinstance(effect, WaitOutcome):
            clock[0] += effect.seconds
            return Outcome("pending")
        return Done()

    received = core.receive(eap_request(), SOURCE, 0.0)
    assert isinstance(received, Begin)
    flow = core.authenticate(received.request, lambda: clock[0])
    effects, result = [], None
    while True:
        try:
            effect = flow.send(result)  # type: ignore[arg-type]
        except StopIteration as stop:
            decision = stop.value
            break
        effects.append(effect)
        result = respond(effect)
    assert isinstance(decision, Reject)
    assert decision.reason == "timeout"
    assert decision.relayed == relay.eap_failure(0x0B)
    assert any(isinstance(e, CancelAuthentication) for e in effects)


@pytest.mark.parametrize("outer", [b"anonymous@corp", b"@corp", b"ANONYMOUS", None])
def test_anonymous_identity_without_inner_name_is_refused(outer: bytes | None) -> None:
    core = BridgeCore(ClientTable([make_client()]))
    mschapv2 = b"\x02\x05\x00\x06\x1a\x02"
    reply, effects, decision = run(
        core, eap_request(user=outer, eap=mschapv2), with_upstream(accept(None))
    )
    assert reply.code == codec.ACCESS_REJECT
    assert reply.get(79) == b"\x04\x0b\x00\x04"
    assert not any(isinstance(e, StartAuthentication) for e in effects)
    assert any(isinstance(e, Audit) and e.action == "radius.relay_refused" for e in effects)
    assert decision.reason == "anonymous-identity"
    # Even when the upstream names the anonymous identity itself (FreeRADIUS copies the
    # outer User-Name into an EAP Accept by default).
    if outer:
        _, effects, decision = run(
            core, eap_request(identifier=5, user=outer), with_upstream(accept(outer.decode()))
        )
        assert decision.reason == "anonymous-identity"


def test_tunnelled_method_without_an_inner_name_from_the_upstream_is_refused() -> None:
    # PEAP: mallory holds bob's password, puts her own name outside, bob's inside.
    core = BridgeCore(ClientTable([make_client()]))
    _, effects, decision = run(core, eap_request(user=b"mallory"), with_upstream(accept(None)))
    assert decision.reason == "anonymous-identity"
    assert not any(isinstance(e, StartAuthentication) for e in effects)
    audit = next(e for e in effects if isinstance(e, Audit))
    assert "tunnelled" in audit.detail


def test_outer_identity_is_used_when_the_upstream_names_nobody() -> None:
    core = BridgeCore(ClientTable([make_client()]))
    mschapv2 = b"\x02\x05\x00\x06\x1a\x02"  # EAP-MSCHAPv2 directly: not tunnelled
    _, effects, decision = run(
        core, eap_request(user=b"bob@corp", eap=mschapv2), with_upstream(accept(None))
    )
    start = next(e for e in effects if isinstance(e, StartAuthentication))
    assert start.user == "bob"
    assert isinstance(decision, Accept)
    # No User-Name at all: the EAP-Response/Identity names the user.
    _, effects, _ = run(
        core,
        eap_request(identifier=9, user=None, eap=b"\x02\x01\x00\x0a\x01carol"),
        with_upstream(accept(None)),
    )
    assert next(e for e in effects if isinstance(e, StartAuthentication)).user == "carol"


def test_inner_name_with_a_control_character_is_refused() -> None:
    core = BridgeCore(ClientTable([make_client()]))
    _, effects, decision = run(core, eap_request(), with_upstream(accept("alice\n")))
    assert decision.reason == "invalid-attribute"
    assert not any(isinstance(e, StartAuthentication) for e in effects)


def test_upstream_reject_is_relayed_as_it_came() -> None:
    core = BridgeCore(ClientTable([make_client()]))
    error = relay.mschap_error(0x2A, "upstream says no").attributes
    reply, effects, decision = run(
        core, mschap_request(), with_upstream(RelayAnswer(3, (), Relayed(error)))
    )
    assert reply.code == codec.ACCESS_REJECT
    assert [(k, v) for k, v in reply.attributes if k == 26] == list(error)
    assert not any(isinstance(e, StartAuthentication) for e in effects)
    assert decision.reason == "wrong-password"


def test_mschapv2_denied_gets_ms_chap_error_with_the_ident() -> None:
    core = BridgeCore(ClientTable([make_client()]))
    success = Relayed((), KEYS)
    reply, _, _ = run(
        core, mschap_request(), with_upstream(RelayAnswer(2, (), success, None), backend("denied"))
    )
    assert reply.code == codec.ACCESS_REJECT
    vsa = next(v for k, v in reply.attributes if k == 26)
    assert vsa[4] == relay.MS_CHAP_ERROR
    assert vsa[6] == 0x2A
    assert b"E=691 R=0 V=3 M=Sign-in denied on your phone" in vsa


@pytest.mark.parametrize(
    ("changes", "datagram"),
    [
        ({"primary": "none"}, eap_request()),
        ({"primary": "local"}, mschap_request()),
        ({"mode": "otp"}, eap_request()),
        (
            {},
            codec.encode_request(
                1,
                SECRET,
                codec.encode_attribute(1, b"alice")
                + MS_CHAP_CHALLENGE
                + relay.microsoft_attribute(relay.MS_CHAP_RESPONSE, bytes(49)),
            ),
        ),
    ],
    # The datagrams carry random authenticators: xdist workers must collect the same names.
    ids=["eap-primary-none", "mschap-primary-local", "eap-mode-otp", "mschapv1"],
)
def test_refused_before_the_upstream_with_an_audit(
    changes: dict[str, Any], datagram: bytes
) -> None:
    core = BridgeCore(ClientTable([make_client(**changes)]))
    reply, effects, decision = run(core, datagram, backend())
    assert reply.code == codec.ACCESS_REJECT
    assert decision.reason == "relay-refused"
    assert [type(e) for e in effects] == [Audit]
    assert effects[0].action == "radius.relay_refused"  # type: ignore[union-attr]


def test_upstream_silent_is_a_reject_whatever_the_failmode() -> None:
    core = BridgeCore(ClientTable([make_client(failmode="safe")]))
    reply, _, decision = run(core, eap_request(), with_upstream(Unavailable("down")))
    assert reply.code == codec.ACCESS_REJECT
    assert reply.get(79) == b"\x04\x05\x00\x04"  # the identifier of the request's EAP
    assert decision.reason == "upstream-unavailable"
    _, _, decision = run(core, eap_request(identifier=2), with_upstream(Done()))
    assert decision.reason == "internal-error"


def test_backend_down_after_the_upstream_accepted_follows_the_failmode() -> None:
    down = backend(start=Unavailable("backend down"))
    core = BridgeCore(ClientTable([make_client(failmode="safe")]))
    reply, _, decision = run(core, eap_request(), with_upstream(accept(), down))
    assert reply.code == codec.ACCESS_ACCEPT  # keys and EAP-Success relayed
    assert decision.reason == "failsafe"
    assert reply.get(79) == b"\x03\x0b\x00\x04"
    core = BridgeCore(ClientTable([make_client(failmode="secure")]))
    reply, _, decision = run(core, eap_request(), with_upstream(accept(), down))
    assert reply.code == codec.ACCESS_REJECT
    assert reply.get(79) == b"\x04\x0b\x00\x04"


def test_code_only_user_is_refused_and_audited() -> None:
    core = BridgeCore(ClientTable([make_client()]))
    otp = backend(start=Started("auth-2", "otp", "pending", None))
    reply, effects, decision = run(core, eap_request(), with_upstream(accept(), otp))
    assert reply.code == codec.ACCESS_REJECT
    assert decision.reason == "code-only"
    assert any(isinstance(e, Audit) and "code" in e.detail for e in effects)


def test_exempt_user_skips_the_push_but_keeps_the_keys() -> None:
    core = BridgeCore(ClientTable([make_client(exempt_users=frozenset({"alice"}))]))
    reply, effects, decision = run(core, eap_request(), with_upstream(accept()))
    assert reply.code == codec.ACCESS_ACCEPT
    assert decision.reason == "exempt-user"
    assert not any(isinstance(e, StartAuthentication) for e in effects)
    assert len([v for k, v in reply.attributes if k == 26]) == 2


def test_refused_user_gets_eap_failure() -> None:
    core = BridgeCore(ClientTable([make_client()]))
    blocked = backend(start=Refused("user-blocked", "blocked"))
    reply, _, decision = run(core, eap_request(), with_upstream(accept(), blocked))
    assert reply.code == codec.ACCESS_REJECT
    assert decision.reason == "blocked"
    assert reply.get(79) == b"\x04\x0b\x00\x04"


def test_pap_stays_pap_and_malformed_or_refused_bridge_uses_the_plain_flow() -> None:
    core = BridgeCore(ClientTable([make_client()]))
    pap = codec.encode_request(
        1,
        SECRET,
        codec.encode_attribute(1, b"alice") + MS_CHAP2_RESPONSE,
        password=b"pw",
    )
    received = core.receive(pap, SOURCE, 0.0)
    assert isinstance(received, Begin)
    assert received.request.relay is None
    core.credential_refused = "revoked"
    received = core.receive(eap_request(identifier=3), SOURCE, 0.0)
    assert isinstance(received, Begin)
    assert received.request.relay == "eap"
    flow = core.authenticate(received.request, lambda: 0.0)
    with pytest.raises(StopIteration) as stop:
        next(flow)
    assert stop.value.value.reason == "bridge-unauthorized"


# -- the upstream client's relay over real UDP --------------------------------------------------


class _Upstream(asyncio.DatagramProtocol):
    """A scripted upstream: answers each request with ``reply(request)``; counts them."""

    def __init__(self, reply: Callable[[codec.Packet], bytes | None]) -> None:
        self.reply = reply
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)
        answer = self.reply(codec.decode(data))
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


def _relay_once(
    reply: Callable[[codec.Packet], bytes | None], timeout: float = 2.0
) -> tuple[Any, list[bytes]]:
    from radius_bridge.upstream import UpstreamClient

    async def go() -> tuple[Any, list[bytes]]:
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(
            lambda: _Upstream(reply), local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        client = UpstreamClient()
        try:
            upstream = Upstream("127.0.0.1", port, UPSTREAM_SECRET, timeout=timeout)
            body = codec.encode_attribute(codec.USER_NAME, b"alice") + MS_CHAP2_RESPONSE
            answer = await client.relay(upstream, body, loop.time() + timeout)
        finally:
            await client.aclose()
            transport.close()
        return answer, server.received

    return asyncio.run(go())


def test_upstream_relay_signs_the_hop_and_decrypts_the_keys() -> None:
    key = bytes(range(32))

    def accept_with_key(request: codec.Packet) -> bytes:
        assert codec.verify_message_authenticator(request, UPSTREAM_SECRET)
        hidden = salt.encrypt(key, UPSTREAM_SECRET, request.authenticator)
        body = relay.microsoft_attribute(relay.MS_MPPE_SEND_KEY, hidden)
        return codec.encode_reply(
            2, request.identifier, request.authenticator, UPSTREAM_SECRET, body
        )

    answer, received = _relay_once(accept_with_key)
    assert isinstance(answer, RelayAnswer)
    assert answer.relayed.keys == ((relay.MS_MPPE_SEND_KEY, key),)
    assert len(received) == 1


def test_upstream_relay_key_that_does_not_decrypt_is_unavailable_at_once() -> None:
    def bad_key(request: codec.Packet) -> bytes:
        hidden = salt.encrypt(bytes(32), b"another secret", request.authenticator, b"\x80\x01")
        body = relay.microsoft_attribute(relay.MS_MPPE_SEND_KEY, hidden)
        return codec.encode_reply(
            2, request.identifier, request.authenticator, UPSTREAM_SECRET, body
        )

    # A wrong secret makes the length octet misfit in about 4 of 5 cases; the Request
    # Authenticator is random, so a few tries give one (and a fit gives garbage, not a crash).
    for _ in range(20):
        answer, _ = _relay_once(bad_key)
        if isinstance(answer, Unavailable):
            assert "MPPE key" in answer.detail
            return
    raise AssertionError("a key under another secret decrypted 20 times in a row")


def test_upstream_relay_retransmits_the_same_request() -> None:
    seen: list[bytes] = []

    def silent_then_reject(request: codec.Packet) -> bytes | None:
        seen.append(request.data)
        if len(seen) < 2:
            return None  # lost: the client must send the very same datagram again
        return codec.encode_reply(3, request.identifier, request.authenticator, UPSTREAM_SECRET)

    answer, received = _relay_once(silent_then_reject, timeout=4.0)
    assert isinstance(answer, RelayAnswer)
    assert answer.code == 3
    assert len(received) == 2
    assert received[0] == received[1]


def test_relayed_requests_share_the_held_pool_per_user_and_station() -> None:
    core = BridgeCore(ClientTable([make_client()]))
    first = core.receive(eap_request(identifier=1), SOURCE, 0.0)
    pap = core.receive(
        codec.encode_request(2, SECRET, codec.encode_attribute(1, b"anonymous"), password=b"x"),
        SOURCE,
        0.0,
    )
    assert isinstance(first, Begin)
    assert isinstance(pap, Begin)
    assert pap.request.share_user == "anonymous"
    # Every PEAP user may be "anonymous" outside: the station tells them apart.
    station = replace(first.request, calling_station_id="02-00-00-00-00-01")
    assert station.share_user != pap.request.share_user
    assert station.share_user != replace(station, calling_station_id="02-00-00-00-00-02").share_user
