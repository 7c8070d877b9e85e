"""CSV imports: users (``name,email,display_name,phone,admin``) and hardware OATH tokens in
the layout Microsoft Entra ID uses (``upn,serial number,secret key,time interval,
manufacturer,model``). Pure: bytes in, checked rows or every problem with its line out.

The rule is all or nothing: every row is checked, and a file with any bad row is refused as
a whole (the caller writes nothing), each bad row named by its line number and reason. The
reasons never quote a secret key, so an error printed to a terminal or a page leaks nothing.

What is refused, beyond the per-column rules:

* more than :data:`MAX_BYTES` bytes, :data:`MAX_ROWS` rows or a line longer than
  :data:`MAX_LINE` characters (the checks run before any row is parsed);
* anything but UTF-8 (a byte-order mark is fine: spreadsheets write one);
* control characters anywhere (a field with a line break could forge a row in what we print);
* a text field starting with ``=``, ``+``, ``-`` or ``@`` where no such value makes sense
  (display names, manufacturer, model): a spreadsheet that opens an export of it would run
  it as a formula ("CSV injection"). Phones may start with ``+`` (digits only follow).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from backend.domain.emails import email_problem
from backend.domain.names import user_key
from backend.errors import InvalidName

MAX_BYTES = 1024 * 1024
MAX_ROWS = 10_000
MAX_LINE = 4096
MAX_DISPLAY_NAME = 256

USER_COLUMNS = ("name", "email", "display_name", "phone", "admin")
TOKEN_COLUMNS = ("upn", "serial number", "secret key", "time interval", "manufacturer", "model")
PERIODS = (30, 60)
#: Secret keys shorter than this are refused (RFC 4226 section 4: at least 128 bits, 160
#: recommended; some hardware tokens ship 80-bit keys, which we take with a warning).
MIN_SECRET_BITS = 80
WARN_SECRET_BITS = 128
MAX_SECRET_BYTES = 64

_SERIAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PHONE = re.compile(r"\+?[0-9](?:[0-9 ()./-]{0,30}[0-9])?")
_BASE32 = re.compile(r"[A-Z2-7]+")
_FORMULA_START = ("=", "+", "-", "@")
_TRUE = frozenset({"yes", "true", "1"})
_FALSE = frozenset({"no", "false", "0", ""})

Row = TypeVar("Row")


@dataclass(frozen=True, slots=True)
class Problem:
    """One bad row (or the whole file, ``line`` 0) and why, without any secret in it."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}" if self.line else self.reason


@dataclass(frozen=True, slots=True)
class UserRow:
    """One user to create."""

    line: int
    name: str
    email: str = ""
    display_name: str = ""
    phone: str = ""
    admin: bool = False


@dataclass(frozen=True, slots=True)
class TokenRow:
    """One hardware token: ``secret`` is normalised base32 (upper case, no spaces or
    padding) and kept out of ``repr`` so that no log or traceback shows it."""

    line: int
    upn: str
    serial: str
    secret: str = field(repr=False)
    period: int = 30
    manufacturer: str = ""
    model: str = ""

    @property
    def device_name(self) -> str:
        """What the device is called: ``Token2 C302 (serial 123)``."""
        maker = " ".join(part for part in (self.manufacturer, self.model) if part)
        return f"{maker or 'Hardware token'} (serial {self.serial})"


@dataclass(frozen=True, slots=True)
class Parsed(Generic[Row]):
    """The rows of a file, its problems (any problem refuses the file) and warnings."""

    rows: tuple[Row, ...]
    problems: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the file may be imported."""
        return not self.problems


def parse_users(data: bytes) -> Parsed[UserRow]:
    """Check a users CSV (header required; ``name`` is the one required column)."""
    rows: list[UserRow] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    records, header_problems = _records(data, USER_COLUMNS, ("name",), lambda h: h)
    if header_problems:
        return Parsed((), tuple(header_problems))
    for line, record in records:
        if isinstance(record, Problem):
            problems.append(record)
            continue
        row, reasons = _user_row(line, record)
        if row is not None:
            earlier = seen.get(row.name.casefold())
            if earlier is not None:
                reasons.append(f"the name {row.name} is already on line {earlier}")
            else:
                seen[row.name.casefold()] = line
        problems += [Problem(line, reason) for reason in reasons]
        if row is not None and not reasons:
            rows.append(row)
    return Parsed(tuple(rows), tuple(problems))


def parse_tokens(data: bytes) -> Parsed[TokenRow]:
    """Check a hardware-token CSV in Entra ID's layout (header required, every column)."""
    rows: list[TokenRow] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    seen: dict[str, int] = {}
    records, header_problems = _records(data, TOKEN_COLUMNS, TOKEN_COLUMNS, _token_header)
    if header_problems:
        return Parsed((), tuple(header_problems))
    for line, record in records:
        if isinstance(record, Problem):
            problems.append(record)
            continue
        row, reasons, warning = _token_row(line, record)
        if row is not None:
            earlier = seen.get(row.serial.casefold())
            if earlier is not None:
                reasons.append(f"the serial number {row.serial} is already on line {earlier}")
            else:
                seen[row.serial.casefold()] = line
        problems += [Problem(line, reason) for reason in reasons]
        if warning:
            warnings.append(Problem(line, warning))
        if row is not None and not reasons:
            rows.append(row)
    return Parsed(tuple(rows), tuple(problems), tuple(warnings))


