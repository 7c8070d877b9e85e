"""RADIUS over a byte stream (RadSec, RFC 6614): bytes in, whole packets out. Sans-IO.

On TCP/TLS there are no datagram boundaries; each packet says how long it is in octets 3-4
of its header (RFC 6614 section 2.5 keeps RFC 2865's framing as it is). The framer buffers
what arrived and hands out each packet once all of its octets are there, whatever the
chunking: two packets in one read, one packet over many reads.

A length outside 20..4096 (RFC 2865 section 3) cannot be skipped over on a stream: every
later boundary would be a guess. RFC 6614 section 2.5 says to close the connection then, so
:meth:`StreamFramer.feed` raises :class:`FramingError` and the framer stays broken.
"""

from __future__ import annotations

from typing import Final

MIN_LENGTH: Final = 20
MAX_LENGTH: Final = 4096


class FramingError(Exception):
    """The stream holds a length field outside 20..4096: close the connection."""


class StreamFramer:
    """Cuts a byte stream into RADIUS packets by their length field."""

    __slots__ = ("_broken", "_buffer")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._broken: str | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; every packet now complete, in stream order. Raises
        :class:`FramingError` on a bad length (and on every call after one)."""
        if self._broken is not None:
            raise FramingError(self._broken)
        self._buffer += data
        packets: list[bytes] = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= 4:
            length = (buffer[start + 2] << 8) | buffer[start + 3]
            if not MIN_LENGTH <= length <= MAX_LENGTH:
                self._broken = f"packet length {length} is outside {MIN_LENGTH}..{MAX_LENGTH}"
                self._buffer = bytearray()
                raise FramingError(self._broken)
            if len(buffer) - start < length:
                break
            packets.append(bytes(buffer[start : start + length]))
            start += length
        if start:
            del buffer[:start]
        return packets

    @property
    def pending(self) -> int:
        """Octets of an incomplete packet held back (at most 4095)."""
        return len(self._buffer)
