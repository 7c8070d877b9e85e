"""Directory settings (pure): every value an administrator gives is checked with a full match
or a real parser and comes back in one canonical form; garbage is refused with a message
that says what is expected. Also the adapter's pure helpers: the map from AD's bind
diagnostics to outcomes, FILETIME expiry, kind detection from the root DSE, filter escaping.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import string
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from backend.directory import ldap as adapter
from backend.directory import settings as ds
from backend.directory.settings import DirectoryChanges, DirectorySettings
from backend.errors import InvalidDirectory


def a_ca_pem(name: str = "Test CA") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM).decode()


def corp(**values: object) -> DirectorySettings:
    base: dict[str, object] = {
        "name": "corp",
        "urls": ("ldaps://dc1.corp.example",),
        "bind_dn": "CN=svc-openmfa,OU=Service,DC=corp,DC=example",
        "base_dn": "DC=corp,DC=example",
    }
    base.update(values)
    return DirectorySettings(**base)  # type: ignore[arg-type]


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_url", "canonical"),
    [
        ("ldaps://dc1.corp.example", "ldaps://dc1.corp.example"),
        ("LDAPS://DC1.Corp.Example:636", "ldaps://dc1.corp.example"),  # default port dropped
        ("ldap://dc1:389/", "ldap://dc1"),
        ("ldaps://127.0.0.1:1636", "ldaps://127.0.0.1:1636"),
        ("ldaps://[::1]:1636", "ldaps://[::1]:1636"),
        ("ldap://dc1.corp.example:3268", "ldap://dc1.corp.example:3268"),
    ],
)
def test_urls_are_canonical(given_url: str, canonical: str) -> None:
    assert ds.check_url(given_url) == canonical


@pytest.mark.parametrize(
    "bad",
    [
        "http://dc1",
        "dc1.corp.example",
        "ldaps://",
        "ldaps://dc1/DC=corp,DC=example",  # an LDAP URL with a DN: not here
        "ldaps://dc1?sub",
        "ldaps://user@dc1",
        "ldaps://dc1:0",
        "ldaps://dc1:65536",
        "ldaps://-dc1",
        "ldaps://dc1..corp",
        "ldaps://[not:an:ip]",
        "ldapi:///var/run/slapd",
        "ldaps://dc1\n",
    ],
)
def test_bad_urls_are_refused(bad: str) -> None:
    with pytest.raises(InvalidDirectory):
        ds.check_url(bad)


def test_url_lists() -> None:
    assert ds.check_urls(["ldaps://a", "ldap://b"]) == ("ldaps://a", "ldap://b")
    with pytest.raises(InvalidDirectory, match="at least one"):
        ds.check_urls([])
    with pytest.raises(InvalidDirectory, match="twice"):
        ds.check_urls(["ldaps://a", "LDAPS://A:636"])
    with pytest.raises(InvalidDirectory, match="at most"):
        ds.check_urls([f"ldaps://dc{i}" for i in range(9)])
    assert ds.split_url("ldap://dc1") == (False, "dc1", 389)
    assert ds.split_url("ldaps://[::1]:1636") == (True, "::1", 1636)


# -- DNs, filters, attributes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "dn",
    [
        "DC=corp,DC=example",
        "CN=VPN Users,OU=Groups,DC=corp,DC=example",
        r"CN=Smith\, John,OU=People,DC=corp,DC=example",
        "cn=a+sn=b,dc=example",
        "uid=alice,ou=people,dc=example,dc=org",
    ],
)
def test_dns_are_accepted(dn: str) -> None:
    assert ds.check_dn(f"  {dn} ", "base DN") == dn


@pytest.mark.parametrize(
    "bad", ["corp.example", "CN=", "=x", "CN=a,,DC=b", "CN=a,DC", "CN=a\x00,DC=b", "x" * 1100]
)
def test_garbage_dns_are_refused(bad: str) -> None:
    with pytest.raises(InvalidDirectory, match="distinguished name"):
        ds.check_dn(bad, "base DN")


def test_optional_and_required_dns() -> None:
    assert ds.check_dn("  ", "group DN", required=False) == ""
    with pytest.raises(InvalidDirectory, match="required"):
        ds.check_dn("", "bind DN")


@pytest.mark.parametrize(
    "text",
    [
        "(department=Sales)",
        "(&(department=Sales)(!(title=Intern)))",
        "(|(mail=*@corp.example)(mail=*@corp.example.org))",
        "(memberOf:1.2.840.113556.1.4.1941:=CN=VPN,DC=corp,DC=example)",
        r"(cn=Smith\2c John)",
    ],
)
def test_filters_are_accepted(text: str) -> None:
    assert ds.check_filter(text) == text


@pytest.mark.parametrize(
    "bad",
    ["department=Sales", "(a=b))", "((a=b)", "(a=b)(c=d)", "(&(a=b)", "(a)", "(a=b", "(a=b\n)"],
)
def test_bad_filters_are_refused(bad: str) -> None:
    with pytest.raises(InvalidDirectory):
        ds.check_filter(bad)


@given(st.text(alphabet="()&|!=*ab\\ ", max_size=30))
def test_a_filter_is_either_refused_cleanly_or_accepted_unchanged(text: str) -> None:
    try:
        checked = ds.check_filter(text)
    except InvalidDirectory:
        return
    assert checked == text.strip()
    assert checked == "" or (checked.startswith("(") and checked.endswith(")"))


@given(st.text(max_size=40))
def test_dn_check_never_raises_anything_but_invalid_directory(text: str) -> None:
    with contextlib.suppress(InvalidDirectory):
        ds.check_dn(text, "base DN")


@given(st.text(alphabet=string.printable, max_size=40))
def test_url_check_never_raises_anything_but_invalid_directory(text: str) -> None:
    try:
        checked = ds.check_url(text)
    except InvalidDirectory:
        return
    assert ds.check_url(checked) == checked  # canonical form is a fixed point


@pytest.mark.parametrize("name", ["sAMAccountName", "mail", "userPrincipalName", "2.5.4.3", "x-1"])
def test_attribute_names(name: str) -> None:
    assert ds.check_attribute(name, "user name") == name


@pytest.mark.parametrize("bad", ["", "1abc", "mail;binary", "a b", "(mail)", "mail=x", "é"])
def test_bad_attribute_names(bad: str) -> None:
    with pytest.raises(InvalidDirectory):
        ds.check_attribute(bad, "user name")


# -- CA, numbers, intervals, passwords -------------------------------------------------------


def test_ca_pem_is_parsed_and_canonical() -> None:
    one, two = a_ca_pem("One"), a_ca_pem("Two")
    assert ds.check_ca_pem(f"junk before\n{one}\n\n{two}") == one + two
    assert ds.check_ca_pem(None) is None
    assert ds.check_ca_pem("  \n") is None
    for bad in ("not a certificate", one.replace("MII", "XXX"), "-----BEGIN CERTIFICATE-----"):
        with pytest.raises(InvalidDirectory, match="CA file"):
            ds.check_ca_pem(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600), ("1h", 3600), ("30m", 1800), ("90s", 90), ("1d", 86400), ("0", 0)],
)
def test_intervals(text: str, seconds: int) -> None:
    assert ds.parse_interval(text) == seconds


@pytest.mark.parametrize("bad", ["59", "8d", "1w", "-1", "1.5h", "h", ""])
def test_bad_intervals(bad: str) -> None:
    with pytest.raises(InvalidDirectory):
        ds.parse_interval(bad)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("connect_timeout", 0.1),
        ("connect_timeout", float("nan")),
        ("search_timeout", 601.0),
        ("page_size", 0),
        ("page_size", 1001),
        ("disable_percent", 101),
        ("disable_minimum", -1),
        ("kind", "novell"),
        ("name", "corp dir"),
        ("name", "-corp"),
    ],
)
def test_bounds(field: str, value: object) -> None:
    with pytest.raises(InvalidDirectory):
        ds.normalise(corp(**{field: value}))


def test_bind_password() -> None:
    assert ds.check_bind_password("pw") == "pw"
    for bad in ("", "a\nb", "x" * 2000):
        with pytest.raises(InvalidDirectory) as caught:
            ds.check_bind_password(bad)
        assert bad not in caught.value.detail or bad == ""


def test_normalise_merge_and_config() -> None:
    s = ds.normalise(
        corp(
            urls=("LDAPS://DC1.corp.example:636", "ldap://dc2.corp.example"),
            group_dn=" CN=VPN,DC=corp,DC=example ",
            name_attribute="userPrincipalName",
        )
    )
    assert s.urls == ("ldaps://dc1.corp.example", "ldap://dc2.corp.example")
    assert s.group_dn == "CN=VPN,DC=corp,DC=example"
    config = ds.to_config(7, s, kind="ad")
    assert config.attributes.name == "userPrincipalName"
    assert config.attributes.email == "mail"
    assert ds.to_config(7, s, kind="ldap").attributes.name == "userPrincipalName"
    with pytest.raises(InvalidDirectory, match="kind"):
        ds.to_config(7, s)
    changed = ds.normalise(
        ds.merge(s, DirectoryChanges(group_dn="", name_attribute="", ca_pem="", page_size=50))
    )
    assert changed.group_dn == ""
    assert changed.ca_pem is None
    assert ds.to_config(1, changed, kind="ldap").attributes.name == "uid"
    assert ds.changed_settings(s, changed) == ["group_dn", "name_attribute", "page_size"]
    assert DirectoryChanges().empty
    assert not DirectoryChanges(page_size=1).empty


# -- the adapter's pure parts ----------------------------------------------------------------

# Diagnostic messages of refused simple binds. Windows AD DCs: the form Microsoft documents
# (DSID and version vary by build). Samba 4 AD DC: recorded from the test DC
# (tests/support/samba_dc.py), and checked against it live in tests/test_directory_ldap.py.
WINDOWS = "80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext error, data {}, v3839"
SAMBA = "80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data {}, v1db1"
AD_MESSAGES = {
    "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 52e, v4563": (
        "wrong-password"
    ),
    **{
        WINDOWS.format(code): outcome
        for code, outcome in (
            ("525", "no-such-user"),
            ("530", "not-permitted"),
            ("531", "not-permitted"),
            ("532", "password-expired"),
            ("533", "disabled"),
            ("701", "expired"),
            ("773", "must-change"),
            ("775", "locked"),
        )
    },
    # Samba: wrong password (also what a disabled account says to a wrong password),
    # disabled, expired, must change (pwdLastSet=0), locked out.
    SAMBA.format("52e"): "wrong-password",
    SAMBA.format("533"): "disabled",
    SAMBA.format("701"): "expired",
    SAMBA.format("773"): "must-change",
    SAMBA.format("775"): "locked",
}


@pytest.mark.parametrize(("message", "outcome"), sorted(AD_MESSAGES.items()))
def test_ad_bind_diagnostics(message: str, outcome: str) -> None:
    assert adapter.bind_refusal_outcome("invalidCredentials", message) == outcome


def test_other_bind_refusals() -> None:
    # OpenLDAP: no diagnostic, invalidCredentials is a wrong password.
    assert adapter.bind_refusal_outcome("invalidCredentials", "") == "wrong-password"
    # An AD code we do not know, and refusals that are not about credentials.
    unknown = "80090308: LdapErr: DSID-0C09042A, comment: AcceptSecurityContext error, data 999"
    assert adapter.bind_refusal_outcome("invalidCredentials", unknown) == "not-permitted"
    assert adapter.bind_refusal_outcome("unwillingToPerform", "") == "not-permitted"
    assert adapter.bind_refusal_outcome("strongerAuthRequired", "") == "not-permitted"
    # "data" must be a word: text that merely contains it is not a code.
    assert adapter.bind_refusal_outcome("invalidCredentials", "metadata 52e") == "wrong-password"


def test_filetime_expiry() -> None:
    now = 1_780_000_000.0
    never = (0, 0x7FFFFFFFFFFFFFFF)
    assert not any(adapter.filetime_expired(v, now) for v in never)
    as_filetime = int((now + adapter.FILETIME_EPOCH_OFFSET) * 10_000_000)
    assert adapter.filetime_expired(as_filetime - 10_000_000, now)  # a second ago
    assert not adapter.filetime_expired(as_filetime + 10_000_000 * 86400, now)  # tomorrow


def test_kind_detection_from_the_root_dse() -> None:
    ad = {"supportedcapabilities": [b"1.2.840.113556.1.4.800", b"1.2.840.113556.1.4.1670"]}
    assert adapter.detect_kind(ad) == "ad"
    assert adapter.detect_kind({"forestfunctionality": [b"7"]}) == "ad"
    assert adapter.detect_kind({"vendorname": [b"OpenLDAP"]}) == "ldap"
    assert adapter.detect_kind({}) == "ldap"
    assert "forest functional level 7" in adapter.describe_vendor(
        {"forestfunctionality": [b"7"]}, "ad"
    )


def test_values_in_filters_are_escaped() -> None:
    assert adapter.escape_value("a*)(uid=*") == r"a\2a\29\28uid=\2a"
    assert adapter.escape_value("back\\slash\x00") == r"back\5cslash\00"
    guid = uuid.UUID("2a7c2f0e-5b1d-4c3a-9e8f-0123456789ab")
    escaped = adapter.escape_bytes(guid.bytes_le)
    assert escaped == "".join(f"\\{b:02x}" for b in guid.bytes_le)
    assert str(uuid.UUID(bytes_le=guid.bytes_le)) == str(guid)
    assert adapter.dn_key("CN=VPN Users, OU=Groups,DC=corp,DC=example") == adapter.dn_key(
        "cn=vpn users,ou=groups,dc=corp,dc=example"
    )


@given(st.text(min_size=1, max_size=40))
def test_an_escaped_name_is_one_equality_filter_with_that_exact_value(name: str) -> None:
    """The attack surface of authenticate(): whatever a user types as their name, the filter
    built from it is one equality match on the name attribute, for exactly that value."""
    import re

    from ldap3.operation.search import MATCH_EQUAL, parse_filter

    root = parse_filter(
        f"(sAMAccountName={adapter.escape_value(name)})",
        None,
        False,
        True,
        None,
        False,  # type: ignore[no-untyped-call]
    )
    assert len(root.elements) == 1
    node = root.elements[0]
    assert node.tag == MATCH_EQUAL
    assert not node.elements
    assert node.assertion["attr"] == "sAMAccountName"
    raw = re.sub(rb"\\([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]), node.assertion["value"])
    assert raw.decode("utf-8") == name
