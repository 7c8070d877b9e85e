"""Prometheus metrics of one backend app, in a registry of its own (no process-wide state).

Tests start several apps in one process; each :func:`~backend.app.create_app` makes its own
:class:`BackendMetrics`, and ``openmfa run`` serves it on ``metrics_listen`` beside the HTTP
server's and the built-in bridge's registries (backend/server.py).

Two kinds of figures:

* Instruments updated as things happen: HTTP requests (by route *template*, so no id or
  name reaches a label) and the duration of database jobs.
* Figures the services already keep as plain counters (sign-ins by method and outcome,
  pushes by transport and outcome, argon2 checks and refusals, mails, held long-polls):
  read when Prometheus scrapes, so the hot paths pay one ``Counter`` increment and no lock.

Every label value comes from a fixed set (routes, methods, states, error types, transport
names); never a user name, a device id or a client address.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.routing import Mount
from starlette.types import Scope

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
        r = self.registry
        self.requests = Counter(
            "openmfa_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "openmfa_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "openmfa_db_job_duration_seconds",
            "Raw-SQL database jobs (the hot paths): time from submitting to the answer, "
            "waiting for the writer included, by kind (write, read)",
            ["kind"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        # Children cached by label values: labels() takes a lock and builds a key each call.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._live = _ServicesCollector()
        r.register(self._live)

    def observe_request(self, scope: Scope, status: int, seconds: float) -> None:
        """Count one answered request (called by the request-id middleware)."""
        method = scope.get("method", "")
        route = route_template(scope)
        if b"wait=" in scope.get("query_string", b""):
            # A long-poll lasts as long as the person takes: its own label, so that it does
            # not hide the latency of the same route's plain reads.
            route += "?wait"
        key = (route, method if method in _METHODS else "other", status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(key[0], key[1], str(status)),
                self.request_seconds.labels(key[0]),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def attach(self, services: Services) -> None:
        """Time the services' database jobs and expose their counters (lifespan start)."""
        services.db.job_timers = (
            self.job_seconds.labels("write"),
            self.job_seconds.labels("read"),
        )
        self._live.services = services

    def detach(self) -> None:
        """Forget the services (lifespan end): a closed app exports only what it counted."""
        self._live.services = None

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


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
        waiting = getattr(services.bus, "waiting", None)
        if isinstance(waiting, int):
            yield GaugeMetricFamily(
                "openmfa_long_polls_held",
                "Requests waiting on a challenge's outcome now (gateway and portal long-polls)",
                value=waiting,
            )
