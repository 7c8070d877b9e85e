"""RadSec stream framing (radius_bridge.protocol.stream): properties over arbitrary chunking."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radius_bridge.protocol.stream import FramingError, StreamFramer


def packet(code: int, identifier: int, body: bytes) -> bytes:
    return struct.pack("!BBH", code, identifier, 20 + len(body)) + bytes(16) + body


packets = st.lists(
    st.builds(
        packet,
        st.integers(1, 255),
        st.integers(0, 255),
        st.binary(max_size=4076),
    ),
    min_size=0,
    max_size=6,
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(packets, st.lists(st.integers(0, 1 << 16), max_size=40))
def test_any_chunking_gives_back_the_same_packets_in_order(
    sent: list[bytes], cuts: list[int]
) -> None:
    framer = StreamFramer()
    received: list[bytes] = []
    for chunk in chunked(b"".join(sent), cuts):
        received.extend(framer.feed(chunk))
    assert received == sent
    assert framer.pending == 0


@given(packets, st.integers(0, 19))
def test_an_incomplete_tail_is_held_back(sent: list[bytes], extra: int) -> None:
    tail = packet(1, 1, b"x" * 30)[:extra] if extra else b""
    framer = StreamFramer()
    assert framer.feed(b"".join(sent) + tail) == sent
    assert framer.pending == len(tail)


@given(
    packets,
    st.one_of(st.integers(0, 19), st.integers(4097, 65535)),
    st.lists(st.integers(0, 1 << 16), max_size=10),
)
def test_a_bad_length_breaks_the_stream_for_good(
    before: list[bytes], length: int, cuts: list[int]
) -> None:
    bad = struct.pack("!BBH", 1, 0, length) + bytes(40)
    framer = StreamFramer()
    got: list[bytes] = []
    failed = False
    for chunk in chunked(b"".join(before) + bad, cuts):
        try:
            got.extend(framer.feed(chunk))
        except FramingError:
            failed = True
            break
    assert failed
    # Whatever came whole before the bad header was handed out, nothing after it.
    assert got == before[: len(got)]
    with pytest.raises(FramingError):
        framer.feed(packet(1, 2, b""))


def test_boundaries_20_and_4096_are_accepted() -> None:
    framer = StreamFramer()
    small, big = packet(12, 1, b""), packet(1, 2, b"a" * 4076)
    assert framer.feed(small + big) == [small, big]
