"""The privacyIDEA Authenticator's push-token wire format, poll-only (pure: no I/O).

The free privacyIDEA Authenticator app (Apache-2.0) can hold a *push token* that a server
drives without any push service: the app polls, shows each challenge, and answers approve,
cancel or "not me". This module builds and checks exactly the strings that protocol signs;
docs/dev/privacyidea-app-protocol.md records where each rule comes from. Both directions sign
with RSA PKCS#1 v1.5 over SHA-256 and send the signature as padded upper-case base32:

* server → app, per challenge: ``nonce|url|serial|question|title|sslverify[|options]`` and,
  for the ``decline_reason`` capability, the JSON canonical form (RFC 8785) of
  ``{"capabilities": ..., "nonce": ...}``;
* app → server: ``serial|timestamp`` (poll), ``new_fb_token|serial|timestamp`` (token
  update), ``nonce|serial[|decline[|reason]][|presence_answer]`` (answer).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit, urlunsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from backend.domain.challenge import Answer
from backend.errors import BadRequest, BadSignature

#: What the server advertises with every challenge (signed): the app then says why it declined.
CAPABILITIES = {"decline_reason": True}
DECLINE_REASONS = ("cancelled", "unknown_trigger")
MIN_PHONE_KEY_BITS = 2048
_SERIAL = re.compile(r"[A-Za-z0-9]{8,64}")
# Signed strings join their fields with "|": question and title may hold any printable text
# (they travel as JSON strings) but never "|", which would let one field pass for two.
_PLAIN = re.compile(r"[^|\x00-\x1f\x7f-\x9f\u2028\u2029]*")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


def new_serial() -> str:
    """A globally unique token serial, letters and digits only (it travels unescaped)."""
    return "OMFA" + secrets.token_hex(10).upper()


def new_nonce() -> str:
    """A fresh challenge nonce: base32 of 20 random bytes (32 characters, no padding needed)."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii")


def check_serial(serial: str) -> str:
    """A serial as we issue them; anything else is :class:`BadRequest`."""
    if not _SERIAL.fullmatch(serial):
        raise BadRequest("serial: 8 to 64 letters and digits")
    return serial


def canonical_endpoint(url: str) -> str:
    """``url`` as the app will print it back (Dart's ``Uri``): https, lower-case scheme and
    host, no default port, and no query or fragment (the app appends its poll query by plain
    concatenation). Raises :class:`ValueError` for a URL that cannot round-trip."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise ValueError("the privacyIDEA app endpoint must be an https:// URL")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError("the privacyIDEA app endpoint cannot have a query or fragment")
    if parts.username or parts.password or not parts.hostname:
        raise ValueError("the privacyIDEA app endpoint needs a host and no user info")
    path = parts.path
    if "%" in path or any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError("the privacyIDEA app endpoint path must be plain (no %, . or ..)")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port in (None, 443) else f"{host}:{parts.port}"
    return urlunsplit(("https", netloc, path, "", ""))


def enrollment_uri(
    *,
    label: str,
    endpoint: str,
    ttl_minutes: int,
    issuer: str,
    credential: str,
    serial: str,
    pin: bool = False,
) -> str:
    """The ``otpauth://pipush/...`` URI the app scans (poll-only, certificate checks on)."""
    if not 1 <= ttl_minutes <= 7 * 24 * 60:
        raise ValueError("ttl_minutes is from 1 to 10080")
    params = [
        ("url", canonical_endpoint(endpoint)),
        ("ttl", str(ttl_minutes)),
        ("issuer", issuer),
        ("enrollment_credential", credential),
        ("v", "1"),
        ("serial", check_serial(serial)),
        ("sslverify", "1"),
        ("poll_only", "True"),
    ]
    if pin:
        params.append(("pin", "True"))
    query = "&".join(f"{key}={quote(value, safe='')}" for key, value in params)
    return f"otpauth://pipush/{quote(label, safe='')}?{query}"


# -- signed strings ----------------------------------------------------------------------------


