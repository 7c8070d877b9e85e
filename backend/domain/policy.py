"""Policy keys: their types, limits, defaults and meaning.

Policies are stored as text per scope (``global`` or one user); a user's effective policy is
the defaults, overridden by the global scope, overridden by the user's own values.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backend.errors import PolicyError

GLOBAL_SCOPE = "global"
#: ``number_matching_fallback``: what a push becomes when the gateway cannot show the number.
NUMBER_MATCHING_FALLBACKS = ("refuse", "approve")
_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,9}")


def user_scope(user_id: int) -> str:
    """The scope name of one user's overrides."""
    return f"user:{user_id}"


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"true", "on", "yes", "1"}:
        return True
    if lowered in {"false", "off", "no", "0"}:
        return False
    raise ValueError("expected true or false")


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        lowered = raw.strip().lower()
        if lowered not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return lowered

    return parse


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        # Plain ASCII digits only: int() also takes "1_0" and "٣", and words its own errors.
        text = raw.strip()
        if not _WHOLE_NUMBER.fullmatch(text) or not low <= int(text) <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return int(text)

    return parse


@dataclass(frozen=True, slots=True)
class PolicyKey:
    name: str
    parse: Callable[[str], Any]
    default: Any
    description: str


KEYS: dict[str, PolicyKey] = {
    key.name: key
    for key in (
        PolicyKey("require_pin", _parse_bool, False, "approvals must carry the user's PIN"),
        PolicyKey("pin_min_length", _int_between(4, 12), 4, "shortest PIN accepted"),
        PolicyKey("pin_max_failures", _int_between(1, 100), 5, "wrong PINs before lockout"),
        PolicyKey(
            "pin_lockout_seconds", _int_between(10, 86400), 300, "how long a PIN lockout lasts"
        ),
        PolicyKey("otp_max_failures", _int_between(1, 100), 5, "wrong codes before lockout"),
        PolicyKey(
            "otp_lockout_seconds", _int_between(10, 86400), 300, "how long a code lockout lasts"
        ),
        PolicyKey(
            "activation_code_ttl_seconds",
            _int_between(60, 7 * 86400),
            600,
            "lifetime of an activation code",
        ),
        PolicyKey(
            "challenge_ttl_seconds",
            _int_between(10, 600),
            60,
            "how long a push waits for an answer",
        ),
        PolicyKey(
            "fraud_blocks_user", _parse_bool, True, "a fraud report blocks the user until unblocked"
        ),
        PolicyKey(
            "number_matching",
            _parse_bool,
            False,
            "approvals must carry the number shown at sign-in",
        ),
        PolicyKey(
            "number_matching_fallback",
            _one_of(*NUMBER_MATCHING_FALLBACKS),
            "refuse",
            "number matching where the gateway cannot show it: refuse, or approve without it",
        ),
        # The push-fatigue guard (backend.domain.fatigue); 0 turns a limit off.
        PolicyKey(
            "push_limit",
            _int_between(0, 10000),
            3,
            "pushes per user per window; then codes only (0: no limit)",
        ),
        PolicyKey(
            "push_limit_window_seconds",
            _int_between(10, 86400),
            300,
            "the window the push-fatigue limits count in",
        ),
        PolicyKey(
            "push_max_unanswered",
            _int_between(0, 10000),
            3,
            "denied or unanswered pushes per window before pushes stop (0: no limit)",
        ),
        PolicyKey(
            "deny_limit_per_device",
            _int_between(0, 10000),
            3,
            "denies from one device per window before pushes stop (0: no limit)",
        ),
        # Read from the global scope only: it concerns users who do not exist yet.
        PolicyKey(
            "directory_invite_new_users",
            _parse_bool,
            False,
            "a directory sync e-mails an invitation to each new user with an address",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Policy:
    """The effective policy for one user."""

    require_pin: bool
    pin_min_length: int
    pin_max_failures: int
    pin_lockout_seconds: int
    otp_max_failures: int
    otp_lockout_seconds: int
    activation_code_ttl_seconds: int
    challenge_ttl_seconds: int
    fraud_blocks_user: bool
    number_matching: bool
    number_matching_fallback: str
    push_limit: int
    push_limit_window_seconds: int
    push_max_unanswered: int
    deny_limit_per_device: int
    directory_invite_new_users: bool


def parse_value(key: str, raw: str) -> Any:
    """Validate one key and value; raises :class:`PolicyError` with the reason."""
    spec = KEYS.get(key)
    if spec is None:
        raise PolicyError(f"unknown policy key {key!r}; known keys: {', '.join(sorted(KEYS))}")
    try:
        return spec.parse(raw)
    except ValueError as exc:
        raise PolicyError(f"invalid value {raw!r} for {key}: {exc}") from exc


def resolve(*layers: Mapping[str, str]) -> Policy:
    """Defaults overridden by each stored layer in turn (global, then user)."""
    values = {name: spec.default for name, spec in KEYS.items()}
    for layer in layers:
        for key, raw in layer.items():
            if key in KEYS:
                try:
                    values[key] = KEYS[key].parse(raw)
                except ValueError as exc:  # only a hand-edited database gets here
                    raise PolicyError(
                        f"the stored value {raw!r} of policy {key} is invalid ({exc}); "
                        f"fix it with `openmfa policy set {key} VALUE`"
                    ) from exc
    return Policy(**values)


_TRIVIAL_PINS = {"1234", "4321", "1212", "6969", "1122", "1004", "2000", "2580", "123456"}
#: The longest unit whose repetition makes a PIN trivial ("1212", "123123"); a longer one
#: ("4711" four times) is as strong as its length suggests.
_MAX_REPEATED_UNIT = 3
MAX_PIN_LENGTH = 16


def _is_repetition(pin: str) -> bool:
    """``pin`` is a short unit said at least twice ("5656", "123123", "0000")."""
    return any(
        len(pin) % size == 0 and len(pin) // size >= 2 and pin == pin[:size] * (len(pin) // size)
        for size in range(1, _MAX_REPEATED_UNIT + 1)
    )


def _is_run(pin: str) -> bool:
    """Each digit one more (or one less) than the last, also across 9-0 ("7890", "2109")."""
    steps = {(int(b) - int(a)) % 10 for a, b in itertools.pairwise(pin)}
    return steps in ({1}, {9})


def pin_problem(pin: str, min_length: int) -> str | None:
    """Why ``pin`` may not be an approval PIN, or ``None`` when it may (a pure rule).

    Digits only, ``min_length`` to :data:`MAX_PIN_LENGTH` of them, and not trivially
    guessable: one digit repeated ("0000"), a short unit repeated ("1212", "123123"), a run
    up or down ("1234", "4321", "7890"), or a well-known favourite ("2580", "6969").
    """
    if not (pin.isascii() and pin.isdigit()):
        return "a PIN is made of digits only"
    if len(pin) < min_length:
        return f"a PIN has at least {min_length} digits"
    if len(pin) > MAX_PIN_LENGTH:
        return f"a PIN has at most {MAX_PIN_LENGTH} digits"
    if _is_repetition(pin) or _is_run(pin) or pin in _TRIVIAL_PINS:
        return "that PIN is too easy to guess"
    return None


def check_pin(pin: str, policy: Policy) -> None:
    """Refuse PINs that are too short, not digits, or trivially guessable
    (:func:`pin_problem`) with a :class:`PolicyError` saying why."""
    problem = pin_problem(pin, policy.pin_min_length)
    if problem is not None:
        raise PolicyError(problem)
