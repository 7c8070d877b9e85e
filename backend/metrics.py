"""Prometheus metrics of one backend app, in a registry of its own (no process-wide state).

Tests start several apps in one process; each :func:`~backend.app.create_app` makes its own
:class:`BackendMetrics`, and ``openmfa run`` serves it on ``metrics_listen`` beside the HTTP
server's and the built-in bridge's registries (backend/server.py).

Two kinds of figures:

* Counted here as things happen: HTTP requests (by route *template*, so no id or name
  reaches a label) and the duration of database jobs, in plain containers without a lock.
* Figures the services already keep as plain counters (sign-ins by method and outcome,
  pushes by transport and outcome, argon2 checks and refusals, mails, held long-polls):
  read when Prometheus scrapes, so the hot paths pay one ``Counter`` increment.

Every label value comes from a fixed set (routes, methods, states, error types, transport
names); never a user name, a device id or a client address.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.routing import Mount
from starlette.types import Scope

from backend.domain.leases import LEASE_NAMES
from backend.events_postgres import PostgresOutcomeBus

if TYPE_CHECKING:
    from backend.services import Services

#: Request durations: most answers take milliseconds; long-polls (``?wait=``) take up to a
#: minute, and have routes of their own.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Database jobs: ~0.1 ms for a raw SQLite job, more with group commit and on PostgreSQL.
JOB_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    5,
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The argon2 counts always shown, at 0 before the first (a dashboard then shows a line).
ARGON2_KINDS = ("verify", "hash", "dummy", "dummy-waited", "refused")
UNMATCHED = "<unmatched>"  # a path no route serves (a 404): one label, not one per path


def route_template(scope: Scope) -> str:
    """The template of the route that served ``scope`` (``/app/v1/challenges/{id}``).

    Starlette's router leaves the matched route in ``scope["route"]`` and, inside a mount,
    the mount's path in ``root_path``; mounts here are fixed paths, so the two make the
    template."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    root: str = scope.get("root_path", "")
    prefix = root[len(scope.get("app_root_path", "")) :]
    if isinstance(route, Mount):  # an app mounted whole (static files)
        return prefix + "/{path}"
    return prefix + str(getattr(route, "path", UNMATCHED))