def plain_text(value: str, limit: int = 200) -> str:
    """``value`` made fit for a challenge's question or title: separators and control
    characters become spaces, and it is cut to ``limit`` characters."""
    cleaned = "".join(" " if ch == "|" or not ch.isprintable() else ch for ch in value)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _plain(value: str, what: str) -> str:
    if not _PLAIN.fullmatch(value):
        raise ValueError(f"{what} may not contain {value!r}'s special characters (| and others)")
    return value


def challenge_message(
    nonce: str,
    url: str,
    serial: str,
    question: str,
    title: str,
    options: str | None = None,
) -> str:
    """What the server signs for one challenge; ``options`` for number matching."""
    fields = [nonce, url, serial, _plain(question, "question"), _plain(title, "title"), "1"]
    if options is not None:
        fields.append(options)
    return "|".join(fields)


def capabilities_message(nonce: str) -> str:
    """RFC 8785 canonical JSON of the capabilities bound to one nonce (ASCII keys, booleans)."""
    return json.dumps(
        {"capabilities": CAPABILITIES, "nonce": nonce}, sort_keys=True, separators=(",", ":")
    )


def answer_message(
    nonce: str,
    serial: str,
    decline: bool,
    decline_reason: str | None,
    presence_answer: str | None,
) -> str:
    """What the app signs when it answers a challenge."""
    message = f"{nonce}|{serial}"
    if decline:
        message += "|decline"
        if decline_reason is not None:
            message += f"|{decline_reason}"
    if presence_answer is not None:
        message += f"|{presence_answer}"
    return message


def read_answer(
    nonce: str,
    serial: str,
    decline: bool,
    decline_reason: str | None,
    presence_answer: str | None,
    options: Sequence[str],
) -> tuple[Answer, str | None]:
    """What an answer means, read from the string the phone signed: the reaction, and the
    chosen option (``None`` without one).

    The form fields only say how to rebuild that string, and different fields can rebuild
    the same one (``presence_answer=decline`` without ``decline`` signs as a plain decline).
    So a ``presence_answer`` must be one of the ``options`` offered for the challenge (two
    digits each, never a word of the grammar), which makes the reading unique; and the
    fields must say what the signed string says, or the answer is refused.
    """
    if presence_answer is not None and presence_answer not in options:
        offered = "no options were offered" if not options else "it is not one of the options"
        raise BadRequest(
            f"presence_answer {presence_answer[:16]!r} is refused: {offered} for this challenge"
        )
    message = answer_message(nonce, serial, decline, decline_reason, presence_answer)
    parts = message.split("|")[2:]
    signed_decline = bool(parts) and parts[0] == "decline"
    if signed_decline:
        parts.pop(0)
    signed_reason = (
        parts.pop(0) if signed_decline and parts and parts[0] in DECLINE_REASONS else None
    )
    signed_choice = parts.pop(0) if parts and parts[0] in options else None
    if parts or (signed_decline, signed_reason, signed_choice) != (
        decline,
        decline_reason,
        presence_answer,
    ):
        raise BadRequest("the answer's fields do not say what the phone signed")
    return reaction(signed_decline, signed_reason), signed_choice


def poll_message(serial: str, timestamp: str) -> str:
    """What the app signs to poll for its challenges."""
    return f"{serial}|{timestamp}"


def token_update_message(new_fb_token: str, serial: str, timestamp: str) -> str:
    """What the app signs when it reports its (absent) Firebase token."""
    return f"{new_fb_token}|{serial}|{timestamp}"


def parse_timestamp(text: str) -> datetime:
    """The app's ISO-8601 UTC time (``2026-11-23T08:15:02.123Z``, optionally microseconds)."""
    if not _TIMESTAMP.fullmatch(text):
        raise BadRequest("timestamp: expected ISO-8601 UTC such as 2026-11-23T08:15:02.123Z")
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError as exc:
        raise BadRequest(f"timestamp: {exc}") from None


