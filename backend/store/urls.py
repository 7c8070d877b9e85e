"""Database URLs: the one place that turns what an operator writes into what each driver takes.

Operators write libpq's form, with several hosts where PostgreSQL runs as a primary and
replicas (https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-MULTIPLE-HOSTS)::

    postgresql://openmfa:secret@pg1,pg2:5433/openmfa?target_session_attrs=read-write

or SQLAlchemy's (``postgresql+asyncpg://...``, hosts also as ``?host=h1:p1&host=h2:p2``).
Three consumers need three spellings of the same thing:

* SQLAlchemy's asyncpg dialect (the ORM engine, Alembic): :func:`sqlalchemy_url`. It does not
  parse ``h1,h2`` in the authority; several hosts go in the query as ``host=h1:p1`` each, every
  one with its port.
* asyncpg itself (the hot-path pool, the outcome bus's LISTEN connection): :func:`asyncpg_dsn`,
  libpq's form, which asyncpg parses with several hosts and ``target_session_attrs``.
* people and libpq tools (doctor, ``openmfa db upgrade``, pg_dump hints): :func:`display_url`
  and :func:`libpq_url`, hosts listed, the password masked.

With several hosts and no ``target_session_attrs`` the URL gets ``read-write``: OpenMFA writes
on every request, and libpq's default (``any``) would settle on a read-only standby when it is
listed first or the primary is down. Other URLs (SQLite) pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote

DEFAULT_PORT = 5432
DRIVER_SCHEME = "postgresql+asyncpg"
_POSTGRES_SCHEMES = ("postgresql", "postgres", DRIVER_SCHEME)
MASK = "***"
CONNECT_TIMEOUT = "connect_timeout"


@dataclass(frozen=True, slots=True)
class Host:
    """One server of a PostgreSQL URL; ``port`` None: the default (5432)."""

    name: str
    port: int | None = None

    def netloc(self, default_port: bool = False) -> str:
        """``host[:port]`` (IPv6 literals in brackets); ``default_port`` writes 5432 out."""
        name = f"[{self.name}]" if ":" in self.name else self.name
        port = self.port if self.port is not None or not default_port else DEFAULT_PORT
        return name if port is None else f"{name}:{port}"


@dataclass(frozen=True, slots=True)
class PostgresUrl:
    """A parsed PostgreSQL URL. ``userinfo`` is kept percent-encoded, exactly as written."""

    user: str  # percent-encoded, "" when absent
    password: str | None  # percent-encoded; None when absent
    hosts: tuple[Host, ...]
    database: str  # percent-encoded path without the leading "/"
    query: tuple[tuple[str, str], ...]  # everything but host/port, in order

    def userinfo(self, hide_password: bool) -> str:
        """``user[:password]@`` or ""."""
        if not self.user and self.password is None:
            return ""
        if self.password is None:
            return f"{self.user}@"
        return f"{self.user}:{MASK if hide_password else self.password}@"

    def query_string(self, extra: tuple[tuple[str, str], ...] = ()) -> str:
        """``?a=b&...`` of ``extra`` then the other options, or ""."""
        pairs = [*extra, *self.query]
        if not pairs:
            return ""
        return "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe=':/,[]')}" for k, v in pairs)


def is_postgres(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database (any of the schemes we take)."""
    scheme = url.split("://", 1)[0].lower()
    return scheme in _POSTGRES_SCHEMES


