"""The CSV parsers (backend/domain/imports.py): users and Entra ID's hardware-token layout.

All or nothing: every bad row is reported with its line and reason, and a secret key is never
quoted in a reason. Properties: a valid file round-trips; any one bad row refuses the file.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.domain.imports import (
    MAX_BYTES,
    MAX_LINE,
    MAX_ROWS,
    TokenRow,
    UserRow,
    neutralise,
    parse_tokens,
    parse_users,
    tokens_csv,
    users_csv,
)

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # 160 bits
ENTRA = (
    "upn,serial number,secret key,time interval,manufacturer,model\r\n"
    "Helga@contoso.onmicrosoft.com,1234567,2234567abcdef2234567abcdef,60,Contoso,Hardware token\r\n"
)


def reasons(data: bytes, parse: object = parse_users) -> list[str]:
    assert callable(parse)
    return [str(p) for p in parse(data).problems]


# -- users ---------------------------------------------------------------------------------


def test_a_users_file_with_a_bom_and_every_admin_spelling() -> None:
    data = (
        "\ufeffName, E-mail ,display_name,phone,admin\r\n".replace("E-mail", "email")
        + "alice,alice@example.com,Alice Liddell,+44 20 7946 0000,yes\n"
        + "\n"
        + "bob,,,,TRUE\ncarol,,,,1\ndave,,,,no\nerin,,,,\nfrank,,,,False\ngina,,,,0\n"
    ).encode()
    parsed = parse_users(data)
    assert parsed.ok, parsed.problems
    assert [(r.line, r.name, r.admin) for r in parsed.rows] == [
        (2, "alice", True),
        (4, "bob", True),
        (5, "carol", True),
        (6, "dave", False),
        (7, "erin", False),
        (8, "frank", False),
        (9, "gina", False),
    ]
    assert parsed.rows[0].phone == "+44 20 7946 0000"


def test_only_the_name_column_is_required() -> None:
    parsed = parse_users(b"name\nalice\n")
    assert parsed.ok
    assert parsed.rows == (UserRow(2, "alice"),)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("bad name,,,,", "user names are 1-128 characters"),
        (",,Someone,,", "the name is empty"),
        ("alice,alice@,,,", "the e-mail address is not valid"),
        ("alice,a@b\x0bc.d,,,", "control character"),
        ('alice,,=HYPERLINK("http://x"),,', "may not start with = + - or @"),
        ("alice,,@SUM(1),,", "may not start with = + - or @"),
        ("alice,,,call me,", "the phone number is not valid"),
        ("alice,,,12,", "the phone number is not valid"),
        ("alice,,,=1+2,", "the phone number is not valid"),
        ("alice,,,,maybe", "admin must be yes, no"),
        ("alice,,,", "4 fields, the header has 5"),
        ("alice,,\u202eevil,,", "control character"),
        ('alice,,"two\nlines",,', "control character"),
        ("alice,," + "x" * 257 + ",,", "longer than 256"),
    ],
)
def test_each_bad_user_row_is_named_by_line(line: str, reason: str) -> None:
    data = f"name,email,display_name,phone,admin\nzed,,,,\n{line}\n".encode()
    parsed = parse_users(data)
    assert not parsed.ok
    assert parsed.problems[0].line in (3, 4)
    assert any(reason in str(p) for p in parsed.problems), parsed.problems
    assert all(str(p).startswith("line ") for p in parsed.problems)


def test_a_name_twice_in_the_file_is_refused_case_insensitively() -> None:
    assert reasons(b"name\nalice\nbob\nALICE\n") == ["line 4: the name ALICE is already on line 2"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the file is empty: a header line is required"),
        (b"alice,,,,\n", "unknown column(s) alice"),
        (b"email\nalice@example.com\n", "missing column(s) name"),
        (b"name,name\na,b\n", "column(s) named twice: name"),
        (b"name\n\xff\xfealice\n", "line 2: the file is not UTF-8 text"),
        (b"name\n" + b"a" * (MAX_LINE + 1) + b"\n", f"longer than {MAX_LINE}"),
        (b"name\n" + b"a\n" * (MAX_ROWS + 1), f"more than {MAX_ROWS} rows"),
        (b"name\n" + b"a" * MAX_BYTES, f"larger than {MAX_BYTES} bytes"),
        (b'name\n"alice\n', "not valid CSV"),
    ],
)
def test_files_refused_before_any_row(data: bytes, reason: str) -> None:
    problems = reasons(data)
    assert problems
    assert reason in problems[0], problems


# -- tokens --------------------------------------------------------------------------------


def test_entra_s_own_sample_is_read() -> None:
    parsed = parse_tokens(ENTRA.encode())
    assert parsed.ok, parsed.problems
    (row,) = parsed.rows
    assert (row.upn, row.serial, row.period) == ("Helga@contoso.onmicrosoft.com", "1234567", 60)
    assert row.secret == "2234567ABCDEF2234567ABCDEF"
    assert row.device_name == "Contoso Hardware token (serial 1234567)"
    assert not parsed.warnings  # 26 base32 characters: 16 bytes, 128 bits


def test_headers_are_case_and_space_tolerant_and_secrets_may_be_grouped() -> None:
    data = (
        b"UPN , Serial  Number,Secret Key,TIME INTERVAL,Manufacturer,Model\n"
        b"alice,C302-0001,jbsw y3dp ehpk 3pxp jbsw y3dp ehpk 3pxp,30,Token2,C302\n"
    )
    parsed = parse_tokens(data)
    assert parsed.ok
    assert parsed.rows[0].secret == SECRET
    assert not parsed.warnings


def test_secret_strength_80_bits_taken_with_a_warning_79_refused() -> None:
    ten = base64.b32encode(b"\x01" * 10).decode().rstrip("=")  # 80 bits
    nine = base64.b32encode(b"\x01" * 9).decode().rstrip("=")  # 72 bits
    head = "upn,serial number,secret key,time interval,manufacturer,model\n"
    weak = parse_tokens(f"{head}alice,s1,{ten},30,,\n".encode())
    assert weak.ok
    assert [str(w) for w in weak.warnings] == [
        "line 2: the secret key has fewer than 128 bits (RFC 4226 asks for at least 128; taken)"
    ]
    assert reasons(f"{head}alice,s1,{nine},30,,\n".encode(), parse_tokens) == [
        "line 2: the secret key has fewer than 80 bits"
    ]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (f"alice,s 1,{SECRET},30,,", "the serial number must be"),
        (f"alice,,{SECRET},30,,", "the serial number must be"),
        (f"alice,-s1,{SECRET},30,,", "the serial number must be"),
        (f",s1,{SECRET},30,,", "the upn"),
        (f"al ice,s1,{SECRET},30,,", "the upn is neither"),
        ("alice,s1,,30,,", "the secret key is empty"),
        ("alice,s1,JBSWY3DPEHPK3PXP1!,30,,", "line 3: the secret key is not base32"),
        ("alice,s1,JBSWY3DPEHPK3PXPJ,30,,", "the secret key is not base32"),
        (f"alice,s1,{SECRET},45,,", "the time interval must be 30 or 60"),
        (f"alice,s1,{SECRET},,,", "the time interval must be 30 or 60"),
        (f"alice,s1,{SECRET},30,=cmd|' /C calc'!A0,", "manufacturer may not start"),
        (f"alice,s1,{SECRET},30,,+1", "model may not start"),
        (f"alice,s0,{SECRET},30,,", "the serial number s0 is already on line 2"),
        (f"alice,S0,{SECRET},30,,", "the serial number S0 is already on line 2"),
        (f"alice,s1,{'A' * 200},30,,", "more than 512 bits"),
    ],
)
def test_each_bad_token_row_is_refused_without_its_secret(row: str, reason: str) -> None:
    head = "upn,serial number,secret key,time interval,manufacturer,model\n"
    data = f"{head}bob,s0,{SECRET},60,,\n{row}\n".encode()
    problems = reasons(data, parse_tokens)
    assert any(reason in p for p in problems), problems
    assert all(p.startswith("line 3: ") for p in problems)
    secret = row.split(",")[2]
    if len(secret) > 4:
        assert not any(secret.casefold() in p.casefold() for p in problems)


def test_the_token_header_needs_every_column() -> None:
    (problem,) = reasons(b"upn,serial number,secret key\nalice,s1,x\n", parse_tokens)
    assert "missing column(s) time interval, manufacturer, model" in problem


def test_a_token_row_never_shows_its_secret() -> None:
    row = parse_tokens(ENTRA.encode()).rows[0]
    assert row.secret not in repr(row)


def test_neutralise_quotes_formula_starts() -> None:
    assert [neutralise(v) for v in ("=1+2", "+1", "-2", "@x", "ok")] == [
        "'=1+2",
        "'+1",
        "'-2",
        "'@x",
        "ok",
    ]


# -- properties ----------------------------------------------------------------------------

_names = st.from_regex(r"[a-z][a-z0-9._-]{0,20}", fullmatch=True)
_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_categories=["Cc"]),
    max_size=30,
).map(str.strip)
_emails = st.one_of(st.just(""), st.from_regex(r"[a-z]{1,10}@[a-z]{1,10}\.example", fullmatch=True))
_phones = st.one_of(st.just(""), st.from_regex(r"\+?[0-9]{3,12}", fullmatch=True))


@st.composite
def user_files(draw: st.DrawFn) -> list[UserRow]:
    names = draw(st.lists(_names, min_size=1, max_size=15, unique_by=str.casefold))
    return [
        UserRow(
            i + 2,
            name,
            draw(_emails),
            draw(_text.filter(lambda t: not t.startswith(("=", "+", "-", "@")))),
            draw(_phones),
            draw(st.booleans()),
        )
        for i, name in enumerate(names)
    ]


@st.composite
def token_files(draw: st.DrawFn) -> list[TokenRow]:
    serials = draw(
        st.lists(
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,15}", fullmatch=True),
            min_size=1,
            max_size=10,
            unique_by=str.casefold,
        )
    )
    rows = []
    for i, serial in enumerate(serials):
        key = draw(st.binary(min_size=16, max_size=40))
        rows.append(
            TokenRow(
                i + 2,
                draw(st.one_of(_names, _emails.filter(bool))),
                serial,
                base64.b32encode(key).decode().rstrip("="),
                draw(st.sampled_from((30, 60))),
                draw(st.sampled_from(("", "Token2", "Feitian"))),
                draw(st.sampled_from(("", "C302", "OTP c200"))),
            )
        )
    return rows


@settings(max_examples=60, deadline=None)
@given(user_files())
def test_property_a_valid_users_file_round_trips(rows: list[UserRow]) -> None:
    parsed = parse_users(users_csv(rows))
    assert parsed.ok, parsed.problems
    assert list(parsed.rows) == rows


@settings(max_examples=60, deadline=None)
@given(token_files())
def test_property_a_valid_tokens_file_round_trips(rows: list[TokenRow]) -> None:
    parsed = parse_tokens(tokens_csv(rows))
    assert parsed.ok, parsed.problems
    assert list(parsed.rows) == rows


_BAD_USER_FIELDS = st.sampled_from(
    [
        {"name": "no spaces allowed"},
        {"email": "not-an-address"},
        {"display_name": "=cmd()"},
        {"phone": "phone"},
        {"name": "x\x00y"},
    ]
)


@settings(max_examples=60, deadline=None)
@given(user_files(), st.data())
def test_property_any_single_bad_user_row_refuses_the_file(
    rows: list[UserRow], data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(rows) - 1))
    bad = data.draw(_BAD_USER_FIELDS)
    good = rows[at]
    rows[at] = UserRow(
        good.line,
        bad.get("name", good.name),
        bad.get("email", good.email),
        bad.get("display_name", good.display_name),
        bad.get("phone", good.phone),
        good.admin,
    )
    parsed = parse_users(users_csv(rows))
    assert not parsed.ok
    assert {p.line for p in parsed.problems} == {at + 2}


@settings(max_examples=60, deadline=None)
@given(token_files(), st.data())
def test_property_any_single_bad_token_row_refuses_the_file(
    rows: list[TokenRow], data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(rows) - 1))
    good = rows[at]
    secret, period, serial = good.secret, good.period, good.serial
    match data.draw(st.sampled_from(["secret", "short", "period", "serial", "duplicate"])):
        case "secret":
            secret = secret[:-1] + "1"
        case "short":
            secret = "JBSWY3DPEHPK3PXP"  # 80 bits: taken (a warning); 64 is not
            secret = secret[:13]
        case "period":
            period = 45
        case "serial":
            serial = "bad serial"
        case "duplicate":
            serial = "bad serial" if at == 0 else rows[0].serial.upper()
    rows[at] = TokenRow(good.line, good.upn, serial, secret, period, good.manufacturer, good.model)
    parsed = parse_tokens(tokens_csv(rows))
    assert not parsed.ok
    assert {p.line for p in parsed.problems} == {at + 2}
    assert not parsed.rows or all(r.line != at + 2 for r in parsed.rows)
    assert not any(good.secret in str(p) for p in parsed.problems)
