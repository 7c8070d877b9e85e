"""Database failover as a gateway sees it: ``openmfa run`` (with its built-in RADIUS bridge)
on a primary and a replica through the multi-host URL, RADIUS with radclient, the phone over
HTTP. While no server takes writes, a sign-in is answered by the client's failmode (secure:
Access-Reject, never an Accept); once the replica is promoted the node, never restarted,
serves the next sign-in. The time from the primary's death to that Access-Accept is printed
(``-s``) and kept as a user property.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from backend.authenticator.client import AppClient
from tests.support.freeradius import free_udp_port, radclient, radclient_binary
from tests.support.pg_cluster import running_pg_cluster
from tests.support.process import Cli, ServerProcess, free_port, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        radclient_binary() is None,
        reason="radclient not installed (apt-get install freeradius-utils)",
    ),
]
SECRET = "failover-test-secret"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def pending_id(device: AppClient, timeout: float) -> str:
    """The one push waiting on the phone; the phone's polls may meet a 503 meanwhile."""
    found: list[str] = []

    def one_pending() -> bool:
        try:
            pending = device.pending()
        except Exception:  # the node answered 503 (database switching): poll again
            return False
        found[:] = [str(item["id"]) for item in pending]
        return len(found) == 1

    wait_for(one_pending, timeout, "the push to reach the phone", every=0.1)
    return found[0]


def test_a_gateway_signs_in_again_after_the_primary_dies_and_the_replica_is_promoted(
    tmp_path: Path, pool: ThreadPoolExecutor, record_property: Callable[[str, object], None]
) -> None:
    with running_pg_cluster(synchronous="on") as cluster:
        cluster.create_database("openmfa")
        port, udp = free_port(), free_udp_port()
        env = {
            "OPENMFA_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "OPENMFA_DATABASE_URL": cluster.multi_host_url("openmfa"),
            "OPENMFA_RADIUS_PORT": str(udp),
            "OPENMFA_RADIUS_HOST": "127.0.0.1",
            "OPENMFA_DB_CONNECT_TIMEOUT_SECONDS": "2",
        }
        cli = Cli(tmp_path, **env)
        cli("db", "upgrade")
        cli("client", "add", "vpn", "--address", "127.0.0.1", "--secret-stdin", "--mode",
            "push", "--failmode", "secure", stdin=SECRET + "\n")  # fmt: skip
        cli("user", "add", "carol")
        created = cli("activation", "create", "carol").stdout
        uri = re.search(r"^uri:\s+(\S+)$", created, re.MULTILINE)
        assert uri, created
        with ServerProcess(tmp_path, port, env) as server:
            phone = AppClient()
            phone.activate(uri.group(1))
            wait_for(
                lambda: (
                    radclient(udp, SECRET, {}, code="status", timeout=0.5).code == "Access-Accept"
                ),
                15,
                "the built-in bridge to know the client",
            )
            reply = pool.submit(radclient, udp, SECRET, {"User-Name": "carol"}, timeout=20)
            phone.answer(pending_id(phone, 15), "approve")
            assert reply.result(30).code == "Access-Accept"

            # No server takes writes: the failmode answers, never an Accept.
            replica = cluster.replica
            assert replica is not None
            cluster.primary.kill()
            died = time.monotonic()
            during = radclient(udp, SECRET, {"User-Name": "carol"}, timeout=5)
            assert during.code == "Access-Reject", during.output

            replica.promote()
            promoted = time.monotonic()
            # The gateway's next sign-in (retransmitted every 3 s, as gateways do).
            reply = pool.submit(
                radclient, udp, SECRET, {"User-Name": "carol"}, timeout=3, retries=5
            )
            phone.answer(pending_id(phone, 15), "approve")
            after = reply.result(30)
            accepted = time.monotonic()
            assert after.code == "Access-Accept", after.output
            assert "Traceback" not in server.log
        sys.stderr.write(
            f"\nRADIUS across failover: primary killed -> promoted {promoted - died:.2f} s "
            f"(a Reject by failmode meanwhile), promoted -> Access-Accept "
            f"{accepted - promoted:.2f} s (push sent, phone polled and answered)\n"
        )
        record_property("accept_after_promotion_seconds", round(accepted - promoted, 3))
