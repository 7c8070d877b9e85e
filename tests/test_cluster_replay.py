"""Several nodes, real processes (issue 18): one code sent through two nodes at the same
moment is accepted once.

Two ``openmfa run`` nodes on one fresh PostgreSQL database; a gateway posts the same fresh
TOTP code to ``/gateway/v1/otp/verify`` on both nodes at once (two threads released together
by a barrier), for several users and time steps. A step once accepted is never accepted again
(DESIGN.md), whichever node sees the copy.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from backend.domain import totp
from tests.support.cluster import NodeCluster

pytestmark = pytest.mark.postgres

USERS = 8


@pytest.fixture
def cluster(tmp_path: Path, postgres_admin_url: str) -> Iterator[NodeCluster]:
    with NodeCluster(tmp_path, nodes_wanted=2, admin_url=postgres_admin_url) as running:
        yield running


def test_a_code_raced_through_two_nodes_is_accepted_once(cluster: NodeCluster) -> None:
    seeds: dict[str, str] = {}
    for i in range(USERS):
        name = f"racer{i}"
        cluster.cli("user", "add", name)
        created = cluster.cli("activation", "create", name, "--oath").stdout
        match = re.search(r"^secret:\s+(\S+)$", created, re.MULTILINE)
        assert match, created
        seeds[name] = match.group(1)
    token = cluster.gateway_token()
    headers = {"Authorization": f"Bearer {token}"}
    clients = [
        httpx.Client(base_url=node.url, headers=headers, timeout=30) for node in cluster.nodes
    ]
    step = totp.time_step(datetime.now(UTC))
    results: list[tuple[str, int, list[str]]] = []
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            # Steps s and s+1 stay inside the +-1 window until step s+2 begins (30 s at
            # least); in increasing order per user (an accepted step makes earlier ones stale).
            for offset in (0, 1):
                for name, seed in seeds.items():
                    code = totp.code_at_step(seed, step + offset)
                    barrier = threading.Barrier(2)

                    def verify(
                        http: httpx.Client,
                        name: str = name,
                        code: str = code,
                        barrier: threading.Barrier = barrier,
                    ) -> str:
                        barrier.wait(timeout=10)
                        answer = http.post(
                            "/gateway/v1/otp/verify", json={"user": name, "code": code}
                        )
                        assert answer.status_code == 200, answer.text
                        return str(answer.json()["result"])

                    both = [pool.submit(verify, http) for http in clients]
                    results.append((name, offset, [f.result(timeout=30) for f in both]))
    finally:
        for http in clients:
            http.close()
    if totp.time_step(datetime.now(UTC)) > step + 1:  # over 30 s: a stalled machine
        pytest.fail("the clock left the codes' window during the test; run it again")
    for name, offset, verdicts in results:
        assert sorted(verdicts) == ["accept", "reject"], (name, offset, verdicts)
