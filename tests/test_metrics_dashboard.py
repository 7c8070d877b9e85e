"""The Grafana dashboard (docs/grafana/openmfa.json) against what a real ``openmfa run``
exports on ``metrics_listen`` after some traffic: every metric an expression names must be
one the server serves, so a renamed metric cannot leave an empty panel behind unnoticed.

A real process, RADIUS over UDP with ``radclient`` through the built-in bridge, a push
approved by the reference app, codes over the gateway API. Waits are bounded polls.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.freeradius import free_udp_port, radclient, radclient_binary
from tests.support.process import Cli, ServerProcess, free_port, wait_for

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "openmfa.json"
SECRET = "metrics-test-secret"
#: What PromQL adds to a histogram's name.
_SUFFIXES = ("_bucket", "_count", "_sum")


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def named_metrics(expr: str) -> set[str]:
    """The metric names in a PromQL expression (ours all start with ``openmfa_``)."""
    return set(re.findall(r"\bopenmfa_[a-z0-9_]+", expr))


def unexported(exprs: list[str], families: set[str]) -> list[str]:
    """The metric names in ``exprs`` that are no family of ``families`` (a scrape's)."""
    missing: list[str] = []
    for expr in exprs:
        for name in sorted(named_metrics(expr)):
            base = name.removesuffix("_total")
            for suffix in _SUFFIXES:
                base = base.removesuffix(suffix)
            if base not in families:
                missing.append(name)
    return missing


def test_the_check_catches_a_renamed_metric() -> None:
    families = {"openmfa_sign_ins", "openmfa_db_job_duration_seconds"}
    exprs = [
        'sum(rate(openmfa_sign_ins_total{outcome="accept"}[5m]))',
        "histogram_quantile(0.99, rate(openmfa_db_job_duration_seconds_bucket[5m]))",
    ]
    assert unexported(exprs, families) == []
    assert unexported([*exprs, "rate(openmfa_signins_total[5m])"], families) == [
        "openmfa_signins_total"
    ]


def test_every_panel_has_a_query_over_our_metrics_and_a_title() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "openmfa"
    for panel in dashboard["panels"]:
        assert panel["title"], panel
        assert panel["targets"], panel
        for target in panel["targets"]:
            assert named_metrics(target["expr"]), target
            assert target["expr"].count("(") == target["expr"].count(")"), target


@pytest.mark.skipif(radclient_binary() is None, reason="radclient not installed")
def test_the_dashboard_names_only_metrics_a_running_server_exports(tmp_path: Path) -> None:
    port, udp, metrics_port = free_port(), free_udp_port(), free_port()
    env = {
        "OPENMFA_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "OPENMFA_RADIUS_PORT": str(udp),
        "OPENMFA_RADIUS_HOST": "127.0.0.1",
        "OPENMFA_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
    }
    cli = Cli(tmp_path, **env)
    cli("db", "upgrade")
    with ServerProcess(tmp_path, port, env) as server, ThreadPoolExecutor(2) as pool:
        cli(
            "client", "add", "vpn", "--address", "127.0.0.1", "--secret-stdin", "--mode", "push",
            stdin=SECRET + "\n",
        )  # fmt: skip
        device = _enrol(cli, "carol")
        wait_for(
            lambda: radclient(udp, SECRET, {}, code="status", timeout=0.5).code == "Access-Accept",
            15,
            "the built-in bridge to know the client",
        )
        reply = pool.submit(radclient, udp, SECRET, {"User-Name": "carol"}, timeout=30)
        wait_for(lambda: len(device.pending()) == 1, 15, "the push to reach the phone")
        device.answer(str(device.pending()[0]["id"]), "approve")
        assert reply.result(30).code == "Access-Accept"
        token = cli("token", "create", "gw").stdout.strip()
        gateway = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})
        with gateway:
            refused = gateway.post("/gateway/v1/otp/verify", json={"user": "carol", "code": "1"})
            assert refused.json()["result"] == "reject"

        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    assert scraped.status_code == 200
    families, samples = _parse(scraped.text)

    assert unexported(expressions(), families) == []
    # The traffic above shows up under the names the panels use.
    assert samples["openmfa_sign_ins_total", (("method", "push"), ("outcome", "accept"))] == 1
    assert samples["openmfa_sign_ins_total", (("method", "otp"), ("outcome", "malformed-code"))]
    assert samples["openmfa_radius_responses_total", (("client", "vpn"), ("code", "accept"))] == 1
    assert any(name == "openmfa_db_job_duration_seconds_bucket" for name, _ in samples)
    assert any(name == "openmfa_http_request_duration_seconds_bucket" for name, _ in samples)
    assert samples["openmfa_long_polls_held", ()] == 0


def _enrol(cli: Cli, user: str) -> Any:
    from backend.authenticator.client import AppClient

    cli("user", "add", user)
    created = cli("activation", "create", user).stdout
    match = re.search(r"^uri:\s+(\S+)$", created, re.MULTILINE)
    assert match, created
    device = AppClient()
    device.activate(match.group(1))
    return device


def _parse(text: str) -> tuple[set[str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    families: set[str] = set()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return families, samples
