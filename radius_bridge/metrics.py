"""Prometheus metrics of one bridge, in a registry of its own (no process-wide state).

Two bridges in one process (tests, or a backend hosting a bridge next to a test's) never mix
their figures, and ``openmfa run`` exposes the registry of the bridge it started at
``/metrics`` on its HTTP server. Label values are bounded: client names come from the
operator's client list, backends from its settings, codes and reasons from fixed sets;
never a user name.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Decision latency buckets: the code path answers in milliseconds, a push in seconds (a
#: person reaching for the phone), a timeout at the push timeout (55 s by default).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    45.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


class BridgeMetrics:
    """The bridge's instruments. ``render()`` gives the text exposition format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "openmfa_radius_responses",
            "RADIUS responses sent, by client and code (accept, reject, challenge, status)",
            ["client", "code"],
            registry=r,
        )
        self.held = Gauge(
            "openmfa_radius_held_requests",
            "Access-Requests in progress (a push being held open, a backend call running)",
            registry=r,
        )
        self.latency = Histogram(
            "openmfa_radius_decision_seconds",
            "Time from an Access-Request's arrival to its answer, by decision",
            ["decision"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.drops = Counter(
            "openmfa_radius_dropped",
            "Datagrams dropped without an answer, by reason",
            ["reason"],
            registry=r,
        )
        self.wrong_secret = Counter(
            "openmfa_radius_wrong_secret",
            "Requests from a known client that did not verify with its secret",
            ["client"],
            registry=r,
        )
        self.duplicates = Counter(
            "openmfa_radius_duplicates",
            "Retransmissions absorbed (request in progress) or answered from the cache",
            ["outcome"],
            registry=r,
        )
        self.backend_errors = Counter(
            "openmfa_radius_backend_unavailable",
            "Backend or upstream calls that failed or timed out (the failmode applied)",
            ["effect"],
            registry=r,
        )
        self.backend_up = Gauge(
            "openmfa_radius_backend_up",
            "1 while a backend node is taken to be up (its health check passes, its last "
            "call connected), 0 while it is skipped",
            ["backend"],
            registry=r,
        )
        self.channel_open = Gauge(
            "openmfa_radius_wait_channel_open",
            "1 while the wait channel (one WebSocket for held pushes and code checks) to a "
            "backend node is open, 0 while that node is used over HTTP",
            ["backend"],
            registry=r,
        )
        self.backend_failovers = Counter(
            "openmfa_radius_backend_failovers",
            "Calls that failed on a backend and moved on to the next one, by the backend left",
            ["backend"],
            registry=r,
        )
        self.clients = Gauge(
            "openmfa_radius_clients", "RADIUS clients in the current client table", registry=r
        )
        self.client_refresh_failures = Counter(
            "openmfa_radius_client_refresh_failures",
            "Client list refreshes that failed (the last good table stays in use)",
            registry=r,
        )
        self.client_table_age = Gauge(
            "openmfa_radius_client_table_loaded_timestamp_seconds",
            "Unix time the client table was last confirmed current",
            registry=r,
        )

        self.radsec_connections = Counter(
            "openmfa_radius_radsec_connections",
            "RadSec (RADIUS over TLS) connection events: accepted, refused (handshake failed "
            "or certificate bound to no client), over-limit, bad-length, idle-closed, unbound, "
            "closed",
            ["event"],
            registry=r,
        )
        self.radsec_open = Gauge(
            "openmfa_radius_radsec_open_connections",
            "RadSec connections open now (after the handshake)",
            registry=r,
        )

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
