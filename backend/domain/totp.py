"""RFC 6238 TOTP on top of pyotp: SHA-1, 6 digits, 30-second steps (what every app reads)."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from urllib.parse import quote, urlencode

import pyotp

DIGITS = 6
PERIOD = 30
SEED_BYTES = 20


def new_seed() -> str:
    """A fresh 160-bit seed, base32 without padding."""
    return base64.b32encode(secrets.token_bytes(SEED_BYTES)).decode("ascii").rstrip("=")


def time_step(at: datetime, period: int = PERIOD) -> int:
    """The RFC 6238 counter for a moment (``period``: seconds per step)."""
    return int(at.timestamp()) // period


def code_at_step(seed: str, step: int) -> str:
    """The code for one counter value."""
    return pyotp.TOTP(seed, digits=DIGITS, interval=PERIOD).generate_otp(step)


def current_code(seed: str, at: datetime, period: int = PERIOD) -> str:
    """The code an app (or a token stepping every ``period`` seconds) shows at ``at``."""
    return code_at_step(seed, time_step(at, period))


def is_well_formed(code: str) -> bool:
    """Six ASCII digits."""
    return len(code) == DIGITS and code.isascii() and code.isdigit()


def matching_step(
    seed: str, code: str, at: datetime, window: int = 1, period: int = PERIOD
) -> int | None:
    """The step within ``±window`` of ``at`` whose code equals ``code``, else ``None``.
    ``period`` is the device's step in seconds (30, or 60 for some hardware tokens); steps
    are counted in it, so a device's ``last_step`` stays comparable with itself.

    Every candidate is compared in constant time, and all of them are computed, so the time
    taken does not reveal which step matched.
    """
    if not is_well_formed(code):
        return None
    totp = pyotp.TOTP(seed, digits=DIGITS, interval=period)
    now = time_step(at, period)
    found: int | None = None
    for step in range(now - window, now + window + 1):
        if pyotp.utils.strings_equal(totp.generate_otp(step), code) and found is None:
            found = step
    return found


def otpauth_uri(seed: str, account: str, issuer: str) -> str:
    """``otpauth://totp/ISSUER:ACCOUNT?...`` in the form Google Authenticator documents.

    Everything is percent-encoded as RFC 3986 says (a space is ``%20``, never the ``+`` of
    form encoding, which strict decoders in apps show literally).
    """
    label = quote(f"{issuer}:{account}", safe="@:")
    query = urlencode(
        {"secret": seed, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS, "period": PERIOD},
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"
