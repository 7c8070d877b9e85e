"""``password,code`` through RADIUS with ``--primary ldap`` next to ``local`` and ``none``,
and one dead domain controller next to OTP-only traffic.

One backend (`openmfa run`, RADIUS off, pinned to CPU 0), one standalone bridge (`openmfa
radius`, pinned to CPU 1), a throw-away OpenLDAP (tests/support/slapd.py: LDAPS with its own
CA) and the load generator in this process (asyncio, one UDP socket per concurrent request).
Every request is `password,<fresh TOTP code>` for a user of its own (an OATH token each), so
each one is a full primary check plus a code check with its audit rows. Figures printed:

(a) per primary (none, local, ldap): requests per second, p50 / p99 latency, accepted;
    `none`: the gateway checked the password; `local`: argon2id in the backend's pool;
    `ldap`: the backend finds the user with the service account and binds as them (a new
    TLS connection per bind) in the directory's thread pool;
(b) a dead DC: a second directory whose only server is a black hole (accepts TCP, never
    answers; 60 s timeouts). While ``--stuck`` password checks of its users hang, the same
    OTP-only load as in (a) runs for other users; its rate and p99 against (a)'s show whether
    the hung binds hold anything else up.

    python bench/radius_primary.py [--users 300] [--window 16] [--stuck 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# This file's own directory comes first on sys.path when it runs as a script, and a module
# here could shadow a package of the same name: put the repository first instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench._http import percentile  # noqa: E402
from bench._process import EXE, free_port, start_server, stop, wait_until  # noqa: E402
from radius_bridge.protocol import packet as codec  # noqa: E402

SECRET = "bench-radius-secret-0"  # noqa: S105 - a throw-away bench secret
PASSWORD = "bench-local-Passw0rd"  # noqa: S105 - the bench users' local password
#: client name -> (source address, primary, directory)
CLIENTS = {
    "p-none": ("127.0.0.2", "none", None),
    "p-local": ("127.0.0.3", "local", None),
    "p-ldap": ("127.0.0.4", "ldap", "slapd"),
    "p-dead": ("127.0.0.5", "ldap", "dead"),
    "p-none2": ("127.0.0.6", "none", None),  # (b), users of its own
}


class BlackHole:
    """Accepts TCP connections on 127.0.0.1 and never answers, until closed."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self.held:
            conn.close()


async def populate(
    home: Path, users: int, slapd: Any, ca_pem: str, uids: list[str], dead_port: int
) -> dict[str, Any]:
    """Clients, directories and users with an OATH token each; the seeds by user."""
    from sqlalchemy import update

    from backend.config import load_settings
    from backend.directory.settings import DirectorySettings
    from backend.domain.radius import ClientChanges
    from backend.domain.stepup import ADMINISTRATOR
    from backend.services import Services
    from backend.services.context import Actor
    from backend.store.tables import users_t

    admin = Actor("bench")
    services = await Services.open(load_settings(home=home))
    seeds: dict[str, str] = {}
    groups: dict[str, list[str]] = {
        "none": [],
        "local": [],
        "ldap": [],
        "dead": [],
        "none2": [],
        "warm": [],
    }
    try:
        token = await services.tokens.create(admin, "bench-bridge", scope="bridge")
        await services.policies.set(admin, "otp_max_failures", "100")
        ldap = await services.directories.add(
            admin,
            DirectorySettings(
                name="slapd",
                urls=(slapd.url,),
                ca_pem=ca_pem,
                bind_dn=slapd.bind_dn,
                base_dn=slapd.base_dn,
                kind="ldap",
            ),
            slapd.bind_password,
        )
        dead = await services.directories.add(
            admin,
            DirectorySettings(
                name="dead",
                urls=(f"ldaps://127.0.0.1:{dead_port}",),
                bind_dn="cn=svc,dc=dead",
                base_dn="dc=dead",
                kind="ldap",
                connect_timeout=60.0,
                search_timeout=600.0,
            ),
            "service-password",
        )
        for name, (address, primary, directory) in CLIENTS.items():
            await services.radius_clients.add(
                admin,
                name,
                ClientChanges(
                    addresses=[address],
                    secret=SECRET,
                    mode="otp",
                    primary=primary,
                    directory=directory,
                ),
            )

        async def user(name: str, group: str, password: str | None = None) -> None:
            await services.users.add(admin, name, password=password)
            oath = await services.activation.enrol_oath(admin, ADMINISTRATOR, name)
            seeds[name] = oath.seed
            groups[group].append(name)

        for i in range(users):
            await user(f"n{i:05d}", "none")
            await user(f"m{i:05d}", "none2")
            await user(f"k{i:05d}", "none2")
            await user(f"w{i:05d}", "warm")
            await user(f"l{i:05d}", "local", PASSWORD)
            await user(f"d{i:05d}", "dead")
        for uid in uids:
            await user(uid, "ldap")
        async with services.db.write() as conn:
            for uid in uids:
                await conn.execute(
                    update(users_t)
                    .where(users_t.c.name_key == uid)
                    .values(directory_id=ldap.id, external_id=slapd.entry_uuid(uid))
                )
            for name in groups["dead"]:
                await conn.execute(
                    update(users_t)
                    .where(users_t.c.name_key == name)
                    .values(
                        directory_id=dead.id, external_id=f"00000000-0000-0000-0000-{name[1:]:0>12}"
                    )
                )
    finally:
        await services.close()
    return {"token": token, "seeds": seeds, "groups": groups}


