"""The RADIUS codec: RFC examples, an independent implementation (pyrad 2.6) on the other
end, every malformation we refuse, and hypothesis fuzzing of the decoder."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrad import packet as pyrad_packet
from pyrad.dictionary import Dictionary as PyradDictionary

from radius_bridge.protocol import packet as codec
from radius_bridge.protocol.packet import MalformedPacket
from radius_vocabulary.dictionary import Attribute, default_dictionary

# RFC 2865 section 7.1: "nemo" / "arctangent", secret "xyzzy5461".
RFC2865_SECRET = b"xyzzy5461"
RFC2865_REQUEST = bytes.fromhex(
    "010000380f403f9473978057bd83d5cb98f4227a01066e656d6f02120dbe708d93d413ce3196e43f782a"
    "0aee0406c0a80110050600000003"
)
RFC2865_ACCEPT = bytes.fromhex(
    "0200002686fe220e7624ba2a1005f6bf9b55e0b20606000000010f06000000000e06c0a80103"
)
# RFC 5997 section 6: Status-Server with Message-Authenticator, and the Access-Accept.
RFC5997_STATUS_SERVER = bytes.fromhex(
    "0cda00268a54f4686fb394c52866e302185d062350125a665e2e1e8411f3e243822097c84fa3"
)
RFC5997_ACCEPT = bytes.fromhex("02da0014ef0d552a4bf2d693ec2b6fe8b5411d66")

SECRET = b"a shared secret of decent length"


@pytest.fixture(scope="module")
def pyrad_dict() -> PyradDictionary:
    from radius_vocabulary.dictionary import DICTIONARY_FILE

    return PyradDictionary(str(DICTIONARY_FILE))


def attrs(*pairs: tuple[int, bytes]) -> bytes:
    return b"".join(codec.encode_attribute(kind, value) for kind, value in pairs)


def access_request(
    *pairs: tuple[int, bytes], password: bytes | None = None, secret: bytes = SECRET
) -> bytes:
    return codec.encode_request(17, secret, attrs(*pairs), password)


# -- RFC examples -----------------------------------------------------------------------------


def test_rfc2865_example_request_decodes_and_password_decrypts() -> None:
    packet = codec.decode_request(RFC2865_REQUEST)
    assert (packet.code, packet.identifier) == (codec.ACCESS_REQUEST, 0)
    assert packet.get(codec.USER_NAME) == b"nemo"
    assert packet.get(codec.NAS_IP_ADDRESS) == bytes([192, 168, 1, 16])
    assert packet.get(5) == b"\x00\x00\x00\x03"
    assert not packet.has_message_authenticator
    hidden = packet.get(codec.USER_PASSWORD)
    assert hidden is not None
    assert codec.decrypt_password(hidden, RFC2865_SECRET, packet.authenticator) == b"arctangent"
    # ...and hiding it again gives the RFC's octets.
    assert codec.hide_password(b"arctangent", RFC2865_SECRET, packet.authenticator) == hidden


def test_rfc2865_example_accept_is_reproduced_byte_for_byte() -> None:
    request = codec.decode_request(RFC2865_REQUEST)
    body = RFC2865_ACCEPT[20:]  # Service-Type, Login-Service, Login-IP-Host
    reply = codec.encode_reply(
        codec.ACCESS_ACCEPT,
        0,
        request.authenticator,
        RFC2865_SECRET,
        body,
        with_message_authenticator=False,
    )
    assert reply == RFC2865_ACCEPT
    decoded = codec.decode_reply(
        RFC2865_ACCEPT,
        RFC2865_SECRET,
        0,
        request.authenticator,
        require_message_authenticator=False,
    )
    assert decoded.get(6) == b"\x00\x00\x00\x01"


def test_rfc5997_status_server_message_authenticator() -> None:
    packet = codec.decode_request(RFC5997_STATUS_SERVER)
    assert packet.code == codec.STATUS_SERVER
    assert packet.has_message_authenticator
    assert codec.verify_message_authenticator(packet, RFC2865_SECRET)
    assert not codec.verify_message_authenticator(packet, RFC2865_SECRET + b"x")
    reply = codec.encode_reply(
        codec.ACCESS_ACCEPT,
        packet.identifier,
        packet.authenticator,
        RFC2865_SECRET,
        with_message_authenticator=False,
    )
    assert reply == RFC5997_ACCEPT


def test_message_authenticator_matches_rfc3579_definition() -> None:
    """RFC 3579 3.2: HMAC-MD5 over the packet with the attribute's value zeroed; for a
    response, over the packet with the *request* authenticator in the header."""
    raw = access_request((codec.USER_NAME, b"alice"), password=b"pw")
    assert raw[20:22] == bytes((80, 18))  # first attribute
    zeroed = raw[:22] + bytes(16) + raw[38:]
    assert raw[22:38] == hmac.new(SECRET, zeroed, hashlib.md5).digest()

    request_auth = raw[4:20]
    reply = codec.encode_reply(
        codec.ACCESS_CHALLENGE, 17, request_auth, SECRET, attrs((24, b"s" * 16)), [b"p1", b"p2"]
    )
    assert reply[20:22] == bytes((80, 18))
    unsigned = reply[:4] + request_auth + reply[20:22] + bytes(16) + reply[38:]
    assert reply[22:38] == hmac.new(SECRET, unsigned, hashlib.md5).digest()
    response_auth = hashlib.md5(reply[:4] + request_auth + reply[20:] + SECRET).digest()  # noqa: S324
    assert reply[4:20] == response_auth
    # Proxy-State last, unchanged and in order.
    assert reply.endswith(bytes((33, 4)) + b"p1" + bytes((33, 4)) + b"p2")


@pytest.mark.parametrize("key", [b"", b"k", b"x" * 64, b"y" * 65, secrets.token_bytes(200)])
def test_hmac_md5_matches_stdlib(key: bytes) -> None:
    for message in (b"", b"abc", bytes(range(256)) * 3):
        assert codec.hmac_md5(key, message) == hmac.digest(key, message, "md5")


def test_hmac_pad_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_PADS", {})
    monkeypatch.setattr(codec, "_MAX_PADS", 3)
    for index in range(10):
        key = bytes([index]) * 8
        assert codec.hmac_md5(key, b"m") == hmac.digest(key, b"m", "md5")
    assert len(codec._PADS) <= 3


# -- passwords --------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 31, 32, 33, 64, 100, 127, 128])
def test_password_round_trip_every_block_count(length: int) -> None:
    password = bytes((65 + i % 26) for i in range(length))
    authenticator = secrets.token_bytes(16)
    hidden = codec.hide_password(password, SECRET, authenticator)
    assert len(hidden) == max(16, -(-length // 16) * 16)
    assert codec.decrypt_password(hidden, SECRET, authenticator) == password


def test_password_longer_than_128_is_refused() -> None:
    with pytest.raises(ValueError, match="128"):
        codec.hide_password(b"x" * 129, SECRET, bytes(16))
    for size in (0, 15, 17, 144):
        with pytest.raises(MalformedPacket):
            codec.decrypt_password(bytes(size), SECRET, bytes(16))


def test_password_is_bytes_not_text() -> None:
    """Invalid UTF-8 survives (pyrad would drop the bytes); the flow decides what it means."""
    password = b"caf\xe9-\xff\xfe"
    authenticator = secrets.token_bytes(16)
    hidden = codec.hide_password(password, SECRET, authenticator)
    assert codec.decrypt_password(hidden, SECRET, authenticator) == password


@pytest.mark.parametrize("length", [1, 16, 17, 40, 128])
def test_password_hiding_agrees_with_pyrad(pyrad_dict: PyradDictionary, length: int) -> None:
    password = "p" * (length - 1) + "!"
    authenticator = secrets.token_bytes(16)
    theirs = pyrad_packet.AuthPacket(secret=SECRET, authenticator=authenticator, dict=pyrad_dict)
    hidden = theirs.PwCrypt(password)
    assert hidden == codec.hide_password(password.encode(), SECRET, authenticator)
    assert theirs.PwDecrypt(hidden) == password
    assert codec.decrypt_password(hidden, SECRET, authenticator) == password.encode()


# -- against pyrad, both directions -------------------------------------------------------------


def test_pyrad_request_decodes_and_verifies(pyrad_dict: PyradDictionary) -> None:
    request = pyrad_packet.AuthPacket(
        code=pyrad_packet.AccessRequest, id=99, secret=SECRET, dict=pyrad_dict
    )
    request["User-Name"] = "CONTOSO\\alice"
    request["User-Password"] = request.PwCrypt("correct horse battery staple, 42")
    request["NAS-Identifier"] = "rdgw01"
    request["Calling-Station-Id"] = "203.0.113.9"
    request["Proxy-State"] = [b"first", b"second"]
    request.add_message_authenticator()
    raw = request.RequestPacket()

    packet = codec.decode_request(raw)
    assert packet.identifier == 99
    assert codec.verify_message_authenticator(packet, SECRET)
    assert not codec.verify_message_authenticator(packet, b"wrong secret")
    assert packet.get(codec.USER_NAME) == b"CONTOSO\\alice"
    assert packet.get_all(codec.PROXY_STATE) == [b"first", b"second"]
    hidden = packet.get(codec.USER_PASSWORD)
    assert hidden is not None
    password = codec.decrypt_password(hidden, SECRET, packet.authenticator)
    assert password == b"correct horse battery staple, 42"

    # Our answer, checked by pyrad's client code (enforcing Message-Authenticator).
    dictionary = default_dictionary()
    body = codec.encode_attributes(
        [
            Attribute("Class", b"\x00\x01vpn"),
            Attribute("Filter-Id", "vpn-users"),
            Attribute("Cisco-AVPair", "shell:priv-lvl=15"),
            Attribute("Session-Timeout", 3600),
            Attribute("Tunnel-Private-Group-Id:1", "100"),
        ],
        dictionary,
    )
    raw_reply = codec.encode_reply(
        codec.ACCESS_ACCEPT,
        packet.identifier,
        packet.authenticator,
        SECRET,
        body,
        packet.get_all(codec.PROXY_STATE),
    )
    reply = pyrad_packet.AuthPacket(packet=raw_reply, secret=SECRET, dict=pyrad_dict)
    assert request.VerifyReply(reply, raw_reply, enforce_ma=True)
    assert reply.code == pyrad_packet.AccessAccept
    assert reply["Filter-Id"] == ["vpn-users"]
    assert reply["Class"] == [b"\x00\x01vpn"]
    assert reply["Cisco-AVPair"] == ["shell:priv-lvl=15"]
    assert reply["Session-Timeout"] == [3600]
    assert reply["Tunnel-Private-Group-Id:1"] == ["100"]
    assert reply[33] == [b"first", b"second"]
    assert next(iter(reply.keys())) == "Message-Authenticator"


def test_our_upstream_request_is_accepted_by_pyrad(pyrad_dict: PyradDictionary) -> None:
    raw = codec.encode_upstream_request(
        5, SECRET, "alice", b"s3cret,with,commas", nas_identifier="bridge-1"
    )
    theirs = pyrad_packet.AuthPacket(packet=raw, secret=SECRET, dict=pyrad_dict)
    assert theirs.code == pyrad_packet.AccessRequest
    assert theirs.verify_message_authenticator()
    assert theirs["User-Name"] == ["alice"]
    assert theirs["NAS-Identifier"] == ["bridge-1"]
    assert theirs.PwDecrypt(theirs[2][0]) == "s3cret,with,commas"

    # pyrad's server side answers; we verify its reply as the upstream client does.
    answer = theirs.CreateReply()
    answer.code = pyrad_packet.AccessAccept
    answer["Class"] = b"nps-policy-7"
    answer["Reply-Message"] = "Welcome"
    raw_answer = answer.ReplyPacket()
    reply = codec.decode_reply(raw_answer, SECRET, 5, raw[4:20])
    upstream = codec.upstream_answer(reply, default_dictionary())
    assert upstream.accepted
    assert upstream.attributes == (Attribute("Class", b"nps-policy-7"),)
    assert upstream.reply_message == "Welcome"


# -- replies from an upstream -------------------------------------------------------------------


def upstream_reply(
    code: int,
    body: bytes,
    *,
    identifier: int = 5,
    request_auth: bytes = b"R" * 16,
    secret: bytes = SECRET,
    sign: bool = True,
) -> bytes:
    return codec.encode_reply(
        code, identifier, request_auth, secret, body, with_message_authenticator=sign
    )


def test_decode_reply_refusals() -> None:
    good = upstream_reply(codec.ACCESS_ACCEPT, b"")
    assert codec.decode_reply(good, SECRET, 5, b"R" * 16).code == codec.ACCESS_ACCEPT

    def reason(data: bytes, **kwargs: object) -> str:
        with pytest.raises(MalformedPacket) as info:
            codec.decode_reply(data, SECRET, 5, b"R" * 16, **kwargs)  # type: ignore[arg-type]
        return info.value.reason

    assert reason(upstream_reply(codec.ACCOUNTING_REQUEST, b"")) == "unexpected-code"
    assert reason(upstream_reply(codec.ACCESS_ACCEPT, b"", identifier=6)) == "identifier-mismatch"
    assert (
        reason(upstream_reply(codec.ACCESS_ACCEPT, b"", secret=b"other"))
        == "bad-response-authenticator"
    )
    unsigned = upstream_reply(codec.ACCESS_REJECT, b"", sign=False)
    assert reason(unsigned) == "missing-message-authenticator"
    assert codec.decode_reply(unsigned, SECRET, 5, b"R" * 16, require_message_authenticator=False)
    # A Message-Authenticator made with another request authenticator: the Response
    # Authenticator is right (recomputed), the HMAC is not.
    forged = bytearray(upstream_reply(codec.ACCESS_ACCEPT, b"", request_auth=b"Q" * 16))
    signed = bytes(forged[:4]) + b"R" * 16 + bytes(forged[20:]) + SECRET
    forged[4:20] = hashlib.md5(signed).digest()  # noqa: S324 - RADIUS's own hash
    assert reason(bytes(forged)) == "bad-message-authenticator"
    with_proxy_state = upstream_reply(codec.ACCESS_ACCEPT, attrs((codec.PROXY_STATE, b"x")))
    assert reason(with_proxy_state) == "unexpected-proxy-state"
    assert reason(with_proxy_state, proxy_state=[b"y"]) == "unexpected-proxy-state"
    assert reason(good, proxy_state=[b"x"]) == "unexpected-proxy-state"  # dropped by the server
    assert codec.decode_reply(with_proxy_state, SECRET, 5, b"R" * 16, proxy_state=[b"x"])


def test_upstream_answer_copies_what_was_granted_and_nothing_hidden() -> None:
    dictionary = default_dictionary()
    ms_send_key = (311).to_bytes(4, "big") + bytes((16, 20)) + b"k" * 18  # encrypt=2
    ms_dns = (311).to_bytes(4, "big") + bytes((28, 6)) + bytes([10, 0, 0, 53])
    cisco = (9).to_bytes(4, "big") + bytes((1, 12)) + b"priv-lvl=1"
    odd_vsa = (9).to_bytes(4, "big") + bytes((1, 1))  # sub-attribute length < 2: kept raw
    short_vsa = b"\x00\x09"  # not even a vendor id: kept raw
    unknown_vendor = (99999).to_bytes(4, "big") + bytes((7, 3)) + b"z"
    body = attrs(
        (25, b"class-1"),
        (11, b"vpn-users"),
        (8, bytes([10, 1, 2, 3])),
        (18, b"Hello \xff"),
        (24, b"upstream-state"),
        (69, b"\x01\x80\x00" + b"t" * 16),  # Tunnel-Password: encrypted, never copied
        (26, ms_send_key),
        (26, ms_dns),
        (26, cisco),
        (26, odd_vsa),
        (26, short_vsa),
        (26, unknown_vendor),
        (81, b"\x01100"),
        (79, b"eap"),
        (200, b"unknown"),
    )
    reply = codec.decode_reply(upstream_reply(codec.ACCESS_ACCEPT, body), SECRET, 5, b"R" * 16)
    answer = codec.upstream_answer(reply, dictionary)
    assert answer.accepted
    assert answer.reply_message == "Hello \ufffd"
    assert answer.attributes == (
        Attribute("Class", b"class-1"),
        Attribute("Filter-Id", b"vpn-users"),
        Attribute("Framed-IP-Address", bytes([10, 1, 2, 3])),
        Attribute("Vendor-Specific", ms_dns),
        Attribute("Vendor-Specific", cisco),
        Attribute("Vendor-Specific", odd_vsa),
        Attribute("Vendor-Specific", short_vsa),
        Attribute("Vendor-Specific", unknown_vendor),
        Attribute("Tunnel-Private-Group-Id", b"\x01100"),
    )
    # Copied attributes go back out unchanged.
    assert codec.encode_attributes(answer.attributes, dictionary) == attrs(
        (25, b"class-1"),
        (11, b"vpn-users"),
        (8, bytes([10, 1, 2, 3])),
        (26, ms_dns),
        (26, cisco),
        (26, odd_vsa),
        (26, short_vsa),
        (26, unknown_vendor),
        (81, b"\x01100"),
    )


def test_upstream_challenge_or_reject_is_not_accepted() -> None:
    for code in (codec.ACCESS_CHALLENGE, codec.ACCESS_REJECT):
        reply = codec.decode_reply(upstream_reply(code, b""), SECRET, 5, b"R" * 16)
        answer = codec.upstream_answer(reply, default_dictionary())
        assert not answer.accepted
        assert answer.reply_message is None


# -- what the decoder refuses -------------------------------------------------------------------


def header(code: int, length: int) -> bytes:
    return bytes((code, 1)) + length.to_bytes(2, "big") + bytes(16)


def with_length(body: bytes, code: int = codec.ACCESS_REQUEST) -> bytes:
    return header(code, 20 + len(body)) + body


MALFORMED = [
    (b"", "too-short"),
    (b"\x01" * 19, "too-short"),
    (header(1, 19), "bad-length"),
    (header(1, 4097) + bytes(4077), "bad-length"),
    (header(1, 30), "truncated"),
    (with_length(b"\x01"), "bad-attribute-length"),
    (with_length(b"\x01\x00"), "bad-attribute-length"),
    (with_length(b"\x01\x01"), "bad-attribute-length"),
    (with_length(b"\x01\x09abc"), "bad-attribute-length"),
    (with_length(bytes((80, 17)) + bytes(15)), "bad-message-authenticator-length"),
    (with_length((bytes((80, 18)) + bytes(16)) * 2), "duplicate-message-authenticator"),
    (with_length(b"", code=codec.ACCOUNTING_REQUEST), "unsupported-code"),
    (with_length(b"", code=codec.ACCESS_ACCEPT), "unsupported-code"),
    (with_length(b"\x01\x02"), "bad-attribute-length"),  # empty User-Name
    (with_length(b"\x01\x03a\x01\x03b"), "duplicate-attribute"),
    (with_length(bytes((2, 17)) + bytes(15)), "bad-attribute-length"),
    (with_length(bytes((2, 19)) + bytes(17)), "bad-attribute-length"),
    (with_length(bytes((2, 146)) + bytes(144)), "bad-attribute-length"),
    (with_length(bytes((4, 5)) + bytes(3)), "bad-attribute-length"),
    (with_length(b"\x18\x03s\x18\x03t"), "duplicate-attribute"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_decoder_refuses(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket) as info:
        codec.decode_request(data)
    assert info.value.reason == reason
    assert reason in str(info.value)


def test_octets_after_length_are_padding() -> None:
    raw = access_request((codec.USER_NAME, b"alice"))
    packet = codec.decode_request(raw + b"\x00garbage")
    assert packet.data == raw
    assert codec.verify_message_authenticator(packet, SECRET)
    assert packet.get(99) is None
    assert packet.get_all(99) == []


def test_largest_packet_accepted_and_no_larger() -> None:
    value = b"v" * 253
    body = b"".join(codec.encode_attribute(26, value) for _ in range(15))
    body += codec.encode_attribute(26, b"w" * (4096 - 20 - 18 - len(body) - 2))
    raw = codec.encode_request(1, SECRET, body)
    assert len(raw) == 4096
    assert codec.verify_message_authenticator(codec.decode_request(raw), SECRET)
    with pytest.raises(ValueError, match="exceeds"):
        codec.encode_request(1, SECRET, body + b"\x01\x03x")
    with pytest.raises(ValueError, match="exceeds"):
        codec.encode_reply(codec.ACCESS_ACCEPT, 1, bytes(16), SECRET, body + b"\x01\x03x")
    with pytest.raises(ValueError, match="253"):
        codec.encode_attribute(1, b"x" * 254)


# -- hypothesis: never anything but MalformedPacket ---------------------------------------------


def _valid_packets() -> st.SearchStrategy[bytes]:
    attribute = st.tuples(
        st.sampled_from([1, 4, 5, 11, 24, 25, 26, 30, 31, 32, 33, 61, 79, 87, 200]),
        st.binary(min_size=1, max_size=40),
    )
    return st.builds(
        lambda pairs, password: codec.encode_request(
            7,
            SECRET,
            b"".join(
                codec.encode_attribute(k, v)
                for k, v in dict(pairs).items()  # one per type: keeps the at-most-once rules
                if k != 4 or len(v) == 4
            ),
            password,
        ),
        st.lists(attribute, max_size=8),
        st.one_of(st.none(), st.binary(max_size=128)),
    )


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    try:
        packet = codec.decode_request(data)
    except MalformedPacket:
        return
    codec.verify_message_authenticator(packet, SECRET)


@settings(max_examples=500, deadline=None)
@given(
    _valid_packets(),
    st.lists(st.tuples(st.integers(0, 4200), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 4200),
)
def test_fuzz_mutated_valid_packets(data: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    mutated = bytearray(data)
    for position, value in flips:
        if position < len(mutated):
            mutated[position] = value
    for candidate in (bytes(mutated), bytes(mutated[:cut]), bytes(mutated) + bytes(cut % 7)):
        try:
            packet = codec.decode_request(candidate)
        except MalformedPacket:
            continue
        codec.verify_message_authenticator(packet, SECRET)
        hidden = packet.get(codec.USER_PASSWORD)
        if hidden is not None:
            codec.decrypt_password(hidden, SECRET, packet.authenticator)


@settings(max_examples=200, deadline=None)
@given(_valid_packets())
def test_valid_packets_round_trip(data: bytes) -> None:
    packet = codec.decode_request(data)
    assert codec.verify_message_authenticator(packet, SECRET)
    rebuilt = header(packet.code, len(data))[:4] + packet.authenticator
    rebuilt += b"".join(codec.encode_attribute(k, v) for k, v in packet.attributes)
    assert rebuilt[:1] + bytes((packet.identifier,)) + rebuilt[2:] == data


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=128).map(lambda b: b.rstrip(b"\x00")), st.binary(min_size=1, max_size=40))
def test_password_round_trip_property(password: bytes, secret: bytes) -> None:
    authenticator = secrets.token_bytes(16)
    hidden = codec.hide_password(password, secret, authenticator)
    assert codec.decrypt_password(hidden, secret, authenticator) == password


def test_verify_without_message_authenticator_is_false() -> None:
    packet = codec.decode_request(RFC2865_REQUEST)
    assert not codec.verify_message_authenticator(packet, RFC2865_SECRET)


def test_upstream_answer_with_a_dictionary_lacking_or_hiding_attributes() -> None:
    from radius_vocabulary.dictionary import Dictionary

    sparse = Dictionary.parse(
        "ATTRIBUTE Class 25 octets\nATTRIBUTE Filter-Id 11 string encrypt=1\n"
    )
    body = attrs((25, b"c"), (11, b"f"), (27, b"\x00\x00\x00\x01"))
    reply = codec.decode_reply(upstream_reply(codec.ACCESS_ACCEPT, body), SECRET, 5, b"R" * 16)
    assert codec.upstream_answer(reply, sparse).attributes == (Attribute("Class", b"c"),)