def reaction(decline: bool, decline_reason: str | None) -> Answer:
    """The app's reaction as our answer: accept approves; "cancelled" denies; "not me"
    (``unknown_trigger``, or a plain decline, which older app versions send only for "No, it
    wasn't me") reports fraud."""
    if decline_reason is not None and decline_reason not in DECLINE_REASONS:
        raise BadRequest(f"decline_reason must be one of {', '.join(DECLINE_REASONS)}")
    if not decline:
        if decline_reason is not None:
            raise BadRequest("decline_reason comes only with decline=1")
        return Answer.APPROVE
    return Answer.DENY if decline_reason == "cancelled" else Answer.FRAUD


def presence_options(number: int, count: int = 3) -> str:
    """Number matching: ``count`` two-digit choices, ``number`` among them, comma-joined."""
    if not 10 <= number <= 99:
        raise ValueError("the number to match has two digits")
    choices = {number}
    while len(choices) < count:
        choices.add(secrets.randbelow(90) + 10)
    shuffled = sorted(choices, key=lambda _: secrets.randbelow(1 << 30))
    return ",".join(str(choice) for choice in shuffled)


# -- keys and signatures -----------------------------------------------------------------------


def b32_signature(signature: bytes) -> str:
    """A signature as the app expects it: upper-case base32 with padding."""
    return base64.b32encode(signature).decode("ascii")


def _b32decode(text: str) -> bytes:
    # The app pads; some base32 libraries do not. Either form is taken, nothing else.
    cleaned = text.strip().upper().rstrip("=")
    try:
        return base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError) as exc:
        raise BadSignature("the signature is not base32") from exc


def sign(key: rsa.RSAPrivateKey, message: str) -> str:
    """Sign ``message`` (UTF-8) with the server's key for the app."""
    raw = key.sign(message.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return b32_signature(raw)


def verify(key: rsa.RSAPublicKey, message: str, signature: str) -> None:
    """Raise :class:`BadSignature` unless the phone signed ``message``."""
    try:
        key.verify(
            _b32decode(signature), message.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        raise BadSignature("the signature does not verify") from None


def load_phone_key(text: str) -> rsa.RSAPublicKey:
    """The app's public key: base64 of a DER SubjectPublicKeyInfo, RSA of 2048 bits or more."""
    try:
        der = base64.b64decode(text.strip(), validate=True)
        key = serialization.load_der_public_key(der)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("pubkey: not a base64 DER public key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadRequest("pubkey: not an RSA key")
    if key.key_size < MIN_PHONE_KEY_BITS:
        raise BadRequest(f"pubkey: an RSA key of at least {MIN_PHONE_KEY_BITS} bits is required")
    return key


def server_public_key(key: rsa.RSAPrivateKey) -> str:
    """The server key's public half as the app parses it: base64 of PKCS#1 ``RSAPublicKey``
    DER (not SubjectPublicKeyInfo), on one line."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    return base64.b64encode(der).decode("ascii")


@dataclass(frozen=True, slots=True)
class SignedChallenge:
    """One challenge as the poll answer carries it (every value a string, as the app needs)."""

    nonce: str
    url: str
    serial: str
    question: str
    title: str
    signature: str
    capabilities_signature: str
    require_presence: str | None = None

    def as_json(self) -> dict[str, object]:
        """The poll item; a malformed item would make the app drop the whole answer."""
        item: dict[str, object] = {
            "nonce": self.nonce,
            "url": self.url,
            "serial": self.serial,
            "question": self.question,
            "title": self.title,
            "sslverify": "1",
            "signature": self.signature,
            "capabilities": CAPABILITIES,
            "capabilities_signature": self.capabilities_signature,
        }
        if self.require_presence is not None:
            item["require_presence"] = self.require_presence
        return item


def sign_challenge(
    key: rsa.RSAPrivateKey,
    *,
    nonce: str,
    url: str,
    serial: str,
    question: str,
    title: str,
    options: str | None = None,
) -> SignedChallenge:
    """A challenge with both of its signatures."""
    message = challenge_message(nonce, url, serial, question, title, options)
    return SignedChallenge(
        nonce=nonce,
        url=url,
        serial=serial,
        question=question,
        title=title,
        signature=sign(key, message),
        capabilities_signature=sign(key, capabilities_message(nonce)),
        require_presence=options,
    )
