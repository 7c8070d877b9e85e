"""TOTP against the reference implementation on this machine (oathtool), RFC 6238 vectors,
the ±1 step window, malformed codes, the otpauth URI and fresh seeds."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import unquote, urlsplit

import pyotp
import pytest

from backend.domain import totp

OATHTOOL = shutil.which("oathtool")
needs_oathtool = pytest.mark.skipif(
    OATHTOOL is None, reason="oathtool is not installed (apt-get install oathtool)"
)

# 160-bit seeds, one of them the RFC 6238 SHA-1 secret "12345678901234567890".
SEEDS = [
    "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
    "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
    "CRDEP26GNTD5THPC52RXXUCEECRJQXRM",
]
MOMENTS = [
    datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC),
    datetime(2026, 1, 1, 0, 0, 29, tzinfo=UTC),  # last second of a step
    datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC),  # first second of the next
    datetime(2033, 5, 18, 3, 33, 20, tzinfo=UTC),
    datetime(2001, 9, 9, 1, 46, 40, tzinfo=UTC),
]


def oathtool(seed: str, at: datetime) -> str:
    assert OATHTOOL is not None
    stamp = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    result = subprocess.run(
        [OATHTOOL, "--totp", "-b", "--now", stamp, seed],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return result.stdout.strip()


@needs_oathtool
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("at", MOMENTS, ids=lambda m: m.isoformat())
def test_codes_equal_oathtool(seed: str, at: datetime) -> None:
    expected = oathtool(seed, at)
    assert re.fullmatch(r"\d{6}", expected)
    assert totp.current_code(seed, at) == expected


@needs_oathtool
def test_a_fresh_seed_gives_oathtools_codes() -> None:
    seed = totp.new_seed()
    at = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
    assert totp.current_code(seed, at) == oathtool(seed, at)


@pytest.mark.parametrize(
    ("unix", "expected"),
    [  # RFC 6238 appendix B, SHA-1, truncated to the 6 digits apps show.
        (59, "287082"),
        (1111111109, "081804"),
        (1111111111, "050471"),
        (1234567890, "005924"),
        (2000000000, "279037"),
        (20000000000, "353130"),
    ],
)
def test_rfc6238_vectors(unix: int, expected: str) -> None:
    at = datetime.fromtimestamp(unix, UTC)
    assert totp.current_code(SEEDS[0], at) == expected


def test_time_step_is_the_30_second_counter() -> None:
    assert totp.time_step(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert totp.time_step(datetime(1970, 1, 1, 0, 0, 29, 999999, tzinfo=UTC)) == 0
    assert totp.time_step(datetime(1970, 1, 1, 0, 0, 30, tzinfo=UTC)) == 1
    # The zone an instant is written in does not matter.
    local = datetime(2026, 1, 1, 2, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert totp.time_step(local) == totp.time_step(datetime(2026, 1, 1, tzinfo=UTC))


# -- the window -----------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)
SEED = SEEDS[1]


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_codes_within_one_step_match_their_step(delta: int) -> None:
    step = totp.time_step(NOW) + delta
    code = totp.code_at_step(SEED, step)
    assert totp.matching_step(SEED, code, NOW) == step


@pytest.mark.parametrize("delta", [-3, -2, 2, 3])
def test_codes_two_or_more_steps_away_do_not_match(delta: int) -> None:
    step = totp.time_step(NOW) + delta
    code = totp.code_at_step(SEED, step)
    # Guard against the 1-in-a-million chance that the code collides with one in the window.
    window = {totp.code_at_step(SEED, totp.time_step(NOW) + d) for d in (-1, 0, 1)}
    assert code not in window
    assert totp.matching_step(SEED, code, NOW) is None


@needs_oathtool
def test_window_agrees_with_oathtool_at_step_edges() -> None:
    """A code the app showed 30 s ago or shows 30 s from now is accepted; 60 s is too far."""
    for offset, accepted in [(-60, False), (-30, True), (0, True), (30, True), (60, False)]:
        code = oathtool(SEED, NOW + timedelta(seconds=offset))
        found = totp.matching_step(SEED, code, NOW)
        assert (found is not None) == accepted, offset
        if accepted:
            assert found == totp.time_step(NOW) + offset // 30


def test_window_zero_accepts_only_the_current_step() -> None:
    now_step = totp.time_step(NOW)
    assert totp.matching_step(SEED, totp.code_at_step(SEED, now_step), NOW, window=0) == now_step
    assert totp.matching_step(SEED, totp.code_at_step(SEED, now_step + 1), NOW, window=0) is None


def test_a_code_for_another_seed_does_not_match() -> None:
    code = totp.current_code(SEEDS[2], NOW)
    window = {totp.code_at_step(SEED, totp.time_step(NOW) + d) for d in (-1, 0, 1)}
    assert code not in window
    assert totp.matching_step(SEED, code, NOW) is None


@pytest.mark.parametrize(
    "code",
    [
        "",
        "12345",
        "1234567",
        " 123456",
        "123456 ",
        "12 456",
        "12345a",
        "+12345",
        "-12345",
        "\uff11\uff12\uff13\uff14\uff15\uff16",  # fullwidth digits: isdigit() is true
        "١٢٣٤٥٦",  # Arabic-Indic digits
        "12345\n",
    ],
)
def test_malformed_codes_are_never_well_formed_nor_matched(code: str) -> None:
    assert not totp.is_well_formed(code)
    assert totp.matching_step(SEED, code, NOW) is None


def test_well_formed_codes() -> None:
    assert totp.is_well_formed("000000")
    assert totp.is_well_formed(totp.current_code(SEED, NOW))


def test_the_right_code_with_surrounding_space_is_refused() -> None:
    """Callers normalise input; the domain compares exact six-digit strings only."""
    code = totp.current_code(SEED, NOW)
    assert totp.matching_step(SEED, f" {code}", NOW) is None


def test_codes_keep_leading_zeros() -> None:
    # RFC 6238 vector at t=1234567890 is 005924: six characters, zeros kept.
    code = totp.current_code(SEEDS[0], datetime.fromtimestamp(1234567890, UTC))
    assert code == "005924"
    assert totp.matching_step(SEEDS[0], code, datetime.fromtimestamp(1234567890, UTC)) is not None


# -- otpauth URI ----------------------------------------------------------------------------


def parse_otpauth(uri: str) -> tuple[str, str, dict[str, str]]:
    """Parse strictly as RFC 3986 (what the Key Uri Format asks for): issuer, account, query."""
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth"
    assert parts.netloc == "totp"
    label = unquote(parts.path.lstrip("/"))
    issuer, _, account = label.partition(":")
    query: dict[str, str] = {}
    for pair in parts.query.split("&"):
        key, _, value = pair.partition("=")
        assert key not in query, f"{key} given twice"
        query[unquote(key)] = unquote(value)  # no '+' to space: that is form encoding
    return issuer, account, query


@pytest.mark.parametrize(
    ("account", "issuer"),
    [
        ("alice", "OpenMFA"),
        ("alice@example.com", "OpenMFA"),
        ("bob.smith+vpn", "Example Corp"),
        ("carol", "Ärzte & Söhne"),
    ],
)
def test_otpauth_uri_parses_back(account: str, issuer: str) -> None:
    seed = totp.new_seed()
    uri = totp.otpauth_uri(seed, account, issuer)

    got_issuer, got_account, query = parse_otpauth(uri)

    assert (got_issuer, got_account) == (issuer, account)
    assert query == {
        "secret": seed,
        "issuer": issuer,
        "algorithm": "SHA1",
        "digits": "6",
        "period": "30",
    }
    assert " " not in uri
    # And the way pyotp (and most apps) read it gives the same token.
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert (parsed.secret, parsed.issuer, parsed.name) == (seed, issuer, account)
    assert (parsed.digits, parsed.interval) == (6, 30)
    assert parsed.digest().name == "sha1"


def test_otpauth_uri_spaces_are_percent_encoded() -> None:
    """RFC 3986 has no '+' for space; apps decoding strictly would show "Example+Corp"."""
    uri = totp.otpauth_uri(SEED, "alice", "Example Corp")
    assert uri.startswith("otpauth://totp/Example%20Corp:alice?")
    assert "issuer=Example%20Corp" in uri
    assert "+" not in uri


# -- seeds ----------------------------------------------------------------------------------


def test_new_seed_is_160_bits_of_base32_without_padding() -> None:
    seed = totp.new_seed()
    assert len(seed) == 32
    assert re.fullmatch(r"[A-Z2-7]{32}", seed)
    assert len(base64.b32decode(seed)) == totp.SEED_BYTES == 20


def test_new_seeds_do_not_repeat_and_look_random() -> None:
    seeds = [totp.new_seed() for _ in range(500)]
    assert len(set(seeds)) == len(seeds)
    raw = b"".join(base64.b32decode(s) for s in seeds)  # 10,000 bytes
    ones = sum(bin(byte).count("1") for byte in raw)
    # 80,000 fair bits: mean 40,000, sd ~141; 10 sd either side never happens by chance.
    assert 38_600 < ones < 41_400
    # Every byte value turns up (expected ~39 times each).
    assert len(set(raw)) == 256
