"""The sans-IO server: datagrams in, Drop / Send / Absorbed / Begin out; decisions encoded,
cached for duplicates, States recorded. Replies checked with pyrad's client code."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from pyrad import packet as pyrad_packet
from pyrad.dictionary import Dictionary as PyradDictionary

from radius_bridge.clients import ClientTable
from radius_bridge.model import (
    Accept,
    AccessRequest,
    Audit,
    Challenge,
    ChallengeRound,
    ClientConfig,
    Done,
    Outcome,
    Reject,
    StartAuthentication,
    Started,
    WaitOutcome,
)
from radius_bridge.protocol import packet as codec
from radius_bridge.protocol.core import ABSORBED, Begin, BridgeCore, Drop, Send
from radius_bridge.protocol.dedup import DuplicateCache
from radius_vocabulary.dictionary import DICTIONARY_FILE, Attribute

SECRET = b"gateway shared secret"
SOURCE = ("10.0.0.7", 51812)


@pytest.fixture(scope="module")
def pyrad_dict() -> PyradDictionary:
    return PyradDictionary(str(DICTIONARY_FILE))


def make_client(**changes: object) -> ClientConfig:
    base = ClientConfig(
        name="asa1",
        networks=(ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("2001:db8::/64")),
        secret=SECRET,
        reply_attributes=(("Filter-Id", "vpn-users"),),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def make_core(**changes: object) -> BridgeCore:
    return BridgeCore(ClientTable([make_client(**changes)]))


def pyrad_request(
    pyrad_dict: PyradDictionary,
    *,
    user: str = "CONTOSO\\alice",
    password: str | None = "pw",  # noqa: S107 - a test user's password
    state: bytes | None = None,
    secret: bytes = SECRET,
    signed: bool = True,
    code: int = pyrad_packet.AccessRequest,
    proxy_state: list[bytes] | None = None,
) -> tuple[pyrad_packet.AuthPacket, bytes]:
    request = pyrad_packet.AuthPacket(code=code, secret=secret, dict=pyrad_dict)
    if code == pyrad_packet.AccessRequest:
        request["User-Name"] = user
        if password is not None:
            request["User-Password"] = request.PwCrypt(password)
        request["NAS-Identifier"] = "asa1-nas"
        request["NAS-IP-Address"] = "10.0.0.7"
        request["Calling-Station-Id"] = "203.0.113.50"
        if state is not None:
            request["State"] = state
    if proxy_state:
        request["Proxy-State"] = proxy_state
    if signed:
        request.add_message_authenticator()
    return request, request.RequestPacket()


def test_access_request_begins_with_everything_decoded(pyrad_dict: PyradDictionary) -> None:
    core = make_core()
    _, raw = pyrad_request(pyrad_dict, password="p@ss,123456", proxy_state=[b"a", b"b"])
    out = core.receive(raw, SOURCE, 0.0)
    assert isinstance(out, Begin)
    request = out.request
    assert request.client.name == "asa1"
    assert request.source == SOURCE
    assert (request.user_name, request.user) == ("CONTOSO\\alice", "alice")
    assert request.password == b"p@ss,123456"
    assert request.state is None
    assert request.calling_station_id == "203.0.113.50"
    assert request.nas_identifier == "asa1-nas"
    assert request.nas_ip_address == "10.0.0.7"
    assert request.proxy_state == (b"a", b"b")
    assert request.raw == raw
    assert core.counters["begun"] == 1


def test_duplicates_absorbed_then_answered_byte_for_byte(pyrad_dict: PyradDictionary) -> None:
    core = make_core()
    theirs, raw = pyrad_request(pyrad_dict, proxy_state=[b"proxy-1", b"proxy-2"])
    begin = core.receive(raw, SOURCE, 0.0)
    assert isinstance(begin, Begin)
    assert core.receive(raw, SOURCE, 3.0) is ABSORBED
    assert core.receive(raw, SOURCE, 6.0) is ABSORBED
    data = core.finish(begin.request, Accept((Attribute("Class", b"grp"),)), 7.0)
    assert core.receive(raw, SOURCE, 9.0) == Send(data, "duplicate")
    assert core.counters == {"received": 4, "begun": 1, "absorbed": 2, "accept": 1, "duplicate": 1}
    # The same packet from another source port is another request.
    assert isinstance(core.receive(raw, (SOURCE[0], 1), 9.0), Begin)

    reply = pyrad_packet.AuthPacket(packet=data, secret=SECRET, dict=pyrad_dict)
    assert theirs.VerifyReply(reply, data, enforce_ma=True)
    assert reply.code == pyrad_packet.AccessAccept
    assert data[20] == codec.MESSAGE_AUTHENTICATOR  # first attribute
    assert reply["Class"] == [b"grp"]
    assert reply[33] == [b"proxy-1", b"proxy-2"]


def test_abandon_lets_retransmission_start_over(pyrad_dict: PyradDictionary) -> None:
    core = make_core()
    _, raw = pyrad_request(pyrad_dict)
    begin = core.receive(raw, SOURCE, 0.0)
    assert isinstance(begin, Begin)
    core.abandon(begin.request)
    assert isinstance(core.receive(raw, SOURCE, 1.0), Begin)


@pytest.mark.parametrize(
    "decision",
    [Reject("backend-unavailable", "down"), Accept((), reason="failsafe")],
    ids=["failmode-reject", "failsafe-accept"],
)
def test_a_failmode_answer_is_not_replayed_to_a_retransmission(
    pyrad_dict: PyradDictionary, decision: Reject | Accept
) -> None:
    # The backend was unreachable (a database failover, a node restarting): the gateway's
    # retransmission must be decided afresh, so it succeeds once the backend is back.
    core = make_core()
    _, raw = pyrad_request(pyrad_dict)
    begin = core.receive(raw, SOURCE, 0.0)
    assert isinstance(begin, Begin)
    core.finish(begin.request, decision, 1.0)
    assert isinstance(core.receive(raw, SOURCE, 2.0), Begin)
    assert "duplicate" not in core.counters


def test_unknown_client_dropped_with_rate_limited_log(pyrad_dict: PyradDictionary) -> None:
    core = make_core()
    _, raw = pyrad_request(pyrad_dict)
    first = core.receive(raw, ("192.0.2.1", 1), 0.0)
    assert first == Drop("unknown-client", "datagram from unknown client 192.0.2.1", True)
    assert not core.receive(raw, ("192.0.2.1", 1), 30.0).log  # type: ignore[union-attr]
    assert core.receive(raw, ("192.0.2.2", 1), 30.0).log  # type: ignore[union-attr]
    assert core.receive(raw, ("192.0.2.1", 1), 60.0).log  # type: ignore[union-attr]
    assert core.drops["unknown-client"] == 4
    core.expire(200.0)
    assert core.receive(raw, ("192.0.2.1", 1), 200.0).log  # type: ignore[union-attr]


def test_log_memory_bounded(pyrad_dict: PyradDictionary) -> None:
    core = make_core()
    _, raw = pyrad_request(pyrad_dict)
    for index in range(1100):
        core.receive(raw, (f"198.51.{index // 256}.{index % 256}", 1), 0.0)
    assert len(core._logged) <= 1024


def test_malformed_and_unsupported(pyrad_dict: PyradDictionary) -> None:
    core = make_core()
    out = core.receive(b"\x01\x00\x00\x14", SOURCE, 0.0)
    assert isinstance(out, Drop)
    assert (out.reason, out.log) == ("malformed", True)
    assert "too-short" in out.detail
    accounting = bytes((4, 1, 0, 20)) + bytes(16)
    assert core.receive(accounting, SOURCE, 0.0).reason == "unsupported-code"  # type: ignore[union-attr]
    assert core.drops["malformed"] == 1
    assert core.drops["unsupported-code"] == 1


def test_message_authenticator_required_missing_and_wrong(pyrad_dict: PyradDictionary) -> None:
    core = make_core()
    _, unsigned = pyrad_request(pyrad_dict, signed=False)
    out = core.receive(unsigned, SOURCE, 0.0)
    assert isinstance(out, Drop)
    assert out.reason == "missing-message-authenticator"
    _, wrong = pyrad_request(pyrad_dict, secret=b"not the secret")
    out = core.receive(wrong, SOURCE, 0.0)
    assert isinstance(out, Drop)
    assert out.reason == "bad-message-authenticator"
    assert "shared secret" in out.detail
    assert core.drops["bad-message-authenticator"] == 1

    lax = make_core(require_message_authenticator=False)
    assert isinstance(lax.receive(unsigned, SOURCE, 0.0), Begin)
    # Turning the requirement off does not make a *wrong* one acceptable.
    assert lax.receive(wrong, SOURCE, 0.0).reason == "bad-message-authenticator"  # type: ignore[union-attr]


def test_status_server(pyrad_dict: PyradDictionary) -> None:
    core = make_core(require_message_authenticator=False)
    theirs, raw = pyrad_request(pyrad_dict, code=pyrad_packet.StatusServer, proxy_state=[b"lb"])
    out = core.receive(raw, SOURCE, 0.0)
    assert isinstance(out, Send)
    assert out.reason == "status-server"
    reply = codec.decode_reply(out.data, SECRET, theirs.id, raw[4:20], proxy_state=[b"lb"])
    assert reply.code == codec.ACCESS_ACCEPT
    assert reply.get_all(codec.PROXY_STATE) == [b"lb"]
    # Answered every time, not cached as a duplicate.
    assert isinstance(core.receive(raw, SOURCE, 1.0), Send)
    assert core.counters["status-server"] == 2
    # RFC 5997: without Message-Authenticator it is dropped, whatever the client setting.
    _, unsigned = pyrad_request(pyrad_dict, code=pyrad_packet.StatusServer, signed=False)
    assert core.receive(unsigned, SOURCE, 0.0).reason == "missing-message-authenticator"  # type: ignore[union-attr]


def test_ipv6_and_ipv4_mapped_sources(pyrad_dict: PyradDictionary) -> None:
    core = make_core()
    _, raw = pyrad_request(pyrad_dict)
    assert isinstance(core.receive(raw, ("2001:db8::10", 1812, 0, 0), 0.0), Begin)
    _, raw = pyrad_request(pyrad_dict)
    assert isinstance(core.receive(raw, ("::ffff:10.0.0.9", 1812, 0, 0), 0.0), Begin)
    _, raw = pyrad_request(pyrad_dict)
    assert core.receive(raw, ("2001:db8:1::10", 1812, 0, 0), 0.0).reason == "unknown-client"  # type: ignore[union-attr]


def test_invalid_utf8_user_name_reaches_flow_as_empty_user() -> None:
    core = make_core()
    attributes = codec.encode_attribute(codec.USER_NAME, b"al\xffce")
    raw = codec.encode_request(9, SECRET, attributes)
    out = core.receive(raw, SOURCE, 0.0)
    assert isinstance(out, Begin)
    assert out.request.user == ""
    assert out.request.user_name == "al\ufffdce"
    flow = core.authenticate(out.request, lambda: 0.0)
    with pytest.raises(StopIteration) as stop:
        flow.send(None)  # type: ignore[arg-type]
    assert stop.value.value == Reject("invalid-name")


def test_reject_and_challenge_encoding(pyrad_dict: PyradDictionary) -> None:
    core = make_core()
    theirs, raw = pyrad_request(pyrad_dict)
    begin = core.receive(raw, SOURCE, 0.0)
    assert isinstance(begin, Begin)
    data = core.finish(begin.request, Reject("denied", "Sign-in denied on your phone"), 1.0)
    reply = pyrad_packet.AuthPacket(packet=data, secret=SECRET, dict=pyrad_dict)
    assert theirs.VerifyReply(reply, data, enforce_ma=True)
    assert reply.code == pyrad_packet.AccessReject
    assert reply["Reply-Message"] == ["Sign-in denied on your phone"]

    theirs, raw = pyrad_request(pyrad_dict)
    begin = core.receive(raw, SOURCE, 0.0)
    assert isinstance(begin, Begin)
    data = core.finish(begin.request, Reject("x", ""), 1.0)
    assert codec.decode(data).attributes[1:] == []  # nothing but Message-Authenticator

    theirs, raw = pyrad_request(pyrad_dict)
    begin = core.receive(raw, SOURCE, 0.0)
    assert isinstance(begin, Begin)
    long_message = "ü" * 200
    data = core.finish(begin.request, Challenge(b"S" * 16, long_message), 1.0)
    reply = pyrad_packet.AuthPacket(packet=data, secret=SECRET, dict=pyrad_dict)
    assert theirs.VerifyReply(reply, data, enforce_ma=True)
    assert reply.code == pyrad_packet.AccessChallenge
    assert reply["State"] == [b"S" * 16]
    assert len(reply["Reply-Message"][0].encode()) <= 253
    assert len(core.states) == 0  # no next_round: nothing recorded


def test_accept_that_cannot_be_encoded_becomes_reject(pyrad_dict: PyradDictionary) -> None:
    core = make_core()
    for attributes in (
        tuple(Attribute("Class", b"c" * 253) for _ in range(17)),  # > 4096 octets
        (Attribute("No-Such-Attribute", "x"),),
    ):
        theirs, raw = pyrad_request(pyrad_dict)
        begin = core.receive(raw, SOURCE, 0.0)
        assert isinstance(begin, Begin)
        data = core.finish(begin.request, Accept(attributes), 1.0)
        reply = pyrad_packet.AuthPacket(packet=data, secret=SECRET, dict=pyrad_dict)
        assert theirs.VerifyReply(reply, data, enforce_ma=True)
        assert reply.code == pyrad_packet.AccessReject
    assert core.counters["reply-encoding-failed"] == 2


def run_flow(core: BridgeCore, request: AccessRequest, results: list[object], now: float) -> bytes:
    flow = core.authenticate(request, lambda: now)
    answers = iter([None, *results])
    while True:
        try:
            flow.send(next(answers))  # type: ignore[arg-type]
        except StopIteration as stop:
            return core.finish(request, stop.value, now)


def test_challenge_round_trip_through_bytes(pyrad_dict: PyradDictionary) -> None:
    """Challenge recorded by finish, State echoed by the gateway, attributes of the first
    round on the final Accept; the State cannot be used twice."""
    core = make_core(mode="challenge")
    theirs, raw = pyrad_request(pyrad_dict, password="pw")
    begin = core.receive(raw, SOURCE, 100.0)
    assert isinstance(begin, Begin)
    flow = core.authenticate(begin.request, lambda: 100.0)
    assert isinstance(flow.send(None), StartAuthentication)  # type: ignore[arg-type]
    with pytest.raises(StopIteration) as stop:
        flow.send(Started("ch_1", "push", "pending", 55))
    decision = stop.value.value
    assert isinstance(decision, Challenge)
    assert decision.next_round == ChallengeRound(
        "ch_1", "push", 55, (Attribute("Filter-Id", "vpn-users"),), 0
    )
    data = core.finish(begin.request, decision, 100.0)
    reply = pyrad_packet.AuthPacket(packet=data, secret=SECRET, dict=pyrad_dict)
    assert theirs.VerifyReply(reply, data, enforce_ma=True)
    assert reply["Reply-Message"][0].startswith("Pick 55 on your phone.")
    state = reply["State"][0]
    assert len(core.states) == 1

    # The answer: empty password, the State echoed; the push gets approved.
    theirs2, raw2 = pyrad_request(pyrad_dict, user="alice@contoso.com", password="", state=state)
    begin2 = core.receive(raw2, SOURCE, 110.0)
    assert isinstance(begin2, Begin)
    assert begin2.request.state == state
    flow = core.authenticate(begin2.request, lambda: 110.0)
    assert flow.send(None) == WaitOutcome("ch_1", 55.0)  # type: ignore[arg-type]
    with pytest.raises(StopIteration) as stop:
        flow.send(Outcome("approved"))
    data2 = core.finish(begin2.request, stop.value.value, 111.0)
    reply2 = pyrad_packet.AuthPacket(packet=data2, secret=SECRET, dict=pyrad_dict)
    assert theirs2.VerifyReply(reply2, data2, enforce_ma=True)
    assert reply2.code == pyrad_packet.AccessAccept
    assert reply2["Filter-Id"] == ["vpn-users"]

    # Replayed State (new packet, same State): rejected.
    _, raw3 = pyrad_request(pyrad_dict, user="alice", password="", state=state)
    begin3 = core.receive(raw3, SOURCE, 120.0)
    assert isinstance(begin3, Begin)
    data3 = run_flow(core, begin3.request, [], 120.0)
    assert codec.decode(data3).code == codec.ACCESS_REJECT


def test_expire_cleans_every_table(pyrad_dict: PyradDictionary) -> None:
    core = BridgeCore(ClientTable([make_client()]), duplicates=DuplicateCache(lifetime=30.0))
    _, raw = pyrad_request(pyrad_dict)
    begin = core.receive(raw, SOURCE, 0.0)
    assert isinstance(begin, Begin)
    core.finish(
        begin.request, Challenge(b"T" * 16, "x", next_round=ChallengeRound(None, "otp")), 0.0
    )
    core.pushes.add("asa1", "bob", "ch", None, 10.0)
    core.expire(29.0)
    assert (len(core.duplicates), len(core.states), len(core.pushes)) == (1, 1, 0)
    core.expire(300.0)
    assert (len(core.duplicates), len(core.states)) == (0, 0)


@pytest.mark.parametrize(
    ("attribute", "value", "named"),
    [
        (codec.USER_NAME, b"alice\n", "User-Name"),
        (codec.USER_NAME, b"alice\r\nRADIUS accept for bob", "User-Name"),
        (codec.USER_NAME, b"al\x00ice", "User-Name"),
        (codec.USER_NAME, "alice\u2028".encode(), "User-Name"),
        (codec.CALLING_STATION_ID, b"203.0.113.5\n", "Calling-Station-Id"),
        (codec.NAS_IDENTIFIER, b"nas\x1b[31m", "NAS-Identifier"),
    ],
)
def test_control_characters_in_string_attributes_are_refused_and_audited(
    attribute: int, value: bytes, named: str
) -> None:
    """Issue 13 finding 8: ``alice\\n`` passed the backend's name check as an unknown user,
    and with unenrolled ``allow`` got Access-Accept without a second factor."""
    core = make_core(unenrolled="allow")
    attributes = b"".join(
        codec.encode_attribute(kind, data)
        for kind, data in [
            (codec.USER_NAME, b"alice"),
            (codec.CALLING_STATION_ID, b"203.0.113.5"),
            (codec.NAS_IDENTIFIER, b"nas"),
        ]
        if kind != attribute
    ) + codec.encode_attribute(attribute, value)
    out = core.receive(codec.encode_request(9, SECRET, attributes), SOURCE, 0.0)
    assert isinstance(out, Begin)
    flow = core.authenticate(out.request, lambda: 0.0)
    audit = flow.send(None)  # type: ignore[arg-type]
    assert isinstance(audit, Audit)
    assert audit.action == "radius.invalid_attribute"
    assert named in audit.detail
    # The audit trail and the log get the name escaped, never the raw control character.
    for text in (audit.user, audit.detail):
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in text)
    assert len(audit.user) <= 128
    with pytest.raises(StopIteration) as stop:
        flow.send(Done())
    assert stop.value.value == Reject("invalid-attribute")
    assert core.finish(out.request, stop.value.value, 0.0)[0] == codec.ACCESS_REJECT


def test_a_bridge_whose_token_is_refused_rejects_everyone(pyrad_dict: PyradDictionary) -> None:
    """Issue 13 finding 15: once the backend refused the token, no failmode, exemption or
    unenrolled policy lets anyone in; the flow asks the backend nothing."""
    core = make_core(failmode="safe", unenrolled="allow", exempt_users=frozenset({"alice"}))
    core.credential_refused = "the backend refused this bridge's token (401 unauthorized)"
    _, raw = pyrad_request(pyrad_dict)
    out = core.receive(raw, SOURCE, 0.0)
    assert isinstance(out, Begin)
    with pytest.raises(StopIteration) as stop:
        core.authenticate(out.request, lambda: 0.0).send(None)  # type: ignore[arg-type]
    assert stop.value.value.reason == "bridge-unauthorized"
    assert isinstance(stop.value.value, Reject)
    core.credential_refused = None
    assert isinstance(core.authenticate(out.request, lambda: 0.0).send(None), Audit)  # type: ignore[arg-type]
