"""Fuzz the bridge's packet path: decoder, Message-Authenticator check, request parsing.

Every input goes through ``BridgeCore.receive`` (what the UDP socket feeds it) and, when it
decodes, is re-signed with the client's secret and fed again, so the fuzzer also reaches the
code behind the Message-Authenticator check (attribute parsing, password decryption, the
flow's first step, reply encoding). The only acceptable outcomes are a Drop / Send /
Absorbed / Begin, or ``MalformedPacket`` from the decoder; anything else is a failure.

    .venv/bin/python bench/radius_fuzz.py        # 1,000,000 inputs, atheris if installed
    .venv/bin/python bench/radius_fuzz.py --engine mutate -n 2000000
    .venv/bin/python bench/radius_fuzz.py --engine atheris -n 1000000

``mutate``: our own mutations of valid packets (byte flips, cuts, extensions, length-field
and attribute-length edits, attribute splices, random bytes), seeded, no dependencies.
``atheris``: coverage-guided (libFuzzer) from valid seed packets.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

# Import the repository's radius_bridge, not bench/radius_bridge.py next to this script:
# radius_bridge is a namespace package (no __init__.py), and a plain module of the same
# name anywhere on sys.path would win over it.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

SECRET = b"fuzzing shared secret"
SOURCE = ("10.0.0.7", 40000)


def _imports() -> tuple[Callable[[bytes], None], list[bytes], Callable[[], str]]:
    """The target and seeds (imported late so atheris can instrument the modules)."""
    from radius_bridge.clients import ClientTable
    from radius_bridge.model import ClientConfig, Reject
    from radius_bridge.protocol import packet as codec
    from radius_bridge.protocol.core import Begin, BridgeCore
    from radius_bridge.protocol.dedup import DuplicateCache

    client = ClientConfig(
        name="fuzz",
        networks=(ipaddress.ip_network("10.0.0.0/8"),),
        secret=SECRET,
        reply_attributes=(("Filter-Id", "x"),),
    )
    core = BridgeCore(ClientTable([client]), duplicates=DuplicateCache(max_entries=1024))
    clock = [0.0]

    def feed(data: bytes) -> None:
        clock[0] += 0.001
        # A new source port per input: otherwise most re-signed mutants would only hit the
        # duplicate cache (same Identifier and authenticator) and never reach the parser.
        port = int(clock[0] * 1000) % 65536
        out = core.receive(data, (SOURCE[0], port), clock[0])
        if isinstance(out, Begin):
            flow = core.authenticate(out.request, lambda: clock[0])
            try:
                flow.send(None)  # type: ignore[arg-type]
            except StopIteration as stop:
                core.finish(out.request, stop.value, clock[0])
            else:
                flow.close()
                core.finish(out.request, Reject("fuzz"), clock[0])

    def target(data: bytes) -> None:
        feed(data)
        try:
            packet = codec.decode_request(data)
        except codec.MalformedPacket:
            return
        if packet.ma_offset >= 0:  # re-sign: get past the Message-Authenticator check
            offset = packet.ma_offset
            mac = codec.message_authenticator(packet.data, offset, SECRET)
            feed(packet.data[:offset] + mac + packet.data[offset + 16 :])

    def attrs(*pairs: tuple[int, bytes]) -> bytes:
        return b"".join(codec.encode_attribute(kind, value) for kind, value in pairs)

    seeds = [
        codec.encode_request(
            1,
            SECRET,
            attrs((1, b"CONTOSO\\alice"), (32, b"nas"), (31, b"203.0.113.5"), (33, b"p")),
            b"password,123456",
        ),
        codec.encode_request(2, SECRET, attrs((1, b"bob"), (24, b"S" * 16)), b""),
        codec.encode_request(3, SECRET, attrs((1, b"carol"), (4, b"\x0a\x00\x00\x01")), b"x" * 128),
        codec.encode_request(4, SECRET, attrs((26, b"\x00\x00\x00\x09\x01\x05abc")), None),
        codec.encode_request(5, SECRET, b"", None, code=codec.STATUS_SERVER),
        bytes.fromhex(
            "010000380f403f9473978057bd83d5cb98f4227a01066e656d6f02120dbe708d93d413ce3196e4"
            "3f782a0aee0406c0a80110050600000003"
        ),
    ]

    def summary() -> str:
        """Where the inputs ended: proof the fuzzer gets past the cheap refusals."""
        counts = {**{k: v for k, v in core.drops.items() if v}, **core.counters}
        return " ".join(f"{key}={value}" for key, value in sorted(counts.items()))

    return target, seeds, summary


def mutate(rng: random.Random, seed: bytes) -> bytes:
    """One mutation (or a few) of a valid packet."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(9)
        if choice == 0 and data:  # flip bytes
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 1:  # cut
            del data[rng.randrange(len(data) + 1) :]
        elif choice == 2:  # extend
            data += rng.randbytes(rng.randint(1, 64))
        elif choice == 3 and len(data) >= 4:  # length field
            value = rng.choice([0, 19, 20, len(data) - 1, len(data) + 1, 4096, 4097, 65535])
            data[2:4] = max(0, min(value, 65535)).to_bytes(2, "big")
        elif choice == 4 and len(data) > 21:  # an attribute length octet
            data[rng.randrange(21, len(data))] = rng.choice([0, 1, 2, 3, 17, 18, 19, 255])
        elif choice == 5 and len(data) > 20:  # splice an attribute in
            kind = rng.choice([1, 2, 4, 24, 26, 33, 80, rng.randrange(256)])
            value = rng.randbytes(rng.choice([0, 1, 4, 15, 16, 17, 128, 200]))
            at = rng.randrange(20, len(data) + 1)
            data[at:at] = bytes((kind, min(255, len(value) + 2))) + value
        elif choice == 6:  # code
            if data:
                data[0] = rng.choice([1, 2, 3, 4, 11, 12, 13, 40, 255])
        elif choice == 7:  # random bytes
            data = bytearray(rng.randbytes(rng.randint(0, 300)))
        elif len(data) >= 4:  # keep the length field consistent with the new size
            size = min(len(data), 65535)
            data[2:4] = size.to_bytes(2, "big")
    return bytes(data)


