"""The RADIUS bridge under load: real UDP in, real HTTP to a backend process.

One backend (`openmfa run`, RADIUS off, pinned to CPU 0) and one standalone bridge
(`openmfa radius`, pinned to CPU 1); the load generator (asyncio + uvloop, pre-built packets,
in this process) and FreeRADIUS float. Figures printed:

(a) `password,code` authentications per second: Access-Requests carrying
    `password,<valid fresh TOTP code>` for a client with primary `none` (the gateway checked
    the password, as NPS does; a local argon2id password would cap the rate at ~80/s, see
    DESIGN.md), each accepted by the backend's code check and committed with its audit row;
(b) 10,000 push requests held open at once, and the bridge's memory per held request
    (RSS growth of the bridge process / 10,000);
(c) device answer -> Access-Accept latency, p50 / p99, while those are held: the phone's
    answer is posted to the backend (signed, as the app does) and the clock runs until the
    gateway has the Access-Accept;
(d) FreeRADIUS 3.2 PAP on the same machine, same run, driven by the same load generator and
    by radclient, as the ceiling of RADIUS handling here;
(e) with ``--radsec``: (a) again over RadSec (RADIUS over TLS, RFC 6614) to a bridge that
    also listens on TCP: ``--radsec-connections`` mutual-TLS connections (throw-away CA,
    the bench client bound by its certificate's fingerprint), the same window of requests in
    flight spread over them, on fresh time steps (the codes of (a) are spent).

Held pushes long-poll in slices of ``--long-poll-seconds`` (default 600, with the backend's
``long_poll_max_seconds`` raised to match): one HTTP request per held push for its whole life.
With the bridge's default 50-s slices each held push re-polls every 50 s, and the backend's
cost per re-poll (two ORM reads) then limits how fast it can start further pushes while
thousands are held.

    python bench/radius_bridge.py [--users 10000] [--home DIR] [--skip-freeradius]
        [--radsec [--radsec-connections 4]] [--only-codes]

Setting up 10,000 users with an app each takes a few minutes (the ORM path, ~28 ms a user);
``--home DIR`` keeps the populated data directory for the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

# This file's own directory comes first on sys.path when it runs as a script, and its name
# would shadow the radius_bridge package (a namespace package: any module of that name wins).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench._http import percentile  # noqa: E402 - after the sys.path fix above
from bench._process import EXE, free_port, start_server, stop, wait_until  # noqa: E402
from radius_bridge.protocol import packet as codec  # noqa: E402

SECRET = b"bench-radius-secret-0"
CLIENT = "bench-gw"
BENCH_FILE = "radius-bench.json"


# -- set-up ---------------------------------------------------------------------------------------


async def _populate(home: Path, users: int) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from backend.config import load_settings
    from backend.domain import signing
    from backend.domain.radius import ClientChanges
    from backend.domain.stepup import ADMINISTRATOR
    from backend.services import Services
    from backend.services.context import Actor

    admin = Actor("bench")
    services = await Services.open(load_settings(home=home))
    devices: dict[str, list[str]] = {}
    try:
        token = await services.tokens.create(admin, "bench-bridge", scope="bridge")
        await services.policies.set(admin, "challenge_ttl_seconds", "600")
        await services.radius_clients.add(
            admin,
            CLIENT,
            ClientChanges(
                addresses=["127.0.0.1"],
                secret=SECRET.decode(),
                mode="push",
                primary="none",
                push_timeout=600.0,
            ),
        )
        started = time.perf_counter()
        for i in range(users):
            name = f"u{i:05d}"
            await services.users.add(admin, name)
            offer = await services.activation.create_code(admin, ADMINISTRATOR, name)
            key = Ed25519PrivateKey.generate()
            public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            activated = await services.activation.activate(admin, offer.code, public, "reference")
            devices[name] = [
                activated.device_id,
                signing.b64u_encode(key.private_bytes_raw()),
                activated.seed,
            ]
            if i % 1000 == 999:
                rate = (i + 1) / (time.perf_counter() - started)
                print(f"  {i + 1} users ({rate:.0f}/s)", flush=True)
    finally:
        await services.close()
    return {"token": token, "devices": devices}


def prepare(home: Path, users: int) -> dict[str, Any]:
    """A data directory with ``users`` users, each with an activated app; reused if there."""
    from backend.store import migrations

    saved = home / BENCH_FILE
    if saved.exists():
        data: dict[str, Any] = json.loads(saved.read_text())
        if len(data["devices"]) >= users:
            print(f"reusing {len(data['devices'])} users in {home}")
            return data
        raise SystemExit(f"{home} holds fewer than {users} users; use a new --home")
    home.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(f"sqlite+aiosqlite:///{home / 'openmfa.db'}")
    print(f"setting up {users} users with an app each in {home} ...", flush=True)
    started = time.perf_counter()
    data = asyncio.run(_populate(home, users))
    saved.write_text(json.dumps(data))
    print(f"set up in {time.perf_counter() - started:.0f} s")
    return data


# -- processes ------------------------------------------------------------------------------------


@dataclass
class Processes:
    home: Path
    long_poll: float = 600.0
    backend_port: int = field(default_factory=free_port)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def backend_url(self) -> str:
        return f"http://127.0.0.1:{self.backend_port}"

    def start_backend(self) -> None:
        process = start_server(
            self.home,
            self.backend_port,
            {"OPENMFA_LONG_POLL_MAX_SECONDS": str(int(self.long_poll))},
            log=self.home / "backend.log",
            timeout=60,
        )
        self.started.append(process)

    def start_bridge(
        self, token: str, udp: int, metrics: int, radsec: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        token_file = self.home / "bridge.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        log = (self.home / f"bridge-{udp}.log").open("wb")
        process = subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                str(EXE),
                "radius",
                "--backend",
                self.backend_url,
                "--token-file",
                str(token_file),
                "--listen",
                f"127.0.0.1:{udp}",
                "--metrics-listen",
                f"127.0.0.1:{metrics}",
                "--max-held",
                "20000",
                # This bench measures the HTTP path (one long-poll per held push, one round
                # trip per check); bench/bridge_channel.py measures the wait channel.
                "--channel",
                "off",
                *radsec,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OPENMFA_BRIDGE_LONG_POLL_SECONDS": str(self.long_poll)},
        )
        self.started.append(process)
        wait_until(
            lambda: "RADIUS client list loaded: 1" in (self.home / f"bridge-{udp}.log").read_text(),
            30,
            "the bridge to load its clients",
        )
        return process

    def check_alive(self) -> None:
        """Stop the run at once if the backend or a bridge has exited."""
        for process in self.started:
            if process.poll() is not None and process.returncode is not None:
                if getattr(process, "stopped_on_purpose", False):
                    continue
                raise SystemExit(
                    f"{' '.join(str(a) for a in process.args[3:5])} exited with status "
                    f"{process.returncode} during the run; see the logs in {self.home}"
                )

    def stop(self, process: subprocess.Popen[bytes]) -> float:
        """SIGTERM; seconds until it exited."""
        process.stopped_on_purpose = True  # type: ignore[attr-defined]
        return stop(process, timeout=30)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                self.stop(process)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def established_to(port: int) -> int:
    """ESTABLISHED TCP connections to local ``port`` (server side), from /proc/net/tcp."""
    local = f":{port:04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1].endswith(local) and parts[3] == "01":
            count += 1
    return count


def metric(url: str, name: str) -> float:
    text = httpx.get(url, timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- the UDP load generator -----------------------------------------------------------------------


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, generator: LoadGenerator, index: int) -> None:
        self.generator = generator
        self.index = index
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # bursts of replies must not overflow the default buffer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.generator.received(
            self.index * PER_SOCKET + data[1] % PER_SOCKET, data, time.perf_counter()
        )


@dataclass
class Run:
    sent: int = 0
    codes: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    lost: int = 0
    retransmitted: int = 0


class LoadGenerator:
    """Slots: 128 per socket, each with at most one request outstanding. Slot ``j`` of a
    socket alternates identifiers ``j`` and ``j + 128``, so an identifier is never reused by
    the very next request: FreeRADIUS drops a new request whose identifier matches one it
    is still finishing ("conflicting packet"), and real clients rotate identifiers too."""

    def __init__(self, port: int, sockets: int) -> None:
        self.port = port
        self.count = sockets
        self.sockets: list[_Socket] = []
        self.queues: dict[int, list[bytes]] = {}
        self.sent_at: dict[int, float] = {}
        self.replies: dict[int, tuple[int, float]] = {}
        self.waiters: dict[int, asyncio.Event] = {}
        self.run = Run()
        self.idle: asyncio.Event | None = None
        self.outstanding = 0
        self.last: dict[int, bytes] = {}

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for index in range(self.count):
            _, protocol = await loop.create_datagram_endpoint(
                lambda i=index: _Socket(self, i), remote_addr=("127.0.0.1", self.port)
            )
            self.sockets.append(protocol)

    def close(self) -> None:
        for sock in self.sockets:
            if sock.transport is not None:
                sock.transport.close()

    def send(self, slot: int, data: bytes) -> None:
        transport = self.sockets[slot // PER_SOCKET].transport
        assert transport is not None
        self.sent_at[slot] = time.perf_counter()
        self.last[slot] = data
        self.outstanding += 1
        self.run.sent += 1
        transport.sendto(data)

    def retransmit(self, older_than: float) -> None:
        """Send again (same bytes) what has waited longer than ``older_than`` seconds, as a
        RADIUS client does; the latency still counts from the first copy."""
        now = time.perf_counter()
        for slot, sent in self.sent_at.items():
            if now - sent > older_than and self.last.get(slot):
                transport = self.sockets[slot // PER_SOCKET].transport
                if transport is not None:
                    transport.sendto(self.last[slot])
                    self.run.retransmitted += 1

    def received(self, slot: int, data: bytes, at: float) -> None:
        sent = self.sent_at.pop(slot, None)
        if sent is None:
            return  # a late duplicate
        self.outstanding -= 1
        self.run.codes[data[0]] = self.run.codes.get(data[0], 0) + 1
        self.run.latencies.append(at - sent)
        self.replies[slot] = (data[0], at)
        waiter = self.waiters.pop(slot, None)
        if waiter is not None:
            waiter.set()
        queue = self.queues.get(slot)
        if queue:
            self.send(slot, queue.pop())
        elif self.idle is not None and self.outstanding == 0:
            self.idle.set()

    async def pipeline(self, per_slot: dict[int, list[bytes]], stall: float = 10.0) -> Run:
        """Send every slot's packets one after another, each after the previous answer."""
        self.run = Run()
        self.idle = asyncio.Event()
        self.queues = {slot: list(reversed(packets)) for slot, packets in per_slot.items()}
        began = time.perf_counter()
        for count, (slot, queue) in enumerate(self.queues.items()):
            if queue:
                self.send(slot, queue.pop())
            if count % 32 == 31:
                # Ramp up: a burst of the whole window at once overflows the server's
                # default socket buffer (~200 datagrams) before it reads any.
                await asyncio.sleep(0.001)
        last_progress = time.perf_counter()
        before = 0
        while not self.idle.is_set():
            try:
                await asyncio.wait_for(self.idle.wait(), 0.5)
            except TimeoutError:
                self.retransmit(1.0)
            done = len(self.run.latencies)
            if done != before:
                before, last_progress = done, time.perf_counter()
            elif time.perf_counter() - last_progress > stall:
                break  # no progress at all: the rest is lost
        self.run.seconds = time.perf_counter() - began
        self.run.lost = self.outstanding
        self.outstanding = 0
        self.sent_at.clear()
        return self.run


