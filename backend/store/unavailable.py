"""Which database errors mean "the server is gone or cannot take this now" (a 503 and a new
connection), as opposed to a bug in a statement (a 500).

A primary that stops, crashes or is replaced by a promoted replica shows up in many shapes:
the socket refused or reset (``OSError``), the server's own notice (SQLSTATE class 08
connection exception, 57P01-57P03 shutting down / crashed / starting up), asyncpg's client-side
complaints about a connection that died under an operation, no host in a multi-host URL
accepting writes yet (``TargetServerAttributeNotMatched``), and a session that landed on, or
was left on, a read-only server (25006: a standby, or an old primary fenced with
``default_transaction_read_only``). All of these are worth a retry on a fresh connection and
none is the request's fault. SQLAlchemy wraps the driver's error (``.orig``) and the adapter
wraps asyncpg's (``__cause__``); the whole chain is looked at.
"""

from __future__ import annotations

# SQLSTATE prefixes: connection exception; admin shutdown, crash shutdown, cannot connect now;
# read-only transaction; too many connections.
UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03", "25006", "53300")
READ_ONLY_STATE = "25006"
# asyncpg's client-side errors about a connection that died under it (type names: asyncpg
# is imported only where PostgreSQL is used).
_CLIENT_ERRORS = ("InternalClientError", "TargetServerAttributeNotMatched")
_CLOSED_WORDS = ("connection is closed", "connection was closed", "connection has been released")


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        orig = getattr(current, "orig", None)
        pending += [orig if isinstance(orig, BaseException) else None, current.__cause__]
    return found


def sqlstate(exc: BaseException) -> str | None:
    """The first SQLSTATE found along ``exc``'s chain, or None."""
    for item in _chain(exc):
        state = getattr(item, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
    return None


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be used right now (see the module doc)."""
    for item in _chain(exc):
        if getattr(item, "connection_invalidated", False) is True:
            return True
        if isinstance(item, OSError):  # refused, reset, timed out, no route
            return True
        state = getattr(item, "sqlstate", None)
        if isinstance(state, str) and state.startswith(UNAVAILABLE_STATES):
            return True
        if any(cls.__name__ in _CLIENT_ERRORS for cls in type(item).__mro__):
            return True
        if any(word in str(item) for word in _CLOSED_WORDS):
            return True
    return False


def is_read_only(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused by a read-only server (SQLSTATE 25006)."""
    return sqlstate(exc) == READ_ONLY_STATE
