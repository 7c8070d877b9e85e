"""Issue 13 finding 8: ``re.match`` with ``$`` accepts a trailing newline (``$`` also matches
just before a final ``\\n``), so ``alice\\n`` passed the user-name check. Every validator of a
name, id, code or address must refuse it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from backend.domain import radius
from backend.domain.names import object_name, user_key
from backend.errors import ConfigurationError, InvalidName, InvalidRadiusClient
from backend.notify.mail import parse_addresses


@pytest.mark.parametrize(
    ("check", "value", "error"),
    [
        (user_key, "alice", InvalidName),
        (lambda v: object_name(v, "client"), "vpn-1", InvalidName),
        (radius.check_host, "radius.example.com", InvalidRadiusClient),
        (lambda v: parse_addresses("to", v), "help@example.com", ConfigurationError),
    ],
)
def test_a_trailing_newline_is_refused(
    check: Callable[[str], object], value: str, error: type[Exception]
) -> None:
    check(value)  # the value itself is fine
    for suffix in ("\n", "\r\n", "\x00"):
        with pytest.raises(error):
            check(value + suffix)
