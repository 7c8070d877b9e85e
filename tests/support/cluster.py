"""Several OpenMFA nodes on one PostgreSQL database, as an operator runs them (issue 18).

``NodeCluster`` makes a fresh database on the machine's PostgreSQL server, runs ``openmfa db
upgrade``, seals the server key into one shared key file, then starts N real ``openmfa run``
processes (own data directory, HTTP port and metrics port each; the built-in RADIUS bridge off
or on a port of its own) and standalone bridges (``openmfa radius --backend A --backend B``).
Nodes can be killed with SIGKILL, stopped with SIGTERM and started again; everything started is
stopped in :meth:`NodeCluster.close`.

Beside it: :class:`ApnsService` (the APNs fake on a loop thread, pushes counted per challenge),
:class:`Phone` (an app device made in bulk whose key the test holds, answering through any
node) and :class:`Gateway` (a RADIUS client on a few UDP sockets that sends, resends the same
bytes to another server, and collects replies without threads).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from radius_bridge.protocol import packet as codec
from tests.support.process import EXE, Cli, ServerProcess, free_port, stop_process, wait_for

PG_ADMIN_URL = os.environ.get(
    "OPENMFA_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
RADIUS_SECRET = "cluster-test-secret"
TOPIC = "org.openmfa.cluster"


def plain_url(url: str) -> str:
    """A SQLAlchemy ``postgresql+asyncpg://`` URL as libpq / asyncpg spell it."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _admin(admin_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(plain_url(admin_url), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(admin_url: str = PG_ADMIN_URL) -> str:
    """A new, empty database next to ``admin_url``'s; its URL."""
    name = f"openmfa_cluster_{secrets.token_hex(4)}"
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    return f"{admin_url.rsplit('/', 1)[0]}/{name}"