def access_request(identifier: int, user: str, password: bytes | None) -> bytes:
    attributes = codec.encode_attribute(codec.USER_NAME, user.encode()) + codec.encode_attribute(
        codec.NAS_IDENTIFIER, b"bench-nas"
    )
    return codec.encode_request(identifier, SECRET, attributes, password)


PER_SOCKET = 128


def slots(window: int) -> list[int]:
    """Slot numbers for ``window`` outstanding requests."""
    return list(range(window))


def sockets_for(window: int) -> int:
    return (window + PER_SOCKET - 1) // PER_SOCKET


def identifier(slot: int, nth: int) -> int:
    """The identifier of the ``nth`` request sent in ``slot``."""
    return slot % PER_SOCKET + PER_SOCKET * (nth % 2)


# -- (a) password,code ----------------------------------------------------------------------------


async def bench_codes(port: int, devices: dict[str, list[str]], window: int) -> Run:
    from backend.domain import totp

    # A code is accepted once per user and step; steps s-1, s and s+1 are all valid while the
    # clock is in step s. Start at the beginning of a step so the run fits inside it.
    into = time.time() % totp.PERIOD
    if into > 3:
        wait = totp.PERIOD - into + 0.3
        print(f"  waiting {wait:.0f} s for a fresh time step ...", flush=True)
        await asyncio.sleep(wait)
    step = totp.time_step(datetime.now(UTC))
    numbers = slots(window)
    per_slot: dict[int, list[bytes]] = {slot: [] for slot in numbers}
    index = 0
    for offset in (-1, 0, 1):
        for name, (_, _, seed) in devices.items():
            code = totp.code_at_step(seed, step + offset)
            slot = numbers[index % window]
            ident = identifier(slot, len(per_slot[slot]))
            per_slot[slot].append(access_request(ident, name, b"ad-password," + code.encode()))
            index += 1
    generator = LoadGenerator(port, sockets_for(window))
    await generator.open()
    try:
        run = await generator.pipeline(per_slot)
    finally:
        generator.close()
    if totp.time_step(datetime.now(UTC)) != step:
        print("  warning: the time step changed during the run; late codes were rejected")
    return run


