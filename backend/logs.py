"""The one logging setup: structured lines on stderr, each carrying the request id.

Nothing secret is ever passed to a logger by our code. Libraries are another matter: at
``debug`` SQLAlchemy and aiosqlite write every statement with its parameters (password hashes,
CSRF secrets), h2/hpack and aiosmtplib the headers and commands they send (bearer tokens,
SMTP credentials). So whatever level is asked for, only our own loggers (and uvicorn's server
messages) go below ``warning``; see :data:`OWN_LOGGERS`.

Log lines cannot be forged: text from outside (a path, a RADIUS User-Name) may hold line
breaks or terminal escapes, which both formatters write escaped (:func:`escape_controls`).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str] = ContextVar("request_id", default="")

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
#: Extras that are never written: uvicorn repeats its message with ANSI colours in
#: ``color_message`` for its own console formatter.
_DROPPED_EXTRAS = frozenset({"color_message"})

#: Loggers allowed below ``warning``: ours, and uvicorn's server messages (start, stop).
OWN_LOGGERS = ("openmfa", "uvicorn.error", "alembic.runtime.migration")

# Every C0 control (line breaks and tabs included), DEL, every C1 control, and the Unicode
# line and paragraph separators: anything a terminal or a log reader could take as structure.
_CONTROLS = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_ESCAPES = {
    code: {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(
        code, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    )
    for code in _CONTROLS
}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a visible escape (``\\n``,
    ``\\x1b``, ``\\u2028``): one line, no terminal escapes. A backslash stays as it is."""
    return text.translate(_ESCAPES)


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD and key not in _DROPPED_EXTRAS and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and extras.

    ``json.dumps`` escapes every control character itself (and, ASCII-only, U+2028/U+2029).
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal; a traceback follows on indented lines."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = request_id_var.get()
        prefix = f"[{request_id}] " if request_id else ""
        message = escape_controls(record.getMessage())
        line = f"{record.levelname.lower():7} {record.name}: {prefix}{message}"
        if record.exc_info:
            # Each line of the traceback escaped on its own and indented: an exception
            # message cannot start a line of its own that looks like a log line.
            trace = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n    {escape_controls(part)}" for part in trace)
        return line


class OwnLoggersOnly(logging.Filter):
    """Below ``warning``, pass only records of :data:`OWN_LOGGERS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        name = record.name
        return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


#: Libraries that log statements, parameters, headers or bodies below ``warning``. Pinned to
#: ``warning`` so they do not even build those records (SQLAlchemy decides at start-up from
#: its logger's level whether to log every statement); the filter catches any other library.
_QUIET_LIBRARIES = (
    "aiosqlite",
    "sqlalchemy",
    "asyncpg",
    "httpx",
    "httpcore",
    "h2",
    "hpack",
    "h11",
    "multipart",
    "python_multipart",
    "aioapns",
    "aiosmtplib",
    "urllib3",
    "requests",
    "google",
    "pyfcm",
    "asyncio",
    "uvicorn.access",
    "watchfiles",
)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Install the handler on the root logger (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(OwnLoggersOnly())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
