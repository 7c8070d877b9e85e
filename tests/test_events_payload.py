"""The NOTIFY payload of the outcome bus between nodes: packing and a parser that trusts
nothing (any session of the database may NOTIFY on the channel)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.events import Outcome
from backend.events_payload import MAX_PAYLOAD_BYTES, pack, parse, sender, valid_node_id
from backend.events_postgres import PostgresOutcomeBus

NODE = "n_Zx3k9aQ2bT1c"
AT = datetime(2026, 12, 6, 15, 44, 54, 123456, tzinfo=UTC)


def test_round_trip_keeps_every_field() -> None:
    outcomes = [
        Outcome("ch_4kqG0aaaaaaaaaaaaaaaaa", "approved", AT),
        Outcome("ch_x", "cancelled"),
        Outcome("ch-y_Z9", "fraud", AT + timedelta(seconds=1)),
    ]
    [payload] = pack(NODE, outcomes)

    assert sender(payload) == NODE
    parsed = parse(payload)
    assert parsed.node_id == NODE
    assert parsed.outcomes == outcomes
    assert parsed.rejected == 0
    assert (
        payload.splitlines()[1]
        == "ch_4kqG0aaaaaaaaaaaaaaaaa approved 2026-12-06T15:44:54.123456+00:00"
    )


def test_a_thousand_outcomes_fill_few_payloads_each_under_the_limit() -> None:
    outcomes = [Outcome(f"ch_{i:022d}", "cancelled", AT) for i in range(1000)]
    payloads = pack(NODE, outcomes)

    assert all(len(p.encode()) <= MAX_PAYLOAD_BYTES for p in payloads)
    # ~70 bytes a line: about 110 a payload, so 10 payloads, not 1,000 notifications.
    assert len(payloads) <= 10
    assert [o for p in payloads for o in parse(p).outcomes] == outcomes


def test_times_in_other_zones_are_sent_as_utc() -> None:
    local = AT.astimezone(timezone(timedelta(hours=2)))
    [payload] = pack(NODE, [Outcome("ch_1", "denied", local)])
    assert "+00:00" in payload
    assert parse(payload).outcomes[0].answered_at == AT


def test_nothing_to_send_is_no_payload() -> None:
    assert pack(NODE, []) == []


def test_an_outcome_the_parser_would_refuse_is_not_sent() -> None:
    bad = [Outcome("ch 1", "approved"), Outcome("ch_2", "pending"), Outcome("x" * 65, "denied")]
    assert pack(NODE, [*bad, Outcome("ch_3", "denied")]) == [f"{NODE}\nch_3 denied -"]


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "\n",
        "n_node has spaces\nch_1 approved -",
        f"{NODE}\nch_1 pending -",  # not final: never a wake-up
        f"{NODE}\nch_1 approved",
        f"{NODE}\nch_1  approved -",
        f"{NODE}\nch_1 approved - extra",
        f"{NODE}\nch_1 APPROVED -",
        f"{NODE}\nch;drop approved -",
        f"{NODE}\n{'a' * 65} approved -",
        f"{NODE}\nch_1 approved 2026-13-45T99:99:99",  # shaped like a time, is not one
        f"{NODE}\nch_1 approved 2026-12-06T15:44:54+00:00\r",
        f"{NODE}\nch_1 approved \u0662\u0660\u0662\u0666-12-06T15:44:54",  # Arabic-Indic digits
        f"{NODE}\nch_\u00e9 approved -",
    ],
)
def test_garbage_is_refused_line_by_line(payload: str) -> None:
    parsed = parse(payload)
    assert parsed.outcomes == []
    assert parsed.rejected >= 1 or payload.strip() == ""


def test_good_lines_survive_bad_neighbours() -> None:
    parsed = parse(f"{NODE}\nch_1 approved -\nnonsense\nch_2 denied -")
    assert [o.challenge_id for o in parsed.outcomes] == ["ch_1", "ch_2"]
    assert parsed.rejected == 1


def test_a_time_without_zone_is_taken_as_utc() -> None:
    [outcome] = parse(f"{NODE}\nch_1 approved 2026-12-06T15:44:54").outcomes
    assert outcome.answered_at == datetime(2026, 12, 6, 15, 44, 54, tzinfo=UTC)


@given(st.text(max_size=300))
def test_parse_never_raises(payload: str) -> None:
    parsed = parse(payload)
    for outcome in parsed.outcomes:
        assert outcome.state in {"approved", "denied", "fraud", "expired", "cancelled"}


def test_node_ids_are_checked_as_receivers_check_them() -> None:
    assert valid_node_id(NODE)
    assert not valid_node_id("")
    assert not valid_node_id("n 1")
    assert not valid_node_id("n_\u00e9")
    with pytest.raises(ValueError, match="node id"):
        PostgresOutcomeBus("postgresql://127.0.0.1/none", "bad node")
