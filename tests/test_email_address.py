"""Finding 23: e-mail addresses are checked by one pure validator everywhere one is accepted.

Before, ``"@" in email`` was the whole check: ``a@b\\r\\nBcc: x@y`` was stored, and sending
that user an invitation was a 500 (after their earlier invitations were deleted). The
validator (:mod:`backend.domain.emails`) takes one plain ASCII address (``local@domain``),
whole-string matched: no control characters, no spaces, one ``@``, a dot-atom local part of
at most 64 characters, a domain of host-name labels, at most 254 characters in all.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.config import Settings
from backend.domain.emails import MAX_LENGTH, email_problem, is_email
from backend.errors import BadRequest, ConfigurationError
from backend.notify.fraud import configure
from backend.services import Services
from backend.services.context import Actor
from tests.conftest import openmfa

ADMIN = Actor("test:admin")

GOOD = [
    "alice@example.com",
    "Alice.Liddell+mfa@mail.example.co.uk",
    "o'brien@example.ie",
    "x_y-z@sub-domain.example",
    "root@localhost",
    "a" * 64 + "@example.com",
]
BAD = [
    "",
    "alice",
    "@example.com",
    "alice@",
    "a@b@example.com",
    "a@b\r\nBcc: x@y",
    "alice@example.com\n",
    "alice@example.com\r",
    "\nalice@example.com",
    "alice@exa\x00mple.com",
    "ali\tce@example.com",
    "alice @example.com",
    "alice@example .com",
    "Alice <alice@example.com>",
    "alice@example.com, bob@example.com",
    "alice;bob@example.com",
    '"alice"@example.com',
    ".alice@example.com",
    "alice.@example.com",
    "al..ice@example.com",
    "alice@.example.com",
    "alice@example..com",
    "alice@example.com.",
    "alice@-example.com",
    "alice@example-.com",
    "alice@exa_mple.com",
    "alice@[127.0.0.1]",
    "alïce@example.com",
    "alice@exämple.com",
    "a" * 65 + "@example.com",
    "alice@" + "a" * 64 + ".com",
    "a@" + ".".join(["b" * 60] * 5),  # over 254 characters
]


@pytest.mark.parametrize("address", GOOD)
def test_plain_addresses_pass(address: str) -> None:
    assert email_problem(address) is None
    assert is_email(address)


@pytest.mark.parametrize("address", BAD)
def test_malformed_and_injected_addresses_are_refused(address: str) -> None:
    assert email_problem(address) is not None
    assert not is_email(address)


@given(st.text(max_size=300))
def test_nothing_with_a_control_character_or_too_long_ever_passes(text: str) -> None:
    if is_email(text):
        assert len(text) <= MAX_LENGTH
        assert text.count("@") == 1
        assert text.isascii()
        assert text.isprintable()
        assert not any(ch in text for ch in ' <>,;:"()[]\\')


@given(st.from_regex(r"[a-z0-9]{1,20}@[a-z0-9]{1,20}\.[a-z]{2,6}", fullmatch=True))
def test_ordinary_addresses_always_pass(address: str) -> None:
    assert is_email(address)


# -- every place an address is accepted -----------------------------------------------------


@pytest.mark.anyio
async def test_the_user_service_refuses_an_injected_address(services: Services) -> None:
    with pytest.raises(BadRequest, match="e-mail address"):
        await services.users.add(ADMIN, "carol", email="a@b\r\nBcc: x@y")
    with pytest.raises(BadRequest, match="e-mail address"):
        await services.users.add(ADMIN, "carol", email="carol@example.com\n")
    user = await services.users.add(ADMIN, "carol", email="carol@example.com")
    assert user.email == "carol@example.com"
    refused = await services.audit.query("carol", action="user.add")
    assert [row.result for row in refused] == ["ok", "refused", "refused"]
    assert all("\r" not in row.detail and "\n" not in row.detail for row in refused)


def test_the_cli_refuses_an_injected_address(tmp_path: Path) -> None:
    openmfa(tmp_path, "db", "upgrade")
    bad = openmfa(tmp_path, "user", "add", "carol", "--email", "a@b\r\nBcc: x@y", check=False)
    assert bad.returncode == 1
    assert "openmfa: error:" in bad.stderr
    assert "e-mail address" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = openmfa(tmp_path, "user", "show", "carol", check=False)
    assert missing.returncode == 1  # nothing was created


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("fraud_notify_to", "soc@example.com, a@b\r\nBcc: x@y"),
        ("fraud_notify_to", "soc@exa mple.com"),
        ("fraud_notify_to", "soc@example..com"),
        ("mail_from", "OpenMFA <mfa@example..com>"),
        ("mail_from", "mfa@-example.com"),
    ],
)
def test_mail_settings_use_the_same_rule(settings: Settings, setting: str, value: str) -> None:
    values = {
        "smtp_host": "127.0.0.1",
        "smtp_port": 2525,
        "smtp_security": "none",
        "mail_from": "OpenMFA <mfa@example.com>",
        "fraud_notify_to": "soc@example.com",
        setting: value,
    }
    with pytest.raises(ConfigurationError, match=setting):
        configure(settings.model_copy(update=values))  # checks the sender's settings too