class Gateway(asyncio.DatagramProtocol):
    """One UDP socket from one source address; one request outstanding at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.reply: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(data)

    async def ask(self, packet: bytes, wait: float) -> bytes | None:
        assert self.transport is not None
        self.reply = asyncio.get_running_loop().create_future()
        self.transport.sendto(packet)
        try:
            return await asyncio.wait_for(self.reply, wait)
        except TimeoutError:
            return None


def request(identifier: int, user: str, password: str) -> bytes:
    attributes = codec.encode_attribute(codec.USER_NAME, user.encode()) + codec.encode_attribute(
        codec.NAS_IDENTIFIER, b"bench-nas"
    )
    return codec.encode_request(identifier, SECRET.encode(), attributes, password.encode())


async def load(
    port: int, source: str, names: list[str], seeds: dict[str, str], password: str, window: int
) -> dict[str, float]:
    """``password,code`` for every name, ``window`` at a time: rate, p50, p99, accepted."""
    from backend.domain import totp

    loop = asyncio.get_running_loop()
    gateways = []
    for _ in range(window):
        _, gateway = await loop.create_datagram_endpoint(
            Gateway, local_addr=(source, 0), remote_addr=("127.0.0.1", port)
        )
        gateways.append(gateway)
    queue = list(reversed(names))
    latencies: list[float] = []
    accepted = 0

    async def worker(gateway: Gateway, index: int) -> None:
        nonlocal accepted
        n = 0
        while queue:
            name = queue.pop()
            code = totp.current_code(seeds[name], datetime.now(UTC))
            began = time.perf_counter()
            reply = await gateway.ask(
                request((index + n * 64) % 256, name, f"{password},{code}"), 15
            )
            latencies.append(time.perf_counter() - began)
            n += 1
            if reply is not None and reply[0] == codec.ACCESS_ACCEPT:
                accepted += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(g, i) for i, g in enumerate(gateways)))
    seconds = time.perf_counter() - began
    for gateway in gateways:
        assert gateway.transport is not None
        gateway.transport.close()
    return {
        "rate": len(names) / seconds,
        "p50": percentile(latencies, 0.50) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "accepted": accepted,
        "requests": len(names),
    }


def start_bridge(home: Path, backend_url: str, token: str, udp: int) -> subprocess.Popen[bytes]:
    token_file = home / "bridge.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    log_path = home / "bridge.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                str(EXE),
                "radius",
                "--backend",
                backend_url,
                "--token-file",
                str(token_file),
                "--listen",
                f"127.0.0.1:{udp}",
                "--metrics-listen",
                f"127.0.0.1:{free_port()}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_until(
        lambda: f"RADIUS client list loaded: {len(CLIENTS)}" in log_path.read_text(),
        30,
        "the bridge to load its clients",
    )
    return process


@contextlib.contextmanager
def running(home: Path, token: str) -> Iterator[int]:
    """Backend and bridge; yields the bridge's UDP port."""
    backend_port = free_port()
    backend = start_server(home, backend_port, log=home / "backend.log", timeout=60)
    udp = free_port(socket.SOCK_DGRAM)
    bridge = None
    try:
        bridge = start_bridge(home, f"http://127.0.0.1:{backend_port}", token, udp)
        yield udp
    finally:
        if bridge is not None:
            stop(bridge)
        stop(backend)


