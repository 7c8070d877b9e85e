"""Per-packet CPU cost of the bridge's RADIUS packet layer, no sockets.

    .venv/bin/python bench/radius_codec.py

Prints µs per packet (best of 5 runs) for:

- ``codec``: decode an Access-Request, check its Message-Authenticator, decrypt
  User-Password, encode an Access-Accept with Class and Filter-Id (Message-Authenticator
  first, Response Authenticator) — our codec;
- ``pyrad``: the same with pyrad 2.6 (``AuthPacket``, ``verify_message_authenticator``,
  ``PwDecrypt``, ``CreateReply``/``ReplyPacket``), for comparison, when pyrad is installed;
- ``core``: what the bridge does per ``password,code`` request apart from HTTP: client
  lookup, decode, verify, duplicate check, parse, the flow up to its VerifyCode effect and
  the answer, encode, cache.
"""

from __future__ import annotations

import ipaddress
import sys
import timeit
from pathlib import Path

# Import the repository's radius_bridge, not bench/radius_bridge.py next to this script:
# radius_bridge is a namespace package (no __init__.py), and a plain module of the same
# name anywhere on sys.path would win over it.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

from radius_bridge.clients import ClientTable  # noqa: E402 - after the sys.path fix
from radius_bridge.model import Checked, ClientConfig  # noqa: E402 - after the sys.path fix
from radius_bridge.protocol import packet as codec  # noqa: E402 - after the sys.path fix
from radius_bridge.protocol.core import Begin, BridgeCore  # noqa: E402 - after the sys.path fix
from radius_vocabulary.dictionary import (  # noqa: E402 - after the sys.path fix
    DICTIONARY_FILE,
    Attribute,
    default_dictionary,
)

SECRET = b"a 24 octet shared secret"
NUMBER = 20_000


def request() -> bytes:
    attributes = b"".join(
        codec.encode_attribute(kind, value)
        for kind, value in (
            (codec.USER_NAME, b"CONTOSO\\alice"),
            (codec.NAS_IDENTIFIER, b"asa1"),
            (codec.NAS_IP_ADDRESS, bytes([10, 0, 0, 7])),
            (codec.CALLING_STATION_ID, b"203.0.113.50"),
        )
    )
    return codec.encode_request(7, SECRET, attributes, b"correct horse,123456")


def best(function: object) -> float:
    """Best of 5 runs of NUMBER calls, in µs per call."""
    runs = timeit.repeat(function, number=NUMBER, repeat=5)  # type: ignore[arg-type]
    return min(runs) / NUMBER * 1e6


def bench_codec(raw: bytes) -> float:
    dictionary = default_dictionary()
    reply = (Attribute("Class", b"vpn"), Attribute("Filter-Id", "vpn-users"))

    def one() -> bytes:
        packet = codec.decode_request(raw)
        if not codec.verify_message_authenticator(packet, SECRET):
            raise SystemExit("verification failed")
        hidden = packet.get(codec.USER_PASSWORD)
        assert hidden is not None
        codec.decrypt_password(hidden, SECRET, packet.authenticator)
        return codec.encode_reply(
            codec.ACCESS_ACCEPT,
            packet.identifier,
            packet.authenticator,
            SECRET,
            codec.encode_attributes(reply, dictionary),
            packet.get_all(codec.PROXY_STATE),
        )

    return best(one)


def bench_pyrad(raw: bytes) -> float | None:
    try:
        from pyrad import packet as pyrad_packet
        from pyrad.dictionary import Dictionary
    except ImportError:
        return None
    dictionary = Dictionary(str(DICTIONARY_FILE))

    def one() -> bytes:
        packet = pyrad_packet.AuthPacket(packet=raw, secret=SECRET, dict=dictionary)
        if not packet.verify_message_authenticator():
            raise SystemExit("verification failed")
        packet.PwDecrypt(packet[2][0])
        reply = packet.CreateReply()
        reply.code = pyrad_packet.AccessAccept
        reply["Class"] = b"vpn"
        reply["Filter-Id"] = "vpn-users"
        return bytes(reply.ReplyPacket())

    return best(one)


def bench_core(raw: bytes) -> float:
    client = ClientConfig(
        name="asa1",
        networks=(ipaddress.ip_network("10.0.0.0/24"),),
        secret=SECRET,
        reply_attributes=(("Filter-Id", "vpn-users"), ("Class", "vpn")),
    )
    core = BridgeCore(ClientTable([client]))
    calls = iter(range(10**9))
    accepted = Checked(True, "ok")

    def one() -> bytes:
        call = next(calls)
        now = call / 1000  # 1,000 requests a second: the duplicate cache expires as in use
        # A new source port each time: a new request for the duplicate cache, as in real use.
        out = core.receive(raw, ("10.0.0.7", call % 65536), now)
        assert isinstance(out, Begin)
        flow = core.authenticate(out.request, lambda: now)
        flow.send(None)  # type: ignore[arg-type]  # -> VerifyCode
        try:
            flow.send(accepted)
        except StopIteration as stop:
            return core.finish(out.request, stop.value, now)
        raise SystemExit("flow did not decide")

    return best(one)


def main() -> None:
    raw = request()
    print(
        f"packet: {len(raw)} octets, Access-Request with Message-Authenticator and a "
        f"20-octet password; {NUMBER:,} calls, best of 5"
    )
    ours = bench_codec(raw)
    print(f"codec  decode+verify+decrypt+encode: {ours:6.1f} µs/packet")
    theirs = bench_pyrad(raw)
    if theirs is None:
        print("pyrad  not installed")
    else:
        print(
            f"pyrad  decode+verify+decrypt+encode: {theirs:6.1f} µs/packet "
            f"({theirs / ours:.1f}x ours)"
        )
    print(f"core   receive+flow+finish (password,code): {bench_core(raw):6.1f} µs/request")


if __name__ == "__main__":
    main()