# -- (e) password,code over RadSec ----------------------------------------------------------------


class _TlsConnection(asyncio.Protocol):
    """One RadSec connection of the load generator: slots ``base .. base + 127``."""

    def __init__(self, generator: RadsecLoad, base: int) -> None:
        from radius_bridge.protocol.stream import StreamFramer

        self.generator = generator
        self.base = base
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        for packet in self.framer.feed(data):
            self.generator.received(self.base + packet[1] % PER_SOCKET, packet, now)


class RadsecLoad(LoadGenerator):
    """:class:`LoadGenerator`'s pipelining over TLS connections instead of UDP sockets (one
    connection stands where a socket stood: 128 slots, identifiers alternating)."""

    def __init__(self, port: int, connections: int, context: Any) -> None:
        super().__init__(port, connections)
        self.context = context
        self.connections: list[_TlsConnection] = []

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for index in range(self.count):
            _, protocol = await loop.create_connection(
                lambda i=index: _TlsConnection(self, i * PER_SOCKET),
                "127.0.0.1",
                self.port,
                ssl=self.context,
                server_hostname="127.0.0.1",
            )
            self.connections.append(protocol)

    def close(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()

    def send(self, slot: int, data: bytes) -> None:
        transport = self.connections[slot // PER_SOCKET].transport
        assert transport is not None
        self.sent_at[slot] = time.perf_counter()
        self.last[slot] = data
        self.outstanding += 1
        self.run.sent += 1
        transport.write(data)

    def retransmit(self, older_than: float) -> None:
        pass  # TCP: a RADIUS client does not retransmit on the same connection (RFC 6614)


async def bench_codes_radsec(
    port: int,
    devices: dict[str, list[str]],
    window: int,
    connections: int,
    context: Any,
    after_step: int,
) -> Run:
    from backend.domain import totp

    # Codes of steps up to after_step were spent by (a); wait for a step whose own and next
    # code are both fresh, at its beginning.
    while True:
        now = datetime.now(UTC)
        step = totp.time_step(now)
        into = time.time() % totp.PERIOD
        if step > after_step + 1 and into <= 3:
            break
        wait = totp.PERIOD - into + 0.3
        print(f"  waiting {wait:.0f} s for a fresh time step ...", flush=True)
        await asyncio.sleep(wait)
    per_connection = min(PER_SOCKET, max(1, window // connections))
    numbers = [c * PER_SOCKET + j for c in range(connections) for j in range(per_connection)]
    per_slot: dict[int, list[bytes]] = {slot: [] for slot in numbers}
    index = 0
    for offset in (0, 1):
        for name, (_, _, seed) in devices.items():
            code = totp.code_at_step(seed, step + offset)
            slot = numbers[index % len(numbers)]
            ident = identifier(slot, len(per_slot[slot]))
            attributes = codec.encode_attribute(
                codec.USER_NAME, name.encode()
            ) + codec.encode_attribute(codec.NAS_IDENTIFIER, b"bench-nas")
            per_slot[slot].append(
                codec.encode_request(ident, b"radsec", attributes, b"ad-password," + code.encode())
            )
            index += 1
    generator = RadsecLoad(port, connections, context)
    await generator.open()
    try:
        run = await generator.pipeline(per_slot)
    finally:
        generator.close()
    return run


def radsec_files(home: Path) -> tuple[list[str], Any, str]:
    """A throw-away CA, the bridge's certificate and the bench gateway's: the bridge's
    ``--radsec-*`` arguments (port chosen here), the client's TLS context, its fingerprint."""
    import ssl

    from tests.support.radsec import TestCa

    ca = TestCa(home / "radsec-pki", "bench RadSec CA")
    server = ca.issue("bridge", server=True)
    gateway = ca.issue("bench-gw")
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    context.load_cert_chain(gateway.cert_file, gateway.key_file)
    port = free_port()
    arguments = [
        "--radsec-listen",
        f"127.0.0.1:{port}",
        "--radsec-cert-file",
        str(server.cert_file),
        "--radsec-key-file",
        str(server.key_file),
        "--radsec-client-ca-file",
        str(ca.ca_file),
    ]
    return arguments, context, gateway.fingerprint


def bind_certificate(home: Path, fingerprint: str) -> None:
    """Bind the bench gateway's certificate to the bench client (``openmfa client set``)."""
    subprocess.run(
        [str(EXE), "client", "set", CLIENT, "--radsec", "--cert-fingerprint", fingerprint],
        env={**os.environ, "OPENMFA_HOME": str(home)},
        check=True,
        stdout=subprocess.DEVNULL,
    )


# -- (b) and (c): held pushes and the answer latency ----------------------------------------------


@dataclass
class Held:
    run_seconds: float
    rss_before_kib: int
    rss_held_kib: int
    held: int
    connections: int
    answer_latencies: list[float]
    answer_http: list[float]
    after_commit: list[float]
    accepted: int


def _answer(
    http: httpx.Client, device: list[str], challenge_id: str, sign: Callable[..., Any]
) -> tuple[float, float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from backend.domain import signing

    key = Ed25519PrivateKey.from_private_bytes(signing.b64u_decode(device[1]))
    target = f"/app/v1/challenges/{challenge_id}/answer"
    body = b'{"answer": "approve"}'
    headers = sign(key, device[0], "POST", target, body, int(time.time()))
    headers["content-type"] = "application/json"
    began = time.perf_counter()
    response = http.post(target, content=body, headers=headers)
    done = time.perf_counter()
    if response.status_code != 200:
        raise SystemExit(f"answer failed: {response.status_code} {response.text}")
    return began, done


def _pending(http: httpx.Client, device: list[str], sign: Callable[..., Any]) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from backend.domain import signing

    key = Ed25519PrivateKey.from_private_bytes(signing.b64u_decode(device[1]))
    headers = sign(key, device[0], "GET", "/app/v1/challenges", b"", int(time.time()))
    challenges = http.get("/app/v1/challenges", headers=headers).json()["challenges"]
    if not challenges:
        raise SystemExit("no pending challenge on the phone")
    # The newest: an earlier, aborted run may have left one that has not expired yet.
    return str(max(challenges, key=lambda c: c["created_at"])["id"])


async def send_paced(
    generator: LoadGenerator, names: Sequence[str], numbers: Sequence[int], rate: float
) -> float:
    """A push request (no password) per name, slot ``numbers[i]`` for ``names[i]``, paced at
    ``rate`` a second like gateways reconnecting users, not one burst (the backend starts
    ~100-200 pushes a second through its ORM path). The ``time.perf_counter()`` it began."""
    began = time.perf_counter()
    for index, name in enumerate(names):
        slot = numbers[index]
        generator.send(slot, access_request(identifier(slot, 0), name, None))
        pause = began + (index + 1) / rate - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
    return began


@dataclass
class Answered:
    """Held push requests answered one at a time (:func:`answer_held`)."""

    latencies: list[float] = field(default_factory=list)  # the answer sent -> Access-Accept
    answer_http: list[float] = field(default_factory=list)  # the phone's answer request alone
    after_commit: list[float] = field(default_factory=list)  # its response -> Access-Accept
    accepted: int = 0


async def answer_held(
    generator: LoadGenerator,
    backend_url: str,
    devices: dict[str, list[str]],
    names: Sequence[str],
    numbers: Sequence[int],
    count: int,
    answers: int,
) -> Answered:
    """Approve ``answers`` of the ``count`` held requests not answered yet (picked at random,
    seed 7), one at a time, timing each answer to its Access-Accept."""
    from backend.domain.signing import sign_request

    loop = asyncio.get_running_loop()
    answered = Answered()
    waiting = [i for i in range(count) if numbers[i] not in generator.replies]
    picked = random.Random(7).sample(waiting, min(answers, len(waiting)))
    with httpx.Client(base_url=backend_url, timeout=30) as http:
        for index in picked:
            name, slot = names[index], numbers[index]
            challenge_id = await loop.run_in_executor(
                None, _pending, http, devices[name], sign_request
            )
            arrived = asyncio.Event()
            generator.waiters[slot] = arrived
            sent, done = await loop.run_in_executor(
                None, _answer, http, devices[name], challenge_id, sign_request
            )
            await asyncio.wait_for(arrived.wait(), 30)
            code, at = generator.replies[slot]
            answered.accepted += code == codec.ACCESS_ACCEPT
            answered.latencies.append(at - sent)
            answered.answer_http.append(done - sent)
            answered.after_commit.append(at - done)
    return answered


async def bench_held(
    procs: Processes,
    bridge: subprocess.Popen[bytes],
    port: int,
    metrics_url: str,
    devices: dict[str, list[str]],
    held: int,
    rate: float,
    answers: int,
) -> Held:
    names = list(devices)[:held]
    numbers = slots(held)
    generator = LoadGenerator(port, sockets_for(held))
    await generator.open()
    try:
        rss_before = rss_kib(bridge.pid)
        began = await send_paced(generator, names, numbers, rate)
        print(f"  sent {held} push requests in {time.perf_counter() - began:.0f} s", flush=True)

        def settled() -> bool:
            # Every request is either held on its own long-poll or was answered already
            # (an answer here means the backend could not keep up: it is reported).
            now_held = metric(metrics_url, "openmfa_radius_held_requests")
            answered = len(generator.replies)
            return now_held + answered >= held and established_to(procs.backend_port) >= now_held

        deadline = time.monotonic() + 600
        while not settled():
            procs.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit("the requests were not all held within 600 s")
            await asyncio.sleep(0.5)
        if generator.replies:
            codes: dict[int, int] = {}
            for code, _ in generator.replies.values():
                codes[code] = codes.get(code, 0) + 1
            print(f"  warning: {len(generator.replies)} answered before any approval: {codes}")
        run_seconds = time.perf_counter() - began
        await asyncio.sleep(2)  # let the allocator settle before reading RSS
        rss_held = rss_kib(bridge.pid)
        connections = established_to(procs.backend_port)
        held_now = int(metric(metrics_url, "openmfa_radius_held_requests"))
        print(f"  {held_now} requests held after {run_seconds:.0f} s", flush=True)

        # (c) answer some of them, one at a time, timing answer -> Access-Accept.
        answered = await answer_held(
            generator, procs.backend_url, devices, names, numbers, held, answers
        )
    finally:
        generator.close()
    return Held(
        run_seconds,
        rss_before,
        rss_held,
        held_now,
        connections,
        answered.latencies,
        answered.answer_http,
        answered.after_commit,
        answered.accepted,
    )


# -- (d) FreeRADIUS -------------------------------------------------------------------------------


async def bench_freeradius_python(port: int, requests: int, window: int) -> Run:
    numbers = slots(window)
    per_slot: dict[int, list[bytes]] = {slot: [] for slot in numbers}
    for index in range(requests):
        slot = numbers[index % window]
        ident = identifier(slot, len(per_slot[slot]))
        per_slot[slot].append(access_request(ident, "bench", b"bench-password"))
    generator = LoadGenerator(port, sockets_for(window))
    await generator.open()
    try:
        return await generator.pipeline(per_slot, stall=5.0)
    finally:
        generator.close()


def bench_freeradius_radclient(port: int, requests: int, parallel: int, work: Path) -> float:
    """Requests per second as radclient sends them (``-c`` copies, ``-p`` in parallel)."""
    request_file = work / "pap.txt"
    request_file.write_text(
        'User-Name = "bench"\nUser-Password = "bench-password"\nMessage-Authenticator = 0x00\n'
    )
    began = time.perf_counter()
    result = subprocess.run(
        [
            "radclient",
            "-q",
            "-s",
            "-c",
            str(requests),
            "-p",
            str(parallel),
            "-f",
            str(request_file),
            f"127.0.0.1:{port}",
            "auth",
            SECRET.decode(),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    seconds = time.perf_counter() - began
    accepted = 0
    for line in (result.stdout + result.stderr).splitlines():
        if line.strip().startswith("Accepted"):
            accepted = int(line.rsplit(":", 1)[1])
    return accepted / seconds


# -- main -----------------------------------------------------------------------------------------


def _ms(values: Sequence[float], fraction: float) -> str:
    return f"{percentile(values, fraction) * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000, help="also the held requests")
    parser.add_argument("--home", type=Path, help="keep / reuse the populated data directory")
    parser.add_argument("--window", type=int, default=128, help="requests in flight for (a)")
    parser.add_argument("--rate", type=float, default=50.0, help="push requests/s sent for (b)")
    parser.add_argument("--answers", type=int, default=300, help="answers timed for (c)")
    parser.add_argument("--pap-requests", type=int, default=100_000)
    parser.add_argument("--skip-freeradius", action="store_true")
    parser.add_argument("--only-codes", action="store_true", help="run (a) (and (e)) only")
    parser.add_argument("--radsec", action="store_true", help="also run (e): (a) over RadSec")
    parser.add_argument("--radsec-connections", type=int, default=4, help="TLS connections for (e)")
    parser.add_argument(
        "--long-poll-seconds",
        type=float,
        default=600.0,
        help="long-poll slice for (b): the backend's long_poll_max_seconds is raised to match "
        "(600: one request per held push for its whole life; 50 is the bridge's default)",
    )
    args = parser.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="openmfa-radius-bench-"))
    data = prepare(home, args.users)
    devices: dict[str, list[str]] = dict(list(data["devices"].items())[: args.users])
    procs = Processes(home, long_poll=args.long_poll_seconds)
    factory: Any
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    try:
        procs.start_backend()

        # (a)
        udp, metrics_port = free_port(socket.SOCK_DGRAM), free_port()
        bridge = procs.start_bridge(data["token"], udp, metrics_port)
        backend_pid = procs.started[0].pid
        cpu_before = cpu_seconds(bridge.pid)
        backend_before = cpu_seconds(backend_pid)
        with asyncio.Runner(loop_factory=factory) as runner:
            run = runner.run(bench_codes(udp, devices, args.window))
        cpu = cpu_seconds(bridge.pid) - cpu_before
        backend_cpu = cpu_seconds(backend_pid) - backend_before
        accepts = run.codes.get(codec.ACCESS_ACCEPT, 0)
        print(
            f"(a) password,code: {run.sent} requests in {run.seconds:.2f} s, {args.window} in "
            f"flight; {accepts} accepted = {accepts / run.seconds:,.0f}/s; replies by code "
            f"{run.codes}, lost {run.lost}, retransmitted {run.retransmitted}; latency p50 "
            f"{_ms(run.latencies, 0.5)}, p99 "
            f"{_ms(run.latencies, 0.99)}; CPU per request: bridge "
            f"{cpu / max(1, run.sent) * 1e6:.0f} µs, backend "
            f"{backend_cpu / max(1, run.sent) * 1e6:.0f} µs",
            flush=True,
        )
        procs.stop(bridge)

        # (e)
        if args.radsec:
            from backend.domain import totp

            spent = totp.time_step(datetime.now(UTC))
            arguments, context, fingerprint = radsec_files(home)
            bind_certificate(home, fingerprint)
            udp, metrics_port = free_port(socket.SOCK_DGRAM), free_port()
            bridge = procs.start_bridge(data["token"], udp, metrics_port, arguments)
            tcp = int(arguments[1].rsplit(":", 1)[1])
            with asyncio.Runner(loop_factory=factory) as runner:
                cpu_before = cpu_seconds(bridge.pid)
                backend_before = cpu_seconds(backend_pid)
                radsec = runner.run(
                    bench_codes_radsec(
                        tcp, devices, args.window, args.radsec_connections, context, spent
                    )
                )
            cpu = cpu_seconds(bridge.pid) - cpu_before
            backend_cpu = cpu_seconds(backend_pid) - backend_before
            accepts = radsec.codes.get(codec.ACCESS_ACCEPT, 0)
            print(
                f"(e) password,code over RadSec: {radsec.sent} requests in "
                f"{radsec.seconds:.2f} s on {args.radsec_connections} TLS connections, "
                f"{args.window} in flight; {accepts} accepted = {accepts / radsec.seconds:,.0f}/s; "
                f"replies by code {radsec.codes}, lost {radsec.lost}; latency p50 "
                f"{_ms(radsec.latencies, 0.5)}, p99 {_ms(radsec.latencies, 0.99)}; CPU per "
                f"request: bridge {cpu / max(1, radsec.sent) * 1e6:.0f} µs, backend "
                f"{backend_cpu / max(1, radsec.sent) * 1e6:.0f} µs",
                flush=True,
            )
            procs.stop(bridge)
        if args.only_codes:
            return

        # (b) and (c), on a fresh bridge process so its RSS starts clean
        udp, metrics_port = free_port(socket.SOCK_DGRAM), free_port()
        bridge = procs.start_bridge(data["token"], udp, metrics_port)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        with asyncio.Runner(loop_factory=factory) as runner:
            held = runner.run(
                bench_held(
                    procs, bridge, udp, metrics_url, devices, len(devices), args.rate, args.answers
                )
            )
        per_held = (held.rss_held_kib - held.rss_before_kib) * 1024 / max(1, held.held)
        print(
            f"(b) held: {held.held} push requests held at once ({held.connections} backend "
            f"connections), reached in {held.run_seconds:.0f} s; bridge RSS "
            f"{held.rss_before_kib / 1024:.1f} MiB -> {held.rss_held_kib / 1024:.1f} MiB = "
            f"{per_held / 1024:.1f} KiB per held request",
            flush=True,
        )
        print(
            f"(c) answer -> Access-Accept with {held.held} held: {held.accepted}/"
            f"{len(held.answer_latencies)} accepted; p50 {_ms(held.answer_latencies, 0.5)}, "
            f"p99 {_ms(held.answer_latencies, 0.99)}, max "
            f"{max(held.answer_latencies) * 1000:.1f} ms (the phone's answer request alone: "
            f"p50 {_ms(held.answer_http, 0.5)}, p99 {_ms(held.answer_http, 0.99)}; the "
            f"Access-Accept after the phone had its answer back: p50 "
            f"{_ms(held.after_commit, 0.5)}, p99 {_ms(held.after_commit, 0.99)})",
            flush=True,
        )
        stopped = procs.stop(bridge)
        print(f"    bridge stopped with {held.held} held in {stopped:.1f} s")
        procs.stop_all()

        # (d)
        if not args.skip_freeradius:
            from tests.support.freeradius import FreeRadius, free_udp_port

            port = free_udp_port()
            with FreeRadius.upstream(
                port,
                users={"bench": "bench-password"},
                secret=SECRET.decode(),
                debug=False,
                directory=home / "freeradius",
            ):
                with asyncio.Runner(loop_factory=factory) as runner:
                    pap = runner.run(bench_freeradius_python(port, args.pap_requests, 256))
                rate = pap.codes.get(codec.ACCESS_ACCEPT, 0) / pap.seconds
                print(
                    f"(d) FreeRADIUS PAP, Python load generator: {rate:,.0f}/s "
                    f"(replies {pap.codes}, lost {pap.lost}, retransmitted "
                    f"{pap.retransmitted}; p50 {_ms(pap.latencies, 0.5)}, "
                    f"p99 {_ms(pap.latencies, 0.99)})",
                    flush=True,
                )
                if shutil.which("radclient"):
                    rate = bench_freeradius_radclient(port, args.pap_requests, 256, home)
                    print(f"(d) FreeRADIUS PAP, radclient -p 256: {rate:,.0f}/s", flush=True)
    finally:
        procs.stop_all()
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