def users_csv(rows: Sequence[UserRow]) -> bytes:
    """The file :func:`parse_users` reads back as ``rows`` (tests, examples)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(USER_COLUMNS)
    for r in rows:
        writer.writerow([r.name, r.email, r.display_name, r.phone, "yes" if r.admin else "no"])
    return out.getvalue().encode()


def tokens_csv(rows: Sequence[TokenRow]) -> bytes:
    """The file :func:`parse_tokens` reads back as ``rows`` (tests, examples)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(TOKEN_COLUMNS)
    for r in rows:
        writer.writerow([r.upn, r.serial, r.secret, r.period, r.manufacturer, r.model])
    return out.getvalue().encode()


def neutralise(value: str) -> str:
    """A value as text for a spreadsheet: a leading ``= + - @`` is quoted with ``'`` so that
    an export is never run as a formula (OWASP's advice for CSV injection)."""
    return "'" + value if value.startswith(_FORMULA_START) else value


# -- the file ------------------------------------------------------------------------------


def _token_header(name: str) -> str:
    # Entra's own samples vary in case and spacing ("Serial Number", "secret  key").
    return " ".join(name.split())


def _records(
    data: bytes,
    columns: Sequence[str],
    required: Sequence[str],
    normalise: Callable[[str], str],
) -> tuple[list[tuple[int, dict[str, str] | Problem]], list[Problem]]:
    """The file's records as (line, column -> value) after the file-wide checks, or the
    problems that refuse the file before any row is looked at."""
    if len(data) > MAX_BYTES:
        return [], [Problem(0, f"the file is larger than {MAX_BYTES} bytes")]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return [], [Problem(line, "the file is not UTF-8 text")]
    lines = text.splitlines()
    long = [i for i, line in enumerate(lines, 1) if len(line) > MAX_LINE]
    if long:
        return [], [Problem(i, f"the line is longer than {MAX_LINE} characters") for i in long]
    if sum(1 for line in lines if line.strip()) > MAX_ROWS + 1:
        return [], [Problem(0, f"the file has more than {MAX_ROWS} rows")]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(_non_blank(reader), None)
    except csv.Error:
        return [], [Problem(reader.line_num, "the header is not valid CSV")]
    if header is None:
        return [], [Problem(0, "the file is empty: a header line is required")]
    names = [normalise(cell.strip().casefold()) for cell in header]
    header_line = reader.line_num
    unknown = [n for n in names if n not in columns]
    missing = [c for c in required if c not in names]
    doubled = sorted({n for n in names if names.count(n) > 1})
    problems = []
    if unknown or missing or doubled:
        what = "; ".join(
            part
            for part in (
                f"unknown column(s) {', '.join(unknown)}" if unknown else "",
                f"missing column(s) {', '.join(missing)}" if missing else "",
                f"column(s) named twice: {', '.join(doubled)}" if doubled else "",
            )
            if part
        )
        problems.append(
            Problem(header_line, f"the header must name the columns {','.join(columns)}: {what}")
        )
        return [], problems
    out: list[tuple[int, dict[str, str] | Problem]] = []
    try:
        for cells in _non_blank(reader):
            line = reader.line_num
            if len(cells) != len(names):
                out.append(
                    (line, Problem(line, f"{len(cells)} fields, the header has {len(names)}"))
                )
                continue
            if any(_has_control(cell) for cell in cells):
                out.append((line, Problem(line, "a field holds a control character or line break")))
                continue
            out.append((line, dict(zip(names, (c.strip() for c in cells), strict=True))))
    except csv.Error:
        line = reader.line_num
        out.append((line, Problem(line, "the line is not valid CSV (check the quotes)")))
    return out, []


def _non_blank(reader: Iterator[list[str]]) -> Iterator[list[str]]:
    for cells in reader:
        if any(cell.strip() for cell in cells):
            yield cells


