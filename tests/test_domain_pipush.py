"""The privacyIDEA Authenticator wire format: the exact strings both sides sign, the key
encodings the app uses, and the mapping of its reactions onto our answers."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from backend.domain import pipush
from backend.domain.challenge import Answer
from backend.errors import BadRequest, BadSignature


@pytest.fixture(scope="module")
def server_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def phone_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def phone_sign(key: rsa.RSAPrivateKey, message: str) -> str:
    """As the app signs: PKCS#1 v1.5, SHA-256, padded upper-case base32."""
    raw = key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
    return base64.b32encode(raw).decode()


@pytest.mark.parametrize(
    ("configured", "canonical"),
    [
        ("https://MFA.Example.ORG/pi/ttype/push", "https://mfa.example.org/pi/ttype/push"),
        ("HTTPS://mfa.example.org:443/push", "https://mfa.example.org/push"),
        ("https://mfa.example.org:8443/push", "https://mfa.example.org:8443/push"),
        ("https://[2001:DB8::1]/push", "https://[2001:db8::1]/push"),
        ("https://mfa.example.org", "https://mfa.example.org"),
    ],
)
def test_the_endpoint_is_signed_as_the_app_prints_it(configured: str, canonical: str) -> None:
    assert pipush.canonical_endpoint(configured) == canonical
    assert pipush.canonical_endpoint(canonical) == canonical  # stable


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://mfa.example.org/push", "https://"),
        ("https://mfa.example.org/push?x=1", "query"),
        ("https://mfa.example.org/push?", "query"),
        ("https://mfa.example.org/push#top", "query or fragment"),
        ("https://user:pw@mfa.example.org/push", "user info"),
        ("https://mfa.example.org/a%20b", "plain"),
        ("https://mfa.example.org/a/../push", "plain"),
    ],
)
def test_endpoints_that_cannot_round_trip_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pipush.canonical_endpoint(url)


def test_enrollment_uri_carries_what_the_app_requires() -> None:
    uri = pipush.enrollment_uri(
        label="alice@OpenMFA",
        endpoint="https://MFA.example.org:443/pi/ttype/push",
        ttl_minutes=10,
        issuer="OpenMFA",
        credential="c0ffee",
        serial="OMFA0123456789ABCDEF",
        pin=True,
    )
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc, parts.path) == ("otpauth", "pipush", "/alice%40OpenMFA")
    params = {key: values[0] for key, values in parse_qs(parts.query, strict_parsing=True).items()}
    assert params == {
        "url": "https://mfa.example.org/pi/ttype/push",
        "ttl": "10",
        "issuer": "OpenMFA",
        "enrollment_credential": "c0ffee",
        "v": "1",
        "serial": "OMFA0123456789ABCDEF",
        "sslverify": "1",
        "poll_only": "True",
        "pin": "True",
    }
    plain = pipush.enrollment_uri(
        label="a", endpoint="https://x.example/p", ttl_minutes=3, issuer="I", credential="c",
        serial="OMFA0123456789ABCDEF",
    )  # fmt: skip
    assert "pin=" not in plain


def test_serials_and_nonces_stay_in_their_alphabets() -> None:
    serials = {pipush.new_serial() for _ in range(50)}
    assert len(serials) == 50
    assert all(pipush.check_serial(s) == s and s.isalnum() for s in serials)
    nonce = pipush.new_nonce()
    assert len(base64.b32decode(nonce)) == 20
    assert "|" not in nonce
    with pytest.raises(BadRequest, match="letters and digits"):
        pipush.check_serial("OMFA-0123|4567")


def test_challenge_signatures_verify_with_the_public_key_the_app_receives(
    server_key: rsa.RSAPrivateKey,
) -> None:
    # The app parses the server key as PKCS#1 RSAPublicKey DER, not SubjectPublicKeyInfo.
    der = base64.b64decode(pipush.server_public_key(server_key))
    public = serialization.load_der_public_key(der)
    assert isinstance(public, rsa.RSAPublicKey)
    assert der == public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    assert der != public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public.public_numbers() == server_key.public_key().public_numbers()

    item = pipush.sign_challenge(
        server_key,
        nonce="N" * 32,
        url="https://mfa.example.org/push",
        serial="OMFA0123456789ABCDEF",
        question="Sign-in to VPN from 203.0.113.7",
        title="OpenMFA",
        options="42,17,93",
    ).as_json()
    signed = "|".join(
        ["N" * 32, "https://mfa.example.org/push", "OMFA0123456789ABCDEF",
         "Sign-in to VPN from 203.0.113.7", "OpenMFA", "1", "42,17,93"]
    )  # fmt: skip
    public.verify(
        base64.b32decode(str(item["signature"])), signed.encode(), padding.PKCS1v15(),
        hashes.SHA256(),
    )  # fmt: skip
    capabilities = '{"capabilities":{"decline_reason":true},"nonce":"' + "N" * 32 + '"}'
    public.verify(
        base64.b32decode(str(item["capabilities_signature"])), capabilities.encode(),
        padding.PKCS1v15(), hashes.SHA256(),
    )  # fmt: skip
    # Every value the app reads as a string is one; one malformed item hides all of them.
    assert all(isinstance(v, str) for k, v in item.items() if k != "capabilities")
    assert item["sslverify"] == "1"
    assert item["require_presence"] == "42,17,93"
    assert json.loads(json.dumps(item)) == item


