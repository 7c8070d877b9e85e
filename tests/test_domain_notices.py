"""The pure rule of account changes (backend/domain/notices.py): which change ends sessions,
which is mailed, and a mail text that no stored value can bend."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from backend.domain.notices import (
    ENDS_SESSIONS,
    MAILED,
    AccountChange,
    compose_notice,
    describe_actor,
)


def test_every_change_does_something_and_the_table_is_the_one_agreed() -> None:
    assert set(ENDS_SESSIONS) | set(MAILED) == set(AccountChange)
    assert set(ENDS_SESSIONS) == {
        AccountChange.PASSWORD_SET,
        AccountChange.INVITATION_ACCEPTED,
        AccountChange.DEVICE_REMOVED,
        AccountChange.DEVICE_LOST,
        AccountChange.DEVICES_RESET,
        AccountChange.BLOCKED,
        AccountChange.FRAUD_BLOCKED,
        AccountChange.DISABLED,
    }
    # Adding a factor or changing the PIN is mailed but ends no session.
    for change in (AccountChange.APP_ADDED, AccountChange.OATH_ADDED, AccountChange.PIN_SET):
        assert change in MAILED
        assert change not in ENDS_SESSIONS


def test_actors_in_words() -> None:
    assert describe_actor("portal:alice") == "you, in the user portal"
    assert describe_actor("admin:root") == "an administrator in the admin console (root)"
    assert describe_actor("cli:ops") == "an administrator, on the server's command line (ops)"
    assert describe_actor("device:dev_x") == "the device itself, through the app"
    assert describe_actor("weird\nkind:x") == "the server (weird kind)"


@given(
    change=st.sampled_from(sorted(MAILED)),
    user_name=st.text(max_size=200),
    display_name=st.text(max_size=300),
    actor=st.text(max_size=200),
    source=st.text(max_size=100),
    detail=st.text(max_size=600),
    issuer=st.text(max_size=100),
)
def test_no_stored_value_can_add_a_line_or_a_control_character(
    change: AccountChange,
    user_name: str,
    display_name: str,
    actor: str,
    source: str,
    detail: str,
    issuer: str,
) -> None:
    subject, text = compose_notice(
        change,
        user_name=user_name,
        display_name=display_name,
        when=datetime(2026, 12, 6, tzinfo=UTC),
        actor=actor,
        source=source,
        detail=detail,
        issuer=issuer,
    )
    assert subject.isprintable()
    lines = text.split("\n")
    assert all(line.isprintable() for line in lines)
    assert len(lines) == len(
        compose_notice(
            change,
            user_name="u",
            display_name="",
            when=datetime(2026, 12, 6, tzinfo=UTC),
            actor="portal:u",
            source="",
            detail=detail and "d",
            issuer="OpenMFA",
        )[1].split("\n")
    )
    assert "If this wasn't you, contact your help desk" in text
