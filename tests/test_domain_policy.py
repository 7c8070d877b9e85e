"""Policy keys: parsing and its errors, layering of defaults / global / user, PIN rules."""

from __future__ import annotations

import dataclasses

import pytest

from backend.domain import policy
from backend.domain.policy import KEYS, Policy, check_pin, parse_value, resolve
from backend.errors import BadRequest, PolicyError

DEFAULTS = resolve()


def test_every_key_is_a_policy_field_and_back() -> None:
    fields = {f.name for f in dataclasses.fields(Policy)}
    assert set(KEYS) == fields
    for spec in KEYS.values():
        assert spec.description, spec.name


def test_defaults() -> None:
    expected = Policy(
        require_pin=False,
        pin_min_length=4,
        pin_max_failures=5,
        pin_lockout_seconds=300,
        otp_max_failures=5,
        otp_lockout_seconds=300,
        activation_code_ttl_seconds=600,
        challenge_ttl_seconds=60,
        fraud_blocks_user=True,
        number_matching=False,
        number_matching_fallback="refuse",
        push_limit=3,
        push_limit_window_seconds=300,
        push_max_unanswered=3,
        deny_limit_per_device=3,
        directory_invite_new_users=False,
    )
    assert resolve() == expected


def test_scope_names() -> None:
    assert policy.GLOBAL_SCOPE == "global"
    assert policy.user_scope(42) == "user:42"


# -- parse_value ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        (" on ", True),
        ("yes", True),
        ("1", True),
        ("false", False),
        ("Off", False),
        ("no", False),
        ("0", False),
    ],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert parse_value("require_pin", raw) is expected


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("pin_min_length", "4", 4),
        ("pin_min_length", " 12 ", 12),
        ("otp_max_failures", "1", 1),
        ("otp_max_failures", "100", 100),
        ("otp_lockout_seconds", "10", 10),
        ("otp_lockout_seconds", "86400", 86400),
        ("challenge_ttl_seconds", "600", 600),
        ("activation_code_ttl_seconds", "604800", 604800),
    ],
)
def test_whole_numbers_at_their_limits(key: str, raw: str, expected: int) -> None:
    assert parse_value(key, raw) == expected


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("require_pin", "maybe", "expected true or false"),
        ("require_pin", "", "expected true or false"),
        ("pin_min_length", "3", "from 4 to 12"),
        ("pin_min_length", "13", "from 4 to 12"),
        ("otp_max_failures", "0", "from 1 to 100"),
        ("otp_max_failures", "-1", "from 1 to 100"),
        ("otp_lockout_seconds", "9", "from 10 to 86400"),
        ("otp_lockout_seconds", "86401", "from 10 to 86400"),
        ("challenge_ttl_seconds", "601", "from 10 to 600"),
        ("activation_code_ttl_seconds", "59", "from 60 to 604800"),
        # Not numbers at all: the same plain sentence, not Python's int() message.
        ("otp_max_failures", "five", "expected a whole number from 1 to 100"),
        ("otp_max_failures", "2.5", "expected a whole number from 1 to 100"),
        ("otp_max_failures", "", "expected a whole number from 1 to 100"),
        ("otp_max_failures", "1_0", "expected a whole number from 1 to 100"),
        ("otp_max_failures", "٣", "expected a whole number from 1 to 100"),
        ("otp_max_failures", "--5", "expected a whole number from 1 to 100"),
        ("otp_max_failures", "9" * 5000, "expected a whole number from 1 to 100"),
    ],
)
def test_bad_values_are_refused_with_the_reason(key: str, raw: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_value(key, raw)
    detail = str(caught.value)
    assert key in detail
    assert repr(raw) in detail
    assert message in detail


def test_unknown_key_lists_the_known_ones() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_value("require_pine", "true")
    detail = str(caught.value)
    assert "unknown policy key 'require_pine'" in detail
    for key in KEYS:
        assert key in detail


def test_policy_errors_are_bad_requests() -> None:
    assert issubclass(PolicyError, BadRequest)
    assert PolicyError.status == 400
    assert PolicyError.type == "invalid-policy"


# -- resolve ----------------------------------------------------------------------------------


def test_global_overrides_defaults_and_user_overrides_global() -> None:
    global_layer = {"require_pin": "true", "otp_max_failures": "3", "pin_min_length": "6"}
    user_layer = {"otp_max_failures": "10", "number_matching": "on"}

    effective = resolve(global_layer, user_layer)

    assert effective.require_pin is True  # from global
    assert effective.pin_min_length == 6  # from global
    assert effective.otp_max_failures == 10  # user beats global
    assert effective.number_matching is True  # user only
    assert effective.challenge_ttl_seconds == DEFAULTS.challenge_ttl_seconds  # default


def test_order_of_layers_matters() -> None:
    low, high = {"otp_lockout_seconds": "60"}, {"otp_lockout_seconds": "120"}
    assert resolve(low, high).otp_lockout_seconds == 120
    assert resolve(high, low).otp_lockout_seconds == 60


def test_a_user_can_turn_a_global_true_back_off() -> None:
    effective = resolve({"fraud_blocks_user": "true"}, {"fraud_blocks_user": "false"})
    assert effective.fraud_blocks_user is False


def test_unknown_stored_keys_are_ignored() -> None:
    """A key dropped in a newer version must not stop an older row from loading."""
    assert resolve({"retired_key": "whatever"}) == DEFAULTS


def test_empty_layers_give_the_defaults() -> None:
    assert resolve({}, {}) == DEFAULTS


def test_resolve_does_not_mutate_key_defaults() -> None:
    resolve({"otp_max_failures": "50"})
    assert resolve().otp_max_failures == 5


# -- check_pin --------------------------------------------------------------------------------


@pytest.mark.parametrize("pin", ["4711", "8403", "2791", "97531", "13579", "04711", "735082"])
def test_good_pins_pass(pin: str) -> None:
    check_pin(pin, DEFAULTS)


@pytest.mark.parametrize(
    "pin",
    [
        "0000",
        "1111",
        "99999999",
        "1234",
        "0123",
        "3456",
        "456789",
        "0123456789",
        "4321",
        "9876",
        "543210",
        "1212",
        "6969",
        "1122",
        "1004",
        "2000",
        "2580",
        "123456",
    ],
)
def test_trivial_pins_are_banned(pin: str) -> None:
    with pytest.raises(PolicyError, match="too easy to guess"):
        check_pin(pin, DEFAULTS)


@pytest.mark.parametrize(
    "pin", ["47a1", "12 34", "", "-4711", "\uff14\uff17\uff11\uff11", "٤٧١١", "47.1"]
)
def test_pins_are_ascii_digits(pin: str) -> None:
    with pytest.raises(PolicyError, match="digits only"):
        check_pin(pin, DEFAULTS)


def test_min_length_follows_the_policy() -> None:
    with pytest.raises(PolicyError, match="at least 4 digits"):
        check_pin("471", DEFAULTS)
    strict = resolve({"pin_min_length": "6"})
    with pytest.raises(PolicyError, match="at least 6 digits"):
        check_pin("47113", strict)
    check_pin("471138", strict)


def test_max_length() -> None:
    check_pin("4711" * 4, DEFAULTS)  # 16 digits
    with pytest.raises(PolicyError, match="at most 16 digits"):
        check_pin("47113" * 4, DEFAULTS)  # 20 digits