def run_mutate(count: int, seed: int) -> int:
    from radius_bridge.protocol.packet import MalformedPacket

    target, seeds, summary = _imports()
    rng = random.Random(seed)
    failures = 0
    started = time.perf_counter()
    for index in range(count):
        data = mutate(rng, seeds[index % len(seeds)])
        try:
            target(data)
        except MalformedPacket:
            pass
        except Exception:
            failures += 1
            if failures <= 5:
                print(f"FAILURE on input {data.hex()}", file=sys.stderr)
                traceback.print_exc()
    elapsed = time.perf_counter() - started
    print(
        f"engine=mutate inputs={count} seconds={elapsed:.1f} "
        f"inputs_per_second={count / elapsed:,.0f} failures={failures}"
    )
    print(f"reached: {summary()}")
    return failures


def run_atheris(count: int) -> int:
    import atheris  # type: ignore[import-not-found, unused-ignore]

    with atheris.instrument_imports():
        target, seeds, summary = _imports()
    from radius_bridge.protocol.packet import MalformedPacket

    corpus = tempfile.mkdtemp(prefix="radius-fuzz-")
    for index, seed in enumerate(seeds):
        Path(corpus, f"seed{index}").write_bytes(seed)
    started = time.perf_counter()
    executed = [0]

    def one_input(data: bytes) -> None:
        executed[0] += 1
        if executed[0] == count:
            elapsed = time.perf_counter() - started
            print(
                f"engine=atheris inputs={count} seconds={elapsed:.1f} "
                f"inputs_per_second={count / elapsed:,.0f} failures=0",
                flush=True,
            )
            print(f"reached: {summary()}", flush=True)
        # MalformedPacket is the one refusal we allow; anything else propagates and libFuzzer
        # reports it as a crash with the input.
        with contextlib.suppress(MalformedPacket):
            target(data)

    atheris.Setup([sys.argv[0], f"-runs={count}", "-max_len=4200", "-print_final_stats=1",
                   corpus], one_input)  # fmt: skip
    atheris.Fuzz()  # exits the process when the runs are done, non-zero on a failure
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--inputs", type=int, default=1_000_000)
    parser.add_argument("--engine", choices=["auto", "atheris", "mutate"], default="auto")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", "4")))
    args = parser.parse_args()
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
        except ImportError:
            engine = "mutate"
        else:
            engine = "atheris"
    failures = (
        run_atheris(args.inputs) if engine == "atheris" else run_mutate(args.inputs, args.seed)
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
