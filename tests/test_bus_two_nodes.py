"""Two backend apps on one PostgreSQL database, over real HTTP: a gateway long-poll parked on
node A returns the moment the device's answer arrives at node B (the cross-node bus)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.config import Settings
from backend.events_postgres import PostgresOutcomeBus
from backend.metrics import BackendMetrics
from tests.support.api import ApiHarness
from tests.support.clock import FakeClock
from tests.support.process import wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
]


@pytest.fixture
def two_nodes(settings: Settings, clock: FakeClock) -> Iterator[tuple[ApiHarness, ApiHarness]]:
    with ApiHarness(settings, clock) as a, ApiHarness(settings, clock) as b:
        yield a, b


def waiting(api: ApiHarness) -> int:
    """How many long-polls the server has parked on its outcome bus."""
    bus = api.server_services.bus
    assert isinstance(bus, PostgresOutcomeBus)
    for _ in range(100):
        try:
            return bus.waiting
        except RuntimeError:  # the server's loop changed the dict while we counted
            continue
    raise AssertionError("could not read the bus")


def bus_metrics(api: ApiHarness) -> dict[str, float]:
    metrics: BackendMetrics = api.app.state.metrics
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        if family.name.startswith("openmfa_bus")
        for sample in family.samples
    }


def test_each_node_runs_the_postgres_bus(two_nodes: tuple[ApiHarness, ApiHarness]) -> None:
    a, b = two_nodes
    assert isinstance(a.server_services.bus, PostgresOutcomeBus)
    assert a.server_services.bus.node_id == a.server_services.node_id
    # One id for the node everywhere: its row in `nodes` (heartbeat, leases), the bus's
    # payloads, and push_node on the challenges it sends (a mismatch would hand its
    # pushes over to another node as if it were dead).
    assert a.server_services.nodes is not None
    assert a.server_services.nodes.node_id == a.server_services.node_id
    assert a.server_services.node_id != b.server_services.node_id


def test_a_long_poll_on_node_a_returns_when_the_device_answers_on_node_b(
    two_nodes: tuple[ApiHarness, ApiHarness],
) -> None:
    a, b = two_nodes
    a.add_user("alice")
    phone = a.device("alice")
    auth_id = a.start("alice")["id"]
    thread, result = a.long_poll_in_background(auth_id, wait="30")
    try:
        wait_for(lambda: waiting(a) == 1, 10, "the long-poll to park on node A", every=0.002)
        assert phone.device is not None
        phone.device.url = b.url  # the load balancer sends the phone to node B
        answered = time.monotonic()
        assert phone.answer(auth_id, "approve") == "approved"
    finally:
        thread.join(timeout=15)

    assert not thread.is_alive(), "the long-poll on node A did not return"
    assert result["response"].status_code == 200
    body = result["response"].json()
    assert body["state"] == "approved"
    assert body["answered_at"] is not None
    # Well below the 30 s wait, with room for a loaded machine.
    assert result["returned"] - answered < 10, "woken by the bus, not by the wait's end"
    assert waiting(a) == 0

    seen = bus_metrics(a)
    assert seen["openmfa_bus_connected[]"] == 1
    assert seen["openmfa_bus_outcomes_total[('direction', 'received')]"] >= 1
    assert bus_metrics(b)["openmfa_bus_outcomes_total[('direction', 'sent')]"] >= 1