def parse(url: str) -> PostgresUrl:
    """Split a PostgreSQL URL (libpq or SQLAlchemy form) into its parts.

    Raises ValueError with what is wrong; messages never contain the password."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _POSTGRES_SCHEMES:
        raise ValueError(
            "a PostgreSQL URL starts with postgresql:// (or postgresql+asyncpg://); "
            "other drivers are not supported"
        )
    rest, _, query_text = rest.partition("?")
    authority, _, database = rest.partition("/")
    userinfo, at, host_text = authority.rpartition("@")
    user, password = "", None
    if at:
        user, colon, secret = userinfo.partition(":")
        password = secret if colon else None
    hosts = [_host(item) for item in host_text.split(",")] if host_text else []
    query: list[tuple[str, str]] = []
    query_hosts: list[str] = []
    query_ports: list[str] = []
    for key, value in parse_qsl(query_text, keep_blank_values=True):
        if key == "host":
            query_hosts.extend(value.split(","))
        elif key == "port":
            query_ports.extend(value.split(","))
        else:
            query.append((key, value))
    if query_hosts:
        if hosts:
            raise ValueError("give the hosts either before the database name or as host=, not both")
        hosts = _query_hosts(query_hosts, query_ports)
    elif query_ports:
        if len(query_ports) != 1 or len(hosts) > 1:
            raise ValueError("port= in the query needs host= beside it")
        port = _port(query_ports[0])
        hosts = [Host(host.name, port) for host in hosts] or [Host("", port)]
    return PostgresUrl(user, password, tuple(hosts), database, tuple(query))


def _host(text: str) -> Host:
    text = text.strip()
    if text.startswith("["):
        name, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"malformed IPv6 host {text!r} in the database URL")
        return Host(name, _port(after[1:]) if after else None)
    name, colon, port = text.partition(":")
    if not name:
        raise ValueError("an empty host name in the database URL")
    return Host(unquote(name), _port(port) if colon else None)


def _query_hosts(names: list[str], ports: list[str]) -> list[Host]:
    if ports:  # SQLAlchemy's other form: host=h1,h2&port=p1,p2
        if len(ports) != len(names):
            raise ValueError("the number of hosts and ports in the database URL differ")
        return [Host(name, _port(port)) for name, port in zip(names, ports, strict=True)]
    return [_host(name) if not name.startswith("/") else Host(name) for name in names]


def _port(text: str) -> int | None:
    if text == "":
        return None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"the port {text!r} in the database URL is not a number 1-65535")
    return int(text)


def _with_default_attrs(parsed: PostgresUrl) -> tuple[tuple[str, str], ...]:
    """``target_session_attrs=read-write`` when several hosts are given without one."""
    if len(parsed.hosts) > 1 and not any(k == "target_session_attrs" for k, _ in parsed.query):
        return (("target_session_attrs", "read-write"),)
    return ()


def sqlalchemy_url(url: str) -> str:
    """The URL for SQLAlchemy's asyncpg dialect (engine, Alembic); non-PostgreSQL unchanged.

    One host stays in the authority (the URL is left as written, only the scheme becomes
    ``postgresql+asyncpg``); several go in the query, ``host=h:p`` each with its port.
    Other PostgreSQL drivers (``postgresql+psycopg``) are refused: OpenMFA speaks asyncpg."""
    if not url.lower().startswith("postgres"):
        return url
    parsed = parse(url)
    if len(parsed.hosts) <= 1:
        return DRIVER_SCHEME + "://" + url.partition("://")[2]
    if any(":" in host.name or host.name.startswith("/") for host in parsed.hosts):
        # SQLAlchemy splits host=... at the first colon and knows no socket directories here.
        raise ValueError(
            "several hosts in the database URL must be names or IPv4 addresses "
            "(IPv6 literals and socket directories work with one host only)"
        )
    hosts = tuple(("host", host.netloc(default_port=True)) for host in parsed.hosts)
    return (
        f"{DRIVER_SCHEME}://{parsed.userinfo(hide_password=False)}/{parsed.database}"
        + parsed.query_string(hosts + _with_default_attrs(parsed))
    )


def libpq_url(url: str, hide_password: bool = True) -> str:
    """libpq's form (``postgresql://user@h1:p1,h2:p2/db?...``): for psql, pg_dump, people."""
    parsed = parse(url)
    hosts = ",".join(host.netloc() for host in parsed.hosts)
    return (
        f"postgresql://{parsed.userinfo(hide_password)}{hosts}/{parsed.database}"
        + parsed.query_string(_with_default_attrs(parsed))
    )


def asyncpg_dsn(url: str) -> str:
    """The DSN for ``asyncpg.connect`` (password included: never log it). Without libpq's
    ``connect_timeout``, which asyncpg would send the server as a setting (and fail): it is
    the per-host timeout of backend/store/connect.py instead (:func:`connect_timeout`)."""
    parsed = parse(url)
    kept = tuple((k, v) for k, v in parsed.query if k != CONNECT_TIMEOUT)
    return libpq_url(url if kept == parsed.query else _rebuilt(parsed, kept), hide_password=False)


def _rebuilt(parsed: PostgresUrl, query: tuple[tuple[str, str], ...]) -> str:
    hosts = ",".join(host.netloc() for host in parsed.hosts)
    without = PostgresUrl(parsed.user, parsed.password, parsed.hosts, parsed.database, query)
    return (
        f"postgresql://{without.userinfo(hide_password=False)}{hosts}/{parsed.database}"
        + without.query_string()
    )


def connect_timeout(url: str) -> float | None:
    """libpq's ``connect_timeout`` (seconds per host) when the URL gives one, else None."""
    for key, value in parse(url).query:
        if key == CONNECT_TIMEOUT:
            try:
                seconds = float(value)
            except ValueError:
                raise ValueError(f"connect_timeout={value!r} in the database URL") from None
            return seconds if seconds > 0 else None  # libpq: 0 means wait forever
    return None


def display_url(url: str) -> str:
    """``url`` for output and logs: every host shown, the password masked."""
    if is_postgres(url):
        return libpq_url(url, hide_password=True)
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def host_list(url: str) -> list[str]:
    """The servers a PostgreSQL URL names, as ``host:port`` (port 5432 written out)."""
    return [host.netloc(default_port=True) for host in parse(url).hosts]