def drop_database(url: str, admin_url: str = PG_ADMIN_URL) -> None:
    """Drop the database of ``url`` (its connections closed first)."""
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def query(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of one SQL statement on the cluster's database, as dicts (asyncpg)."""
    import asyncpg

    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(plain_url(url), timeout=5)
        try:
            return [dict(row) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


# -- the nodes ----------------------------------------------------------------------------------


class Node:
    """One ``openmfa run`` process of the cluster."""

    def __init__(self, name: str, home: Path, env: Mapping[str, str], radius: bool) -> None:
        self.name = name
        self.home = home
        self.port = free_port()
        self.metrics_port = free_port()
        self.radius_port = free_udp_port() if radius else 0
        self.env = {
            **env,
            "OPENMFA_NODE_NAME": name,
            "OPENMFA_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
            "OPENMFA_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}",
            "OPENMFA_RADIUS_PORT": str(self.radius_port),
            "OPENMFA_RADIUS_HOST": "127.0.0.1",
        }
        self.server = ServerProcess(home, self.port, self.env)
        self.url = self.server.url
        self.starts = 0

    def start(self, timeout: float = 60) -> None:
        """Start the process and wait until ``/readyz`` answers 200 (the database is
        reachable); earlier runs' logs are kept under a numbered name."""
        if self.starts:
            for path in (self.server.stdout_path, self.server.stderr_path):
                if path.exists():
                    path.rename(path.with_name(f"{path.name}.{self.starts}"))
        self.starts += 1
        self.server.start(timeout)
        wait_for(self.ready, timeout, f"node {self.name} to answer /readyz", every=0.1)

    def ready(self) -> bool:
        """``/readyz`` answers 200."""
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def running(self) -> bool:
        return self.server.running()

    def kill9(self) -> None:
        """SIGKILL, as a crash or the OOM killer does: no clean-up of any kind."""
        assert self.server.process is not None
        self.server.process.send_signal(signal.SIGKILL)
        self.server.process.wait(timeout=15)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM (a drain for maintenance); its exit status."""
        return self.server.terminate(timeout)

    def stop(self) -> None:
        """Gone, whatever it takes (the clean-up path)."""
        self.server.kill()

    @property
    def log(self) -> str:
        return self.server.log

    def metric(self, name: str) -> float:
        """One value from this node's ``/metrics`` (summed over its labels), 0 if absent."""
        return read_metric(f"http://127.0.0.1:{self.metrics_port}/metrics", name)


class StandaloneBridge:
    """``openmfa radius --backend URL ...`` on a UDP port of its own."""

    def __init__(self, home: Path, name: str, backends: Sequence[str], token_file: Path) -> None:
        self.name = name
        self.udp = free_udp_port()
        self.metrics_port = free_port()
        self.log_path = home / f"bridge-{name}.log"
        self.command = [str(EXE), "radius"]
        for backend in backends:
            self.command += ["--backend", backend]
        self.command += [
            "--token-file",
            str(token_file),
            "--listen",
            f"127.0.0.1:{self.udp}",
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            "--refresh-seconds",
            "0.5",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        """Start it and wait until it has loaded its client list."""
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

        def loaded() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"bridge {self.name} exited:\n{self.log}")
            return "RADIUS client list loaded" in self.log

        wait_for(
            loaded, timeout, f"bridge {self.name} to load its clients", detail=lambda: self.log
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def held(self) -> float:
        """Requests it holds open right now (its gauge)."""
        return self.metric("openmfa_radius_held_requests")

    def metric(self, name: str) -> float:
        return read_metric(f"http://127.0.0.1:{self.metrics_port}/metrics", name)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=15)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=15)


def free_udp_port() -> int:
    """A UDP port nobody has bound on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_metric(url: str, name: str) -> float:
    """Sum of the samples of metric ``name`` at a Prometheus text endpoint (0 if absent or
    unreachable)."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.TransportError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class NodeCluster:
    """N nodes on one fresh PostgreSQL database with one settings set and one server key.

    ``with NodeCluster(tmp_path, nodes=2, env=apns.env) as cluster:`` — the database is
    created, migrated and given the key before any node starts (nodes starting at once on an
    empty database would each make a key). ``cluster.cli`` runs ``openmfa`` commands on the
    same database (in this process).
    """

    base: Path
    nodes_wanted: int = 2
    env: Mapping[str, str] = field(default_factory=dict)
    radius_on: Sequence[int] = ()  # indexes of the nodes whose built-in bridge listens
    database_url: str = ""  # given: used as is (e.g. a PgCluster's multi-host URL)
    admin_url: str = PG_ADMIN_URL
    nodes: list[Node] = field(default_factory=list)
    bridges: list[StandaloneBridge] = field(default_factory=list)
    _created_database: bool = False

    def __post_init__(self) -> None:
        if not self.database_url:
            self.database_url = create_database(self.admin_url)
            self._created_database = True
        self.key_file = self.base / "server.key"
        self.shared_env = {
            "OPENMFA_DATABASE_URL": self.database_url,
            "OPENMFA_KEY_FILE": str(self.key_file),
            "OPENMFA_LOG_FORMAT": "json",
            # Death is noticed within a few seconds in tests; production defaults are 5 / 20.
            "OPENMFA_NODE_HEARTBEAT_SECONDS": "0.5",
            "OPENMFA_NODE_TIMEOUT_SECONDS": "2",
            **self.env,
        }
        admin_home = self.base / "admin"
        admin_home.mkdir(parents=True, exist_ok=True)
        self.cli = Cli(admin_home, **self.shared_env)

    # -- life cycle -----------------------------------------------------------------------------

    def __enter__(self) -> NodeCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Migrate, make the key, start every node (one after another)."""
        self.cli("db", "upgrade")
        # Sealing a RADIUS secret makes the key; the client is the gateway of every scenario.
        self.cli(
            "client",
            "add",
            "vpn",
            "--address",
            "127.0.0.1",
            "--secret-stdin",
            "--mode",
            "push",
            "--primary",
            "none",
            "--failmode",
            "secure",
            "--push-timeout",
            "300",
            stdin=RADIUS_SECRET + "\n",
        )
        # Pushes wait long enough for the slowest scenario (1,000 held, then answered).
        self.cli("policy", "set", "challenge_ttl_seconds", "300")
        for index in range(self.nodes_wanted):
            node = Node(
                f"node-{chr(ord('a') + index)}",
                self.base / f"node-{index}",
                self.shared_env,
                radius=index in self.radius_on,
            )
            self.nodes.append(node)
            node.start()

    def close(self) -> None:
        """Stop every bridge and node (SIGTERM, then SIGKILL), drop the database."""
        try:
            for bridge in self.bridges:
                bridge.stop()
            for node in self.nodes:
                node.stop()
        finally:
            if self._created_database:
                drop_database(self.database_url, self.admin_url)

    # -- parts ----------------------------------------------------------------------------------

    def bridge(self, name: str, backends: Sequence[Node] | None = None) -> StandaloneBridge:
        """A started standalone bridge relaying to ``backends`` (all nodes by default)."""
        token_file = self.base / f"bridge-{name}.token"
        if not token_file.exists():
            token = self.cli("token", "create", f"bridge-{name}", "--scope", "bridge").stdout
            token_file.write_text(token.strip() + "\n")
            token_file.chmod(0o600)
        urls = [node.url for node in (backends if backends is not None else self.nodes)]
        bridge = StandaloneBridge(self.base, name, urls, token_file)
        self.bridges.append(bridge)
        bridge.start()
        return bridge

    def gateway_token(self, name: str = "gw") -> str:
        """A gateway-scope API token."""
        return self.cli("token", "create", name).stdout.strip()

    def policy(self, name: str, value: str) -> None:
        self.cli("policy", "set", name, value)

    def alive_nodes(self) -> list[dict[str, Any]]:
        """Rows of ``nodes`` that count as alive now (stopped_at NULL, seen recently)."""
        timeout = float(self.shared_env["OPENMFA_NODE_TIMEOUT_SECONDS"])
        return query(
            self.database_url,
            "SELECT * FROM nodes WHERE stopped_at IS NULL"
            " AND seen_at >= now() - make_interval(secs => $1)",
            timeout,
        )

    def phones(self, count: int, prefix: str = "u") -> list[Phone]:
        """``count`` users with an active iOS app device each, inserted in bulk (the ORM path
        takes ~28 ms a user); the test holds each device's key."""
        return asyncio.run(_bulk_phones(self, count, prefix))


# -- phones ---------------------------------------------------------------------------------------


@dataclass
class Phone:
    """An activated app device whose Ed25519 key the test holds."""

    user: str
    device_id: str
    private_key: bytes
    push_token: str

    def _signed(self, method: str, target: str, body: bytes) -> dict[str, str]:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from backend.domain import signing

        key = Ed25519PrivateKey.from_private_bytes(self.private_key)
        headers = signing.sign_request(key, self.device_id, method, target, body, int(time.time()))
        if body:
            headers["content-type"] = "application/json"
        return headers

    def pending(self, http: httpx.Client) -> list[str]:
        """Ids of the challenges waiting for this phone, asked of ``http``'s node."""
        target = "/app/v1/challenges"
        response = http.get(target, headers=self._signed("GET", target, b""))
        response.raise_for_status()
        return [str(c["id"]) for c in response.json()["challenges"]]

    def answer(self, http: httpx.Client, challenge_id: str, answer: str = "approve") -> str:
        """Answer through ``http``'s node, signed as the app does; the new state."""
        target = f"/app/v1/challenges/{challenge_id}/answer"
        body = json.dumps({"answer": answer}).encode()
        response = http.post(target, content=body, headers=self._signed("POST", target, body))
        if response.status_code != 200:
            raise AssertionError(f"answer {challenge_id}: {response.status_code} {response.text}")
        return str(response.json()["state"])


async def _bulk_phones(cluster: NodeCluster, count: int, prefix: str) -> list[Phone]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from backend.config import load_settings
    from backend.services import Services
    from backend.store.tables import devices_t, now, users_t

    settings = load_settings(
        config_file=None,
        home=cluster.cli.home,
        database_url=cluster.database_url,
        key_file=cluster.key_file,
    )
    keys = [Ed25519PrivateKey.generate() for _ in range(count)]
    phones = [
        Phone(
            user=f"{prefix}{i:05d}",
            device_id=f"dev_{prefix}{i:05d}_{secrets.token_hex(3)}",
            private_key=key.private_bytes_raw(),
            push_token=secrets.token_hex(32),
        )
        for i, key in enumerate(keys)
    ]
    services = await Services.open(settings, push=False)
    try:
        created = now()
        async with services.db.write() as conn:
            await conn.execute(
                users_t.insert(),
                [{"name_key": p.user, "name": p.user, "created_at": created} for p in phones],
            )
            ids = dict(
                (
                    await conn.execute(
                        users_t.select()
                        .with_only_columns(users_t.c.name_key, users_t.c.id)
                        .where(users_t.c.name_key.like(f"{prefix}%"))
                    )
                ).all()
            )
            await conn.execute(
                devices_t.insert(),
                [
                    {
                        "id": phone.device_id,
                        "user_id": ids[phone.user],
                        "kind": "app",
                        "platform": "ios",
                        "public_key": key.public_key().public_bytes_raw(),
                        "push_token": phone.push_token,
                        "seed_enc": b"push only: no seed",
                        "state": "active",
                        "created_at": created,
                        "activated_at": created - timedelta(seconds=1),
                    }
                    for phone, key in zip(phones, keys, strict=True)
                ],
            )
    finally:
        await services.close()
    return phones


# -- the APNs fake --------------------------------------------------------------------------------


class ApnsService:
    """The APNs fake on a loop thread of this process; ``env`` points nodes at it.

    A push counts as *sent* when the fake answered it 200: a request whose connection died
    before the answer (its sender was killed) was never acknowledged to anyone.
    """

    def __init__(self, directory: Path) -> None:
        from tests.fakes.apns import ApnsFake, make_apns_key
        from tests.support.push_e2e import LoopThread

        self.loop = LoopThread()
        key = make_apns_key(directory / "apns-key")
        self.fake = ApnsFake(directory, key=key, topic=TOPIC)
        self.loop.run(self.fake.start())
        self.env = {
            "OPENMFA_APNS_KEY_FILE": str(key.p8_path),
            "OPENMFA_APNS_KEY_ID": key.key_id,
            "OPENMFA_APNS_TEAM_ID": key.team_id,
            "OPENMFA_APNS_TOPIC": TOPIC,
            "OPENMFA_APNS_URL": self.fake.url,
            "OPENMFA_APNS_CA_FILE": str(self.fake.ca_file),
        }

    def _requests(self) -> list[Any]:
        return list(self.fake.requests)

    def received(self) -> Counter[str]:
        """Push requests received per challenge id (answered or not)."""
        return Counter(str(r.payload.get("challenge_id")) for r in self._requests() if r.payload)

    def sent(self) -> Counter[str]:
        """Pushes answered 200 per challenge id."""
        return Counter(
            str(r.payload.get("challenge_id"))
            for r in self._requests()
            if r.payload and r.status == 200
        )

    def challenge_of(self) -> dict[str, str]:
        """Device token -> the challenge id of its latest push."""
        return {r.token: str(r.payload.get("challenge_id")) for r in self._requests() if r.payload}

    def open_connections(self) -> set[int]:
        """Numbers of the connections the fake has open now (ApnsRequest.connection)."""
        return {connection.number for connection in list(self.fake._connections)}

    def connections_of(self, challenge_ids: Iterable[str]) -> set[int]:
        """The connections the pushes of ``challenge_ids`` came in on."""
        wanted = set(challenge_ids)
        return {
            r.connection
            for r in self._requests()
            if r.payload and str(r.payload.get("challenge_id")) in wanted
        }

    def hold(self) -> None:
        """Keep answers back from now on (on the fake's loop)."""
        self.loop.loop.call_soon_threadsafe(self.fake.hold)

    def release(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.fake.release)

    def close(self) -> None:
        try:
            self.loop.run(self.fake.stop(check=False))
        finally:
            self.loop.close()


# -- the gateway ----------------------------------------------------------------------------------


@dataclass
class Sent:
    """One Access-Request as the gateway keeps it for retransmission."""

    user: str
    data: bytes
    sock: int
    ident: int


class Gateway:
    """A RADIUS client (a VPN gateway) on ``sockets`` UDP sockets of 127.0.0.1.

    Each socket carries at most 256 outstanding identifiers; :meth:`send` picks the next free
    (socket, identifier). Replies are collected by :meth:`collect` (non-blocking), so a test
    waits with ``wait_for(lambda: gateway.collect() >= n, ...)``.
    """

    def __init__(self, sockets: int = 4, secret: str = RADIUS_SECRET) -> None:
        self.secret = secret.encode()
        self.socks: list[socket.socket] = []
        for _ in range(sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            self.socks.append(sock)
        self.sent: list[Sent] = []
        self.replies: dict[tuple[int, int], int] = {}  # (socket, identifier) -> reply code

    def close(self) -> None:
        for sock in self.socks:
            sock.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, user: str, station: str = "198.51.100.7") -> Sent:
        """Build the next Access-Request for ``user`` (push mode: User-Name only)."""
        index = len(self.sent)
        sock, ident = divmod(index, 256)
        if sock >= len(self.socks):
            raise ValueError("more requests than sockets x 256")
        attributes = (
            codec.encode_attribute(codec.USER_NAME, user.encode())
            + codec.encode_attribute(codec.CALLING_STATION_ID, station.encode())
            + codec.encode_attribute(codec.NAS_IDENTIFIER, b"cluster-gw")
        )
        sent = Sent(user, codec.encode_request(ident, self.secret, attributes), sock, ident)
        self.sent.append(sent)
        return sent

    def send(self, sent: Sent, port: int) -> None:
        """Send (or resend: the same bytes) ``sent`` to the server on UDP ``port``."""
        self.socks[sent.sock].sendto(sent.data, ("127.0.0.1", port))

    def send_all(
        self, requests: Iterable[Sent], port: int, burst: int = 64, rate: float = 0
    ) -> None:
        """Send ``requests``, reading replies between bursts so no buffer overflows; with
        ``rate``, no more than that many a second (sign-ins arriving, not one burst)."""
        began = time.monotonic()
        for count, sent in enumerate(requests, 1):
            self.send(sent, port)
            if rate:
                # Pacing, not synchronisation: sign-ins arrive over time at a gateway.
                ahead = began + count / rate - time.monotonic()
                if ahead > 0:
                    self.collect()
                    time.sleep(ahead)
            elif count % burst == 0:
                self.collect()
                time.sleep(0.002)  # pacing: a server's socket queues only ~200 datagrams

    def send_windowed(
        self,
        requests: Sequence[Sent],
        port: int,
        absorbed: Callable[[], int],
        window: int,
        timeout: float,
    ) -> None:
        """Send ``requests`` keeping at most ``window`` of them not yet ``absorbed()`` (e.g.
        pushes seen at the push service): sign-ins arrive as fast as the nodes take them, on
        a quiet machine or a busy one, never so fast that the bridge's start timeout fails
        them."""
        deadline = time.monotonic() + timeout
        done = 0
        while done < len(requests):
            room = window - (done - absorbed())
            if room > 0:
                for sent in requests[done : done + room]:
                    self.send(sent, port)
                done = min(len(requests), done + room)
            elif time.monotonic() > deadline:
                raise AssertionError(f"only {absorbed()} of {done} requests taken in {timeout} s")
            self.collect()
            time.sleep(0.01)  # polling interval of the loop above

    def resend_unanswered(self, port: int) -> int:
        """Retransmit every request without a reply to ``port``, as a gateway does after its
        timeout; how many."""
        waiting = [s for s in self.sent if (s.sock, s.ident) not in self.replies]
        self.send_all(waiting, port)
        return len(waiting)

    def collect(self) -> int:
        """Read every reply queued now; the number of requests answered so far (after
        :meth:`close`, what was read before)."""
        while self.socks[0].fileno() >= 0:
            readable, _, _ = select.select(self.socks, [], [], 0)
            if not readable:
                return len(self.replies)
            for sock in readable:
                index = self.socks.index(sock)
                while True:
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        break
                    self.replies.setdefault((index, data[1]), data[0])
        return len(self.replies)

    def reply(self, sent: Sent) -> int | None:
        """The reply code for ``sent`` (codec.ACCESS_ACCEPT ...), None while unanswered."""
        self.collect()
        return self.replies.get((sent.sock, sent.ident))

    def codes(self) -> Counter[int]:
        self.collect()
        return Counter(self.replies.values())