def _has_control(value: str) -> bool:
    """C0/C1 controls (tab included: no field needs one), DEL, line and paragraph
    separators, and the bidirectional overrides that reorder what a terminal shows."""
    return any(
        ch < " "
        or "\x7f" <= ch <= "\x9f"
        or ch in "\u2028\u2029"
        or "\u202a" <= ch <= "\u202e"
        or "\u2066" <= ch <= "\u2069"
        for ch in value
    )


# -- users ---------------------------------------------------------------------------------


def _user_row(line: int, record: dict[str, str]) -> tuple[UserRow | None, list[str]]:
    reasons: list[str] = []
    name = record["name"]
    try:
        user_key(name)
    except InvalidName as exc:
        reasons.append(exc.detail if name else "the name is empty")
    email = record.get("email", "")
    if email and (problem := email_problem(email)) is not None:
        reasons.append(f"the e-mail address is not valid: {problem}")
    display = record.get("display_name", "")
    if len(display) > MAX_DISPLAY_NAME:
        reasons.append(f"the display name is longer than {MAX_DISPLAY_NAME} characters")
    elif display.startswith(_FORMULA_START):
        reasons.append("the display name may not start with = + - or @ (a spreadsheet formula)")
    phone = record.get("phone", "")
    if phone and (not _PHONE.fullmatch(phone) or sum(ch.isdigit() for ch in phone) < 3):
        reasons.append(
            "the phone number is not valid: digits, optionally a leading +, "
            "with spaces ( ) . / - between them, at most 32 characters"
        )
    admin_text = record.get("admin", "").casefold()
    if admin_text not in _TRUE | _FALSE:
        reasons.append("admin must be yes, no, true, false, 1, 0 or empty")
    if reasons:
        return None, reasons
    return UserRow(line, name, email, display, phone, admin_text in _TRUE), reasons


# -- tokens --------------------------------------------------------------------------------


def _token_row(line: int, record: dict[str, str]) -> tuple[TokenRow | None, list[str], str]:
    reasons: list[str] = []
    warning = ""
    upn = record["upn"]
    if not upn:
        reasons.append("the upn (user name or e-mail address) is empty")
    elif not _is_user_name(upn) and email_problem(upn) is not None:
        reasons.append("the upn is neither a valid user name nor an e-mail address")
    serial = record["serial number"]
    if not _SERIAL.fullmatch(serial):
        reasons.append(
            "the serial number must be 1-64 letters, digits, . _ or -, "
            "starting with a letter or digit"
        )
    secret, problem = _secret(record["secret key"])
    if problem:
        reasons.append(problem)
    elif len(base64.b32decode(_padded(secret))) * 8 < WARN_SECRET_BITS:
        warning = (
            f"the secret key has fewer than {WARN_SECRET_BITS} bits "
            "(RFC 4226 asks for at least 128; taken)"
        )
    interval = record["time interval"]
    if interval not in {str(p) for p in PERIODS}:
        reasons.append("the time interval must be 30 or 60 (seconds)")
    maker, model = record["manufacturer"], record["model"]
    for what, value in (("manufacturer", maker), ("model", model)):
        if len(value) > 48:
            reasons.append(f"the {what} is longer than 48 characters")
        elif value.startswith(_FORMULA_START):
            reasons.append(f"the {what} may not start with = + - or @ (a spreadsheet formula)")
    if reasons:
        return None, reasons, ""
    return TokenRow(line, upn, serial, secret, int(interval), maker, model), reasons, warning


def _is_user_name(text: str) -> bool:
    try:
        user_key(text)
    except InvalidName:
        return False
    return True


def _padded(secret: str) -> str:
    return secret + "=" * (-len(secret) % 8)


def _secret(text: str) -> tuple[str, str]:
    """The key as normalised base32, or why not (never quoting the key). Spaces are taken
    (vendors print keys in groups of four), as are lower case and trailing ``=`` padding."""
    secret = "".join(text.split()).upper().rstrip("=")
    if not secret:
        return "", "the secret key is empty"
    if not _BASE32.fullmatch(secret):
        return "", "the secret key is not base32 (letters A-Z and digits 2-7)"
    try:
        raw = base64.b32decode(_padded(secret))
    except (binascii.Error, ValueError):
        return "", "the secret key is not base32 (its length does not fit)"
    if len(raw) * 8 < MIN_SECRET_BITS:
        return "", f"the secret key has fewer than {MIN_SECRET_BITS} bits"
    if len(raw) > MAX_SECRET_BYTES:
        return "", f"the secret key has more than {MAX_SECRET_BYTES * 8} bits"
    return secret, ""