def line(label: str, figures: dict[str, float]) -> str:
    return (
        f"  {label:<34} {figures['rate']:7.0f} req/s   p50 {figures['p50']:6.1f} ms   "
        f"p99 {figures['p99']:6.1f} ms   "
        f"accepted {figures['accepted']:.0f}/{figures['requests']:.0f}"
    )


async def measure(udp: int, data: dict[str, Any], window: int, stuck: int) -> None:
    seeds, groups = data["seeds"], data["groups"]
    # Warm-up, not reported: the first few hundred requests of a fresh backend and bridge
    # (connections, caches) ran at a fifth of the later rate.
    await load(udp, CLIENTS["p-none"][0], groups["warm"], seeds, "x", window)
    print(f"(a) password,code through RADIUS, {window} concurrent requests:")
    results = {}
    for group, client, password in (
        ("none", "p-none", "ignored-by-the-bridge"),
        ("local", "p-local", PASSWORD),
        ("ldap", "p-ldap", data["ldap_password"]),
    ):
        source = CLIENTS[client][0]
        results[group] = await load(udp, source, groups[group], seeds, password, window)
        print(line(f"--primary {group}", results[group]), flush=True)

    print(f"(b) {stuck} password checks hanging on a dead DC, OTP-only traffic meanwhile:")
    # Right before, the same load for other users without them: the machine is shared, so
    # only figures taken a moment apart compare.
    half = len(groups["none2"]) // 2
    source = CLIENTS["p-none2"][0]
    before = await load(udp, source, groups["none2"][:half], seeds, "x", window)
    loop = asyncio.get_running_loop()
    hung: list[Gateway] = []
    waits = []
    for i, name in enumerate(groups["dead"][:stuck]):
        _, gateway = await loop.create_datagram_endpoint(
            Gateway, local_addr=(CLIENTS["p-dead"][0], 0), remote_addr=("127.0.0.1", udp)
        )
        hung.append(gateway)
        waits.append(asyncio.ensure_future(gateway.ask(request(i, name, "x,123456"), 30)))
    await asyncio.sleep(0.5)  # a bench, not a test: let the binds reach the black hole
    during = await load(udp, source, groups["none2"][half:], seeds, "x", window)
    still = sum(1 for w in waits if not w.done())
    print(line("OTP-only, just before", before))
    print(line("OTP-only, dead DC hanging", during))
    print(f"  password checks on the dead DC still hanging when the OTP run ended: {still}/{stuck}")
    replies = await asyncio.gather(*waits)
    rejected = sum(1 for r in replies if r is not None and r[0] == codec.ACCESS_REJECT)
    print(f"  ... then rejected (bridge's backend timeout, 10 s): {rejected}/{stuck}")
    for gateway in hung:
        assert gateway.transport is not None
        gateway.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=300, help="users per primary (default 300)")
    parser.add_argument("--window", type=int, default=16, help="concurrent requests (default 16)")
    parser.add_argument("--stuck", type=int, default=8, help="checks hung on the dead DC")
    args = parser.parse_args()

    from backend.store import migrations
    from tests.support import slapd as slapd_support

    print(f"machine: {os.cpu_count()} CPUs; backend on CPU 0, bridge on CPU 1")
    with tempfile.TemporaryDirectory(prefix="openmfa-bench-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        migrations.upgrade(f"sqlite+aiosqlite:///{home / 'openmfa.db'}")
        hole = BlackHole()
        with slapd_support.running_slapd(Path(tmp) / "slapd") as slapd:
            uids = slapd.bulk_add(args.users)
            print(f"setting up {args.users} users per primary ...", flush=True)
            started = time.perf_counter()
            ca_pem = Path(slapd.ca_file).read_text()
            data = asyncio.run(populate(home, args.users, slapd, ca_pem, uids, hole.port))
            data["ldap_password"] = slapd_support.BULK_PASSWORD
            print(f"set up in {time.perf_counter() - started:.0f} s")
            try:
                with running(home, data["token"]) as udp:
                    asyncio.run(measure(udp, data, args.window, args.stuck))
            finally:
                hole.close()


if __name__ == "__main__":
    main()