class BackendMetrics:
    """The backend's instruments; :meth:`attach` adds the figures of the open services."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # (route, method, status) -> count; route -> durations: plain containers, exported
        # by _RequestCollector. prometheus_client's instruments take a lock per update
        # (~7 us a request here with two of them, against ~1 us for these).
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.request_seconds: dict[str, FastHistogram] = {}
        self.job_seconds = {"write": FastHistogram(JOB_BUCKETS), "read": FastHistogram(JOB_BUCKETS)}
        self._live = _ServicesCollector()
        self.registry.register(_OwnCollector(self))
        self.registry.register(self._live)
        # CPU, memory, open files of the process (process_*), read from /proc at scrape time.
        ProcessCollector(registry=self.registry)

    def observe_request(self, scope: Scope, status: int, seconds: float) -> None:
        """Count one answered request (called by the request-id middleware)."""
        method = scope.get("method", "")
        route = route_template(scope)
        if b"wait=" in scope.get("query_string", b""):
            # A long-poll lasts as long as the person takes: its own label, so that it does
            # not hide the latency of the same route's plain reads.
            route += "?wait"
        self.requests[route, method if method in _METHODS else "other", status] += 1
        histogram = self.request_seconds.get(route)
        if histogram is None:
            histogram = self.request_seconds[route] = FastHistogram(REQUEST_BUCKETS)
        histogram.observe(seconds)

    def attach(self, services: Services) -> None:
        """Time the services' database jobs and expose their counters (lifespan start)."""
        services.db.job_timers = (self.job_seconds["write"], self.job_seconds["read"])
        self._live.services = services

    def detach(self) -> None:
        """Forget the services (lifespan end): a closed app exports only what it counted."""
        self._live.services = None

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class FastHistogram:
    """Bucket counts in a plain list, observed without a lock.

    Only the event loop's thread observes (the request middleware, the awaits of database
    jobs), and the scrape runs on the same loop; a reader on another thread (a test) at worst
    sees one observation half-counted."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, amount: float) -> None:
        """Count ``amount`` in the first bucket whose bound is >= it (Prometheus' ``le``)."""
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.total += amount

    def cumulative(self) -> list[tuple[str, float]]:
        """The buckets as Prometheus exports them: cumulative counts by upper bound."""
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(
            (*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True
        ):
            running += count
            buckets.append((bound, running))
        return buckets


def _histogram(
    name: str, doc: str, label: str, histograms: Mapping[str, FastHistogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, histogram in sorted(histograms.items()):
        family.add_metric([value], histogram.cumulative(), histogram.total)
    return family


class _OwnCollector(Collector):
    """Exports what :class:`BackendMetrics` counts itself."""

    def __init__(self, metrics: BackendMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        m = self._metrics
        yield _counter(
            "openmfa_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            (
                ((route, method, str(status)), n)
                for (route, method, status), n in m.requests.items()
            ),
        )
        yield _histogram(
            "openmfa_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template",
            "route",
            dict(m.request_seconds),
        )
        yield _histogram(
            "openmfa_db_job_duration_seconds",
            "Raw-SQL database jobs (the hot paths): time from submitting to the answer, "
            "waiting for the writer included, by kind (write, read)",
            "kind",
            m.job_seconds,
        )


def _counter(
    name: str, doc: str, labels: list[str], counts: Iterable[tuple[tuple[str, ...], int]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, count in sorted(counts):
        family.add_metric(list(values), count)
    return family


def _single(counts: Mapping[str, int], *prefix: str) -> Iterator[tuple[tuple[str, ...], int]]:
    return (((*prefix, key), count) for key, count in counts.items())


class _ServicesCollector(Collector):
    """Reads the services' own counters at scrape time."""

    def __init__(self) -> None:
        self.services: Services | None = None

    def describe(self) -> Iterable[Metric]:
        return ()  # names vary with the services attached; nothing to check at register

    def collect(self) -> Iterable[Metric]:
        services = self.services
        if services is None:
            return
        sign_ins = [
            *_single(services.otp.outcomes, "otp"),
            *_single(services.challenges.push_outcomes, "push"),
            *_single(services.users.password_outcomes, "password"),
        ]
        yield _counter(
            "openmfa_sign_ins",
            "Sign-in checks by method (otp, push, password) and outcome (accept, or why not)",
            ["method", "outcome"],
            sign_ins,
        )
        pushes = services.push.by_transport.items() if services.push is not None else ()
        yield _counter(
            "openmfa_push_attempts",
            "Push sends by transport (apns, fcm) and outcome "
            "(delivered, retry, invalid-token, failed)",
            ["transport", "outcome"],
            pushes,
        )
        yield _counter(
            "openmfa_push_handover",
            "Push challenges this node took over from a dead node (or a command) and sent",
            [],
            [((), services.push.handed_over)] if services.push is not None else [],
        )
        mails = [
            *(
                _single(services.notice_mailer.counts, "notice")
                if services.notice_mailer is not None
                else ()
            ),
            *(
                _single(services.fraud_mailer.counts, "fraud")
                if services.fraud_mailer is not None
                else ()
            ),
        ]
        yield _counter(
            "openmfa_mail_attempts",
            "E-mail attempts by kind (notice, fraud) and result (sent, retry, failed)",
            ["kind", "result"],
            mails,
        )
        hasher = services.hasher
        yield _counter(
            "openmfa_argon2_checks",
            "argon2id work by kind: verify, hash, dummy (unknown user), dummy-waited, and "
            "refused (the pool was full: the request was answered busy)",
            ["kind"],
            [((kind,), hasher.counts[kind]) for kind in {*ARGON2_KINDS, *hasher.counts}],
        )
        yield GaugeMetricFamily(
            "openmfa_argon2_admitted",
            "Password and PIN checks running or queued now",
            value=hasher.admitted,
        )
        yield GaugeMetricFamily(
            "openmfa_argon2_capacity",
            "Password and PIN checks admitted at most (workers + queue)",
            value=hasher.capacity,
        )
        if services.nodes is not None:
            held = services.nodes.leases.held
            leases = GaugeMetricFamily(
                "openmfa_node_leases_held",
                "1 for each duty's lease this node holds now (fraud-mail, directory-sync, "
                "retention, push-handover), else 0; summed over nodes, each is 1",
                labels=["lease"],
            )
            for name in LEASE_NAMES:
                leases.add_metric([name], 1 if name in held else 0)
            yield leases
        if isinstance(services.bus, PostgresOutcomeBus):
            yield from _bus_metrics(services.bus)
        waiting = getattr(services.bus, "waiting", None)
        if isinstance(waiting, int):
            yield GaugeMetricFamily(
                "openmfa_long_polls_held",
                "Requests waiting on a challenge's outcome now (gateway and portal long-polls)",
                value=waiting,
            )


def _bus_metrics(bus: PostgresOutcomeBus) -> Iterator[Metric]:
    """The cross-node outcome bus (PostgreSQL LISTEN/NOTIFY): is it listening, what went
    through it, and how often it had to reconnect."""
    counts = bus.counts
    yield GaugeMetricFamily(
        "openmfa_bus_connected",
        "1 while this node's LISTEN connection to PostgreSQL is up, else 0",
        value=1 if bus.connected else 0,
    )
    yield GaugeMetricFamily(
        "openmfa_bus_pending",
        "Outcomes published here and not yet sent to the other nodes (queued while down)",
        value=bus.pending,
    )
    yield _counter(
        "openmfa_bus_reconnects",
        "Times the LISTEN connection was re-established after a loss (each followed by a "
        "re-read of the challenges waited on here)",
        [],
        [((), counts["reconnects"])],
    )
    yield _counter(
        "openmfa_bus_notifications",
        "NOTIFY payloads by direction: sent, received (from other nodes and this one), "
        "own (this node's, skipped)",
        ["direction"],
        [((d,), counts[f"notifications-{d}"]) for d in ("sent", "received", "own")],
    )
    yield _counter(
        "openmfa_bus_outcomes",
        "Challenge outcomes by direction: sent, received (from other nodes), reread (found "
        "decided in the database after a reconnect)",
        ["direction"],
        [((d,), counts[f"outcomes-{d}"]) for d in ("sent", "received", "reread")],
    )
    yield _counter(
        "openmfa_bus_problems",
        "Bus trouble by kind: rejected (malformed payload lines), send-errors (a NOTIFY "
        "failed), dropped (outcomes never sent: queue full, or after close)",
        ["kind"],
        [((k,), counts[k]) for k in ("rejected", "send-errors", "dropped")],
    )
