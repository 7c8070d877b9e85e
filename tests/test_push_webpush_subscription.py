"""Web Push subscriptions and the push-service allow-list (backend/domain/webpush.py), the
``webpush_*`` settings, and the attacks: a device naming an endpoint that is not a push
service (an internal address, plain http, a look-alike host) must be refused."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from backend.config import load_settings
from backend.domain.webpush import (
    DEFAULT_ALLOWED_ORIGINS,
    OriginAllowList,
    check_subject,
    parse_origin_rule,
    parse_subscription,
    topic_for,
)
from backend.errors import BadRequest, ConfigurationError
from backend.services.devices import check_push_token


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def point() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def sub(endpoint: str = "https://fcm.googleapis.com/fcm/send/abc:def", **keys: object) -> str:
    key_data: dict[str, object] = {"p256dh": b64u(point()), "auth": b64u(b"a" * 16), **keys}
    return json.dumps({"endpoint": endpoint, "keys": key_data})


DEFAULT = OriginAllowList(DEFAULT_ALLOWED_ORIGINS)


def test_a_browser_subscription_parses_and_is_stored_compact() -> None:
    token = sub()
    parsed = parse_subscription(token)
    assert parsed.origin == "https://fcm.googleapis.com"
    assert (len(parsed.p256dh), len(parsed.auth)) == (65, 16)
    stored = check_push_token(json.dumps(json.loads(token), indent=2), "web", DEFAULT)
    assert stored == parsed.compact()
    assert " " not in stored
    assert json.loads(stored) == json.loads(token)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://fcm.googleapis.com/fcm/send/x",
        "https://updates.push.services.mozilla.com/wpush/v2/gAAAA",
        "https://web.push.apple.com/QGx1",
        "https://wns2-by3p.notify.windows.com/w/?token=BQYAAA",
        "https://FCM.googleapis.com:443/fcm/send/x",
    ],
)
def test_the_browsers_push_services_are_allowed_by_default(endpoint: str) -> None:
    DEFAULT.check(parse_subscription(sub(endpoint)))


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://127.0.0.1:8443/push",  # an internal address
        "https://[::1]/push",
        "https://169.254.169.254/latest/meta-data",  # cloud metadata
        "https://localhost/push",
        "https://evil.example/push",
        "https://notify.windows.com/x",  # the wildcard's own suffix
        "https://evilnotify.windows.com/x",  # suffix without the dot
        "https://x.notify.windows.com.evil.example/x",
        "https://x.notify.windows.com:8443/x",  # wildcards are for 443
        "https://fcm.googleapis.com:8443/fcm/send/x",
        "https://fcm.googleapis.com.evil.example/x",
        "https://evil.example/fcm.googleapis.com",
    ],
)
def test_anything_else_is_refused_at_store_time(endpoint: str) -> None:
    with pytest.raises(BadRequest, match="not an allowed push service"):
        check_push_token(sub(endpoint), "web", DEFAULT)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (sub("http://fcm.googleapis.com/x"), "https://"),
        (sub("https://user:pw@fcm.googleapis.com/x"), "user name"),
        (sub("https://fcm.googleapis.com@evil.example/x"), "user name"),
        (sub("https://fcm.googleapis.com/x#frag"), "fragment"),
        (sub("https://fcm.googleapis.com\\.evil.example/x"), "backslash"),
        (sub("https://fcm.googleapis.com/x y"), "spaces"),
        (sub("https://fcm.googleapis.com:99999/x"), "port"),
        (sub("https://fcm.googleapis.com/\u00e9"), "ASCII"),
        (sub(p256dh=b64u(b"\x04" + b"\x01" * 64)), "not a point"),
        (sub(p256dh=b64u(point()[:33])), "65 bytes"),
        (sub(p256dh="not base64!"), "base64url"),
        (sub(auth=b64u(b"a" * 15)), "16-byte"),
        (sub(auth=7), "base64url"),
        (sub(extra="x"), '"p256dh" and "auth"'),
        (json.dumps({**json.loads(sub()), "expirationTime": None}), '"endpoint" and "keys"'),
        (json.dumps({"endpoint": 5, "keys": json.loads(sub())["keys"]}), "not a string"),
        ("not json", "as JSON"),
        ("[]", '"endpoint" and "keys"'),
        (sub("https://fcm.googleapis.com/" + "a" * 2100), "2048"),
    ],
)
def test_malformed_subscriptions_are_refused_saying_why(token: str, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        check_push_token(token, "web", DEFAULT)


def test_other_platforms_keep_opaque_tokens() -> None:
    assert check_push_token("a" * 512, "ios") == "a" * 512
    with pytest.raises(BadRequest):
        check_push_token("a" * 513, "android")
    assert check_push_token(None, "web") is None
    assert check_push_token("", "web") is None


def test_exact_entries_with_ports_and_addresses() -> None:
    rules = OriginAllowList(["https://127.0.0.1:8443", "https://push.example.org"])
    assert rules.allows("127.0.0.1", 8443)
    assert not rules.allows("127.0.0.1", 443)
    assert rules.allows("push.example.org", 443)
    assert not rules.allows("a.push.example.org", 443)


@pytest.mark.parametrize(
    "entry",
    [
        "http://fcm.googleapis.com",
        "https://fcm.googleapis.com/path",
        "https://*.com",
        "https://*.notify.windows.com:8443",
        "https://*",
        "https://*.127.0.0.1",
        "https://",
        "https://user@fcm.googleapis.com",
        "fcm.googleapis.com",
    ],
)
def test_bad_allow_list_entries_are_configuration_errors(entry: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(entry[:8])):
        parse_origin_rule(entry)
    with pytest.raises(ConfigurationError):
        load_settings(config_file=None, home=tmp_path, webpush_allowed_origins=[entry])


def test_settings_take_the_list_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "OPENMFA_WEBPUSH_ALLOWED_ORIGINS", "https://push.example.org, https://*.push.example.net"
    )
    settings = load_settings(config_file=None, home=tmp_path)
    assert settings.webpush_allowed_origins == (
        "https://push.example.org",
        "https://*.push.example.net",
    )
    assert load_settings(config_file=None, home=tmp_path / "x").webpush_enabled


@pytest.mark.parametrize(
    ("subject", "ok"),
    [
        ("mailto:ops@example.com", True),
        ("https://mfa.example.com", True),
        ("https://mfa.example.com/contact", True),
        ("http://mfa.example.com", False),
        ("mailto:", False),
        ("ops@example.com", False),
        ("mailto:ops@example.com\nX-Injected: 1", False),
    ],
)
def test_the_vapid_subject_is_a_contact(subject: str, ok: bool, tmp_path: Path) -> None:
    if ok:
        assert check_subject(subject) == subject
        assert load_settings(config_file=None, home=tmp_path, webpush_subject=subject)
    else:
        with pytest.raises(ValueError, match="contact"):
            check_subject(subject)
        with pytest.raises(ConfigurationError):
            load_settings(config_file=None, home=tmp_path, webpush_subject=subject)


def test_the_topic_is_32_url_safe_characters_per_challenge() -> None:
    topic = topic_for("ch_abc")
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", topic)
    assert topic == topic_for("ch_abc") != topic_for("ch_abd")
