"""Primary ldap over real RADIUS: pyrad and radclient as gateways, the bridge over UDP, the
backend over HTTP, the LDAP adapter against a real socket.

Here: a directory whose only server is a black hole (accepts TCP, never answers) with long
timeouts. A password check for its users hangs in the directory's own thread pool while the
OTP-only traffic of another client is answered; then the black hole closes and the hung check
ends in a Reject with the audit reason, although its client's failmode is ``safe``. The
checks against a real Samba DC are in tests/test_directory_primary_samba.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pyrad import packet as pyrad_packet
from sqlalchemy import update

from backend.directory.settings import DirectorySettings
from backend.store.tables import users_t
from tests.support.api import ADMIN
from tests.support.bridge import RadiusLab
from tests.support.process import wait_for

SECRET = "bridge-test-secret-0"
ACCEPT, REJECT = pyrad_packet.AccessAccept, pyrad_packet.AccessReject


class BlackHole:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word, until
    :meth:`close` (then every connection ends and new ones are refused)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._held.append(conn)

    @property
    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the blocked accept() (Linux)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            held, self._held = self._held, []
        for conn in held:
            conn.close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadiusLab]:
    with RadiusLab(tmp_path_factory.mktemp("radius-lab")) as running:
        yield running


@pytest.fixture(autouse=True)
def _close_clients(lab: RadiusLab) -> Iterator[None]:
    yield
    lab.close_pyrad_clients()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


def access_request(client: Any, user: str, password: str) -> Any:
    request = client.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name=user)
    request["User-Password"] = request.PwCrypt(password)
    return request


def tie_to_directory(lab: RadiusLab, name: str, directory_id: int) -> None:
    """Make ``name`` a user of the directory, as a sync would (tied by a stable id)."""

    async def tie() -> None:
        async with lab.api.services.db.write() as conn:
            await conn.execute(
                update(users_t)
                .where(users_t.c.name_key == name)
                .values(directory_id=directory_id, external_id=str(uuid.uuid4()))
            )

    lab.api.run(tie())


def test_a_dead_dc_does_not_stall_other_clients_otp_traffic(
    lab: RadiusLab, black_hole: BlackHole
) -> None:
    view = lab.api.run(
        lab.api.services.directories.add(
            ADMIN,
            DirectorySettings(
                name="deaddc",
                urls=(f"ldaps://127.0.0.1:{black_hole.port}",),
                bind_dn="CN=svc,DC=dead,DC=example",
                base_dn="DC=dead,DC=example",
                kind="ad",
                connect_timeout=60.0,
                search_timeout=600.0,
            ),
            "service-account-password",
        )
    )
    lab.unenrolled_user("stuck")
    tie_to_directory(lab, "stuck", view.id)
    lab.client(
        "vpn-ldap",
        ["127.0.0.61"],
        SECRET,
        mode="otp",
        primary="ldap",
        directory="deaddc",
        failmode="safe",  # concerns the second factor only: a dead directory still rejects
        unenrolled="allow",
    )
    lab.client("otp-only", ["127.0.0.62"], SECRET, mode="otp")
    phones = {name: lab.user(name) for name in ("olga", "oskar", "otto")}

    slow_gateway = lab.pyrad("127.0.0.61", SECRET, timeout=60, retries=1)
    fast_gateway = lab.pyrad("127.0.0.62", SECRET, timeout=10, retries=1)
    with ThreadPoolExecutor(max_workers=1) as pool:
        stuck = pool.submit(
            slow_gateway.SendPacket, access_request(slow_gateway, "stuck", "Passw0rd!,123456")
        )
        # The bind is under way once the directory's server has a connection.
        wait_for(lambda: black_hole.held >= 1, 10, "the LDAP connection to the black hole")
        answers = []
        for name, phone in phones.items():
            answers.append(
                fast_gateway.SendPacket(access_request(fast_gateway, name, phone.code()))
            )
            answers.append(fast_gateway.SendPacket(access_request(fast_gateway, name, "000000")))
        # Every code check was answered while the password check still hangs.
        assert not stuck.done()
        assert [a.code for a in answers] == [ACCEPT, REJECT] * len(phones)
        black_hole.close()
        reply = stuck.result(timeout=30)
    assert reply.code == REJECT
    rows = lab.audit("stuck", "password.verify")
    assert [(r.result, r.detail.split(" (")[0]) for r in rows] == [
        ("reject", "directory deaddc: unavailable")
    ]
    assert "client vpn-ldap" in rows[0].detail
    # No fail-safe accept was recorded, and no code was checked for the stuck user.
    assert lab.audit("stuck", "radius.failsafe_accept") == []
    assert lab.audit("stuck", "otp.verify") == []
