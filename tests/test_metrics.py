"""The backend's own metrics (backend/metrics.py): requests by route template and status,
sign-ins by method and outcome, held long-polls, database job latency, argon2 refusals.

The app runs on a live HTTP server (tests/support/api.py) and is driven over real sockets;
its registry (``app.state.metrics``) is read in the Prometheus text format. The scrape over
``metrics_listen`` of a real ``openmfa run`` and the Grafana dashboard are checked in
tests/test_metrics_dashboard.py.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.config import load_settings
from backend.domain import totp
from backend.domain.stepup import ADMINISTRATOR
from backend.errors import ConfigurationError
from backend.metrics import BackendMetrics
from tests.support.api import ADMIN, ApiHarness
from tests.support.clock import FakeClock
from tests.support.process import wait_for

START = "/gateway/v1/authentications"


def samples(api: ApiHarness) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the app's registry: (name, labels) -> value."""
    metrics: BackendMetrics = api.app.state.metrics
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(api: ApiHarness, name: str, **labels: str) -> float:
    return samples(api).get((name, frozenset(labels.items())), 0.0)


def test_requests_are_counted_by_route_template_never_by_raw_path(api: ApiHarness) -> None:
    api.add_user("alice")
    api.device("alice")
    auth_id = api.start("alice")["id"]
    assert api.gateway.get(f"{START}/{auth_id}").status_code == 200
    assert api.gateway.get(f"{START}/no-such-id").status_code == 404
    assert api.http.get("/no/such/page/alice").status_code == 404
    assert api.http.get("/healthz").status_code == 200

    found = samples(api)
    template = f"{START}/{{auth_id}}"
    assert {dict(labels).get("route") for _, labels in found} >= {template, "<unmatched>"}
    assert value(api, "openmfa_http_requests_total", route=template, method="GET", status="200")
    assert value(api, "openmfa_http_requests_total", route=template, method="GET", status="404")
    assert value(
        api, "openmfa_http_requests_total", route="<unmatched>", method="GET", status="404"
    )
    assert value(api, "openmfa_http_requests_total", route=START, method="POST", status="201")
    assert value(api, "openmfa_http_request_duration_seconds_count", route="/healthz") == 1
    # No id, no user name, no raw path in any label value.
    every_label = {v for _, labels in found for _, v in labels}
    assert not any(auth_id in v or "alice" in v or "no-such" in v for v in every_label)


def test_portal_pages_are_labelled_with_their_mount_and_never_a_token(api: ApiHarness) -> None:
    api.http.get("/portal/", follow_redirects=False)
    api.http.get("/portal/invite/secret-invitation-token")
    api.http.get("/static/no-such-file.css")
    found = samples(api)
    routes = {dict(labels).get("route") for _, labels in found}
    assert {"/portal/", "/portal/invite/{token}", "/static/{path}"} <= routes, routes
    assert not any("secret-invitation-token" in v for _, labels in found for _, v in labels)


def test_sign_ins_by_method_and_outcome(api: ApiHarness, clock: FakeClock) -> None:
    api.add_user("alice")
    seed = api.run(api.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")).seed
    code = totp.current_code(seed, clock())
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    verify = "/gateway/v1/otp/verify"
    assert api.gateway.post(verify, json={"user": "alice", "code": wrong}).json()["result"] == (
        "reject"
    )
    assert api.gateway.post(verify, json={"user": "alice", "code": code}).json()["result"] == (
        "accept"
    )
    assert api.gateway.post(verify, json={"user": "alice", "code": code}).json()["reason"] == (
        "replayed"
    )
    assert api.gateway.post(verify, json={"user": "nobody", "code": code}).status_code == 404

    api.add_user("bob")
    phone = api.device("bob")
    approved, denied = api.start("bob")["id"], api.start("bob")["id"]
    phone.answer(approved, "approve")
    phone.answer(denied, "deny")

    name = "openmfa_sign_ins_total"
    assert value(api, name, method="otp", outcome="accept") == 1
    assert value(api, name, method="otp", outcome="wrong-code") == 1
    assert value(api, name, method="otp", outcome="replayed") == 1
    assert value(api, name, method="otp", outcome="unknown-user") == 1
    # The device's first answer activates it (a push round trip) and counts like any other.
    assert value(api, name, method="push", outcome="accept") >= 1
    assert value(api, name, method="push", outcome="denied") == 1
    assert value(api, "openmfa_db_job_duration_seconds_count", kind="write") >= 4


def test_held_long_polls_are_a_gauge(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    auth_id = api.start("alice")["id"]
    result: dict[str, Any] = {}

    def poll() -> None:
        poller = api.client(headers={"Authorization": f"Bearer {api.token}"})
        result["response"] = poller.get(f"{START}/{auth_id}", params={"wait": "30"})

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    wait_for(lambda: value(api, "openmfa_long_polls_held") == 1, 10, "the long-poll to park")
    phone.answer(auth_id, "approve")
    thread.join(timeout=10)
    assert result["response"].json()["state"] == "approved"
    assert value(api, "openmfa_long_polls_held") == 0
    # A long-poll has a label of its own, apart from the same route's quick reads.
    route = f"{START}/{{auth_id}}?wait"
    assert value(api, "openmfa_http_request_duration_seconds_count", route=route) == 1


def test_argon2_refusals_are_exported_even_before_the_first(api: ApiHarness) -> None:
    assert value(api, "openmfa_argon2_checks_total", kind="refused") == 0
    assert ("openmfa_argon2_checks_total", frozenset({("kind", "refused")})) in samples(api)
    assert value(api, "openmfa_argon2_capacity") == api.server_services.hasher.capacity


def test_each_app_has_its_own_registry(api: ApiHarness, clock: FakeClock) -> None:
    with ApiHarness(api.settings, clock) as other:
        for _ in range(3):
            assert other.http.get("/healthz").status_code == 200
        assert api.http.get("/healthz").status_code == 200
        assert (
            value(
                other, "openmfa_http_requests_total", route="/healthz", method="GET", status="200"
            )
            == 3
        )
    assert (
        value(api, "openmfa_http_requests_total", route="/healthz", method="GET", status="200") == 1
    )


def test_a_scrape_works_before_the_services_open() -> None:
    # Before the lifespan opened the services (or after it closed them), a scrape still works.
    text = BackendMetrics().render().decode()
    assert "openmfa_http_requests_total" in text
    assert "openmfa_sign_ins_total" not in text
    assert "process_resident_memory_bytes" in text  # the process's own figures (Linux)


def test_metrics_listen_as_a_bare_port_means_this_host_only(tmp_path: Path) -> None:
    assert load_settings(home=tmp_path, metrics_listen="9108").metrics_address == (
        "127.0.0.1",
        9108,
    )
    assert load_settings(home=tmp_path).metrics_address is None  # off unless asked for
    with pytest.raises(ConfigurationError, match="metrics_listen"):
        load_settings(home=tmp_path, metrics_listen="0")


def test_the_leases_this_node_holds_are_a_gauge(api: ApiHarness) -> None:
    # One node alone on its database: it takes every duty's lease at start.
    wait_for(
        lambda: value(api, "openmfa_node_leases_held", lease="retention") == 1,
        10,
        "the retention lease",
    )
    assert value(api, "openmfa_node_leases_held", lease="directory-sync") == 1
    # A fixed set of labels: a duty not running here (yet) is 0, not missing.
    assert ("openmfa_node_leases_held", frozenset({("lease", "push-handover")})) in samples(api)