def test_a_question_with_a_separator_is_refused_before_it_is_signed(
    server_key: rsa.RSAPrivateKey,
) -> None:
    with pytest.raises(ValueError, match="question"):
        pipush.sign_challenge(
            server_key, nonce="N", url="https://x/p", serial="S", question="a|b", title="T"
        )


@pytest.mark.parametrize(
    ("decline", "reason", "presence", "message"),
    [
        (False, None, None, "NONCE|OMFA0123456789ABCDEF"),
        (False, None, "42", "NONCE|OMFA0123456789ABCDEF|42"),
        (True, None, None, "NONCE|OMFA0123456789ABCDEF|decline"),
        (True, "cancelled", None, "NONCE|OMFA0123456789ABCDEF|decline|cancelled"),
        (True, "unknown_trigger", None, "NONCE|OMFA0123456789ABCDEF|decline|unknown_trigger"),
    ],
)
def test_answers_are_verified_over_the_string_the_app_signs(
    phone_key: rsa.RSAPrivateKey,
    decline: bool,
    reason: str | None,
    presence: str | None,
    message: str,
) -> None:
    built = pipush.answer_message("NONCE", "OMFA0123456789ABCDEF", decline, reason, presence)
    assert built == message
    signature = phone_sign(phone_key, message)
    pipush.verify(phone_key.public_key(), built, signature)
    pipush.verify(phone_key.public_key(), built, signature.rstrip("="))  # unpadded too
    pipush.verify(phone_key.public_key(), built, signature.lower())
    with pytest.raises(BadSignature):
        pipush.verify(phone_key.public_key(), built + "|x", signature)


def test_poll_and_token_update_strings(phone_key: rsa.RSAPrivateKey) -> None:
    stamp = "2026-11-23T08:15:02.123Z"
    assert pipush.poll_message("S1", stamp) == "S1|2026-11-23T08:15:02.123Z"
    assert (
        pipush.token_update_message("no_firebase_token", "S1", stamp)
        == "no_firebase_token|S1|2026-11-23T08:15:02.123Z"
    )
    poll = pipush.poll_message("S1", stamp)
    pipush.verify(phone_key.public_key(), poll, phone_sign(phone_key, poll))


@pytest.mark.parametrize("garbage", ["", "not base32!", "MZXW6==="[:3] + "1", "A" * 7])
def test_garbage_signatures_are_bad_signatures(phone_key: rsa.RSAPrivateKey, garbage: str) -> None:
    with pytest.raises(BadSignature):
        pipush.verify(phone_key.public_key(), "m", garbage)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T08:15:02.123Z", datetime(2026, 11, 23, 8, 15, 2, 123000, tzinfo=UTC)),
        ("2026-11-23T08:15:02.123456Z", datetime(2026, 11, 23, 8, 15, 2, 123456, tzinfo=UTC)),
        ("2026-11-23T08:15:02Z", datetime(2026, 11, 23, 8, 15, 2, tzinfo=UTC)),
    ],
)
def test_the_apps_timestamps_parse_as_utc(text: str, expected: datetime) -> None:
    assert pipush.parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text", ["2026-11-23T08:15:02.123", "2026-11-23 08:15:02Z", "2026-13-23T08:15:02Z", "yesterday"]
)
def test_other_timestamps_are_refused(text: str) -> None:
    with pytest.raises(BadRequest, match="timestamp"):
        pipush.parse_timestamp(text)


@pytest.mark.parametrize(
    ("decline", "reason", "answer"),
    [
        (False, None, Answer.APPROVE),
        (True, "cancelled", Answer.DENY),
        (True, "unknown_trigger", Answer.FRAUD),
        # Apps before the decline_reason capability decline only for "No, it wasn't me".
        (True, None, Answer.FRAUD),
    ],
)
def test_reactions_map_onto_answers(decline: bool, reason: str | None, answer: Answer) -> None:
    assert pipush.reaction(decline, reason) is answer


@pytest.mark.parametrize(
    ("decline", "reason", "message"),
    [(True, "bored", "must be one of"), (False, "cancelled", "only with decline")],
)
def test_impossible_reactions_are_refused(decline: bool, reason: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        pipush.reaction(decline, reason)


def test_presence_options_hold_the_number_once() -> None:
    for _ in range(100):
        options = pipush.presence_options(42).split(",")
        assert len(options) == 3
        assert len(set(options)) == 3
        assert "42" in options
        assert all(len(o) == 2 for o in options)
    with pytest.raises(ValueError, match="two digits"):
        pipush.presence_options(7)


def test_phone_keys_must_be_rsa_spki_of_2048_bits_or_more(phone_key: rsa.RSAPrivateKey) -> None:
    spki = phone_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    loaded = pipush.load_phone_key(base64.b64encode(spki).decode())
    assert loaded.public_numbers() == phone_key.public_key().public_numbers()

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505 - the weak key under test
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    for key, message in ((small, "at least 2048"), (ec_key, "not an RSA key")):
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(BadRequest, match=message):
            pipush.load_phone_key(base64.b64encode(der).decode())
    with pytest.raises(BadRequest, match="base64 DER"):
        pipush.load_phone_key("not base64 at all!")
