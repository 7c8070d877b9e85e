"""The throw-away directory servers the directory tests run against: a Samba AD DC and an
OpenLDAP slapd (tests/support/samba_dc.py, slapd.py). These check that the fixtures are the
real thing a site runs: verified TLS, the service account's view, nested groups through
AD's in-chain rule, memberOf on slapd, and AD's answers to a bind for each account state."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import ldap3
import pytest
from ldap3.core.exceptions import LDAPException, LDAPInvalidCredentialsResult

from tests.fakes.tls import make_tls
from tests.support.ldapops import connect
from tests.support.samba_dc import SambaDC
from tests.support.slapd import BULK_PASSWORD, Slapd, running_slapd

IN_CHAIN = "1.2.840.113556.1.4.1941"
PASSWORD = "Corr3ct-Horse-battery!"


def _search(conn: ldap3.Connection, base: str, query: str, *attrs: str) -> list[ldap3.Entry]:
    conn.search(base, query, attributes=list(attrs) or None)
    return list(conn.entries)


def _bind_error(url: str, ca_file: Path, dn: str, password: str) -> str:
    """The DC's diagnostic message for a refused bind."""
    with pytest.raises(LDAPInvalidCredentialsResult) as refused:
        connect(url, ca_file, dn, password)
    return str(refused.value.message)


def _data_code(message: str) -> str:
    match = re.search(r"data ([0-9a-f]+)", message)
    assert match, message
    return match.group(1)


# -- Samba AD DC ---------------------------------------------------------------------------
def test_samba_service_account_reads_users_over_verified_ldaps(samba_dc: SambaDC) -> None:
    alice = samba_dc.add_user(
        samba_dc.new_name("alice"), PASSWORD, email="alice@corp.example",
        display_name="Alice Liddell", phone="+44 20 7946 0000",
    )  # fmt: skip
    conn = connect(samba_dc.url, samba_dc.ca_file, samba_dc.bind_dn, samba_dc.bind_password)
    try:
        (entry,) = _search(
            conn, samba_dc.base_dn, f"(sAMAccountName={alice.name})",
            "mail", "displayName", "telephoneNumber", "objectGUID", "userPrincipalName",
        )  # fmt: skip
        assert entry.entry_dn == alice.dn
        assert entry.mail.value == "alice@corp.example"
        assert entry.displayName.value == "Alice Liddell"
        assert entry.telephoneNumber.value == "+44 20 7946 0000"
        assert entry.userPrincipalName.value == f"{alice.name}@corp.openmfa.test"
        assert str(uuid.UUID(bytes_le=entry.objectGUID.value)) == samba_dc.guid(alice.name)
    finally:
        conn.unbind()
    # and the user can bind with the password the test gave
    connect(samba_dc.url, samba_dc.ca_file, alice.dn, PASSWORD).unbind()


def test_samba_certificate_is_verified_against_the_ca(samba_dc: SambaDC, tmp_path: Path) -> None:
    stranger = make_tls(tmp_path / "other-ca").ca_file
    with pytest.raises(LDAPException):
        connect(samba_dc.url, stranger, samba_dc.bind_dn, samba_dc.bind_password)


def test_samba_starttls_on_plain_ldap(samba_dc: SambaDC) -> None:
    conn = connect(
        samba_dc.starttls_url, samba_dc.ca_file, samba_dc.bind_dn, samba_dc.bind_password,
        start_tls=True,
    )  # fmt: skip
    assert conn.bound
    conn.unbind()


def test_samba_nested_groups_through_the_in_chain_rule(samba_dc: SambaDC) -> None:
    alice = samba_dc.add_user(samba_dc.new_name("alice"), PASSWORD)
    bob = samba_dc.add_user(samba_dc.new_name("bob"), PASSWORD)
    vpn = samba_dc.add_group(samba_dc.new_name("vpn"))
    staff = samba_dc.add_group(samba_dc.new_name("staff"))
    samba_dc.add_members(staff, alice.name)
    samba_dc.add_members(vpn, staff, bob.name)
    conn = connect(samba_dc.url, samba_dc.ca_file, samba_dc.bind_dn, samba_dc.bind_password)
    try:
        chained = _search(
            conn, samba_dc.base_dn, f"(&(objectClass=user)(memberOf:{IN_CHAIN}:={vpn}))"
        )
        direct = _search(conn, samba_dc.base_dn, f"(&(objectClass=user)(memberOf={vpn}))")
    finally:
        conn.unbind()
    assert {e.entry_dn for e in chained} == {alice.dn, bob.dn}
    assert {e.entry_dn for e in direct} == {bob.dn}
    samba_dc.remove_members(staff, alice.name)
    assert samba_dc.members_in_chain(vpn) == {bob.dn}


def test_samba_rename_keeps_the_guid(samba_dc: SambaDC) -> None:
    old = samba_dc.add_user(samba_dc.new_name("carol"), PASSWORD)
    guid = samba_dc.guid(old.name)
    new_name = samba_dc.new_name("caroline")
    new_dn = samba_dc.rename(old.name, new_name)
    assert samba_dc.dn_of(new_name) == new_dn
    assert samba_dc.guid(new_name) == guid
    assert samba_dc.value(new_name, "userPrincipalName") == f"{new_name}@corp.openmfa.test"
    with pytest.raises(KeyError):
        samba_dc.dn_of(old.name)


def test_samba_account_states_and_the_bind_answers(samba_dc: SambaDC) -> None:
    """What AD says to a bind in each state (the data codes --primary ldap maps)."""
    user = samba_dc.add_user(samba_dc.new_name("dave"), PASSWORD)
    url, ca = samba_dc.url, samba_dc.ca_file
    assert _data_code(_bind_error(url, ca, user.dn, "not-the-password")) == "52e"

    samba_dc.disable(user.name)
    assert int(samba_dc.value(user.name, "userAccountControl")) & 2
    assert _data_code(_bind_error(url, ca, user.dn, PASSWORD)) == "533"
    samba_dc.enable(user.name)
    connect(url, ca, user.dn, PASSWORD).unbind()

    samba_dc.expire(user.name)
    assert _data_code(_bind_error(url, ca, user.dn, PASSWORD)) == "701"
    samba_dc.set_expiry(user.name, 30)
    connect(url, ca, user.dn, PASSWORD).unbind()
    samba_dc.set_expiry(user.name, None)

    samba_dc.must_change(user.name)
    assert _data_code(_bind_error(url, ca, user.dn, PASSWORD)) == "773"
    samba_dc.set_password(user.name, PASSWORD + "2")
    connect(url, ca, user.dn, PASSWORD + "2").unbind()

    samba_dc.lock_out(user.name)
    assert _data_code(_bind_error(url, ca, user.dn, PASSWORD + "2")) == "775"
    samba_dc.unlock(user.name)
    connect(url, ca, user.dn, PASSWORD + "2").unbind()


def test_samba_ou_as_a_private_base_dn(samba_dc: SambaDC) -> None:
    ou = samba_dc.add_ou(samba_dc.new_name("t"))
    mine = {samba_dc.add_user(samba_dc.new_name("u"), PASSWORD, parent=ou).dn for _ in range(3)}
    samba_dc.add_user(samba_dc.new_name("elsewhere"), PASSWORD)
    conn = connect(samba_dc.url, samba_dc.ca_file, samba_dc.bind_dn, samba_dc.bind_password)
    try:
        found = _search(conn, ou, "(&(objectCategory=person)(objectClass=user))")
    finally:
        conn.unbind()
    assert {e.entry_dn for e in found} == mine


def test_samba_deleted_user_is_gone(samba_dc: SambaDC) -> None:
    erin = samba_dc.add_user(samba_dc.new_name("erin"), PASSWORD)
    samba_dc.delete_user(erin.name)
    with pytest.raises(KeyError):
        samba_dc.dn_of(erin.name)


# -- OpenLDAP slapd ------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["ldaps", "starttls"])
def test_slapd_service_account_reads_users_but_not_passwords(slapd: Slapd, transport: str) -> None:
    bob = slapd.add_user(
        slapd.new_name("bob"), PASSWORD, email="bob@example.test", display_name="Bob Bobson",
        phone="+1 555 0100",
    )  # fmt: skip
    url = slapd.url if transport == "ldaps" else slapd.starttls_url
    conn = connect(
        url, slapd.ca_file, slapd.bind_dn, slapd.bind_password, start_tls=transport == "starttls"
    )
    try:
        (entry,) = _search(
            conn, slapd.base_dn, f"(uid={bob.name})",
            "mail", "displayName", "telephoneNumber", "entryUUID", "userPassword",
        )  # fmt: skip
    finally:
        conn.unbind()
    assert entry.entry_dn == bob.dn
    assert entry.mail.value == "bob@example.test"
    assert entry.displayName.value == "Bob Bobson"
    assert entry.telephoneNumber.value == "+1 555 0100"
    assert entry.entryUUID.value == slapd.entry_uuid(bob.name)
    assert not entry.userPassword.values
    connect(slapd.url, slapd.ca_file, bob.dn, PASSWORD).unbind()
    with pytest.raises(LDAPInvalidCredentialsResult):
        connect(slapd.url, slapd.ca_file, bob.dn, "wrong")


def test_slapd_certificate_is_verified_against_the_ca(slapd: Slapd, tmp_path: Path) -> None:
    stranger = make_tls(tmp_path / "other-ca").ca_file
    with pytest.raises(LDAPException):
        connect(slapd.url, stranger, slapd.bind_dn, slapd.bind_password)


def test_slapd_member_of_follows_group_changes(slapd: Slapd) -> None:
    carol = slapd.add_user(slapd.new_name("carol"), PASSWORD)
    staff = slapd.add_group(slapd.new_name("staff"))
    vpn = slapd.add_group(slapd.new_name("vpn"), carol.name)
    assert slapd.member_of(carol.name) == {vpn}
    slapd.add_members(staff, carol.name)
    assert slapd.member_of(carol.name) == {vpn, staff}
    conn = connect(slapd.url, slapd.ca_file, slapd.bind_dn, slapd.bind_password)
    try:
        found = _search(conn, slapd.base_dn, f"(&(objectClass=inetOrgPerson)(memberOf={staff}))")
    finally:
        conn.unbind()
    assert [e.entry_dn for e in found] == [carol.dn]
    slapd.remove_members(vpn, carol.name)
    assert slapd.member_of(carol.name) == {staff}
    # renamed: the groups follow (refint), the entryUUID stays
    uuid = slapd.entry_uuid(carol.name)
    new_dn = slapd.rename(carol.name, slapd.new_name("caroline"))
    assert slapd.entry_uuid(new_dn) == uuid
    assert slapd.member_of(new_dn) == {staff}
    slapd.delete(new_dn)
    assert slapd.value(staff, "member") == slapd.admin_dn  # only the placeholder is left


def test_slapd_ou_as_a_private_base_dn(slapd: Slapd) -> None:
    ou = slapd.add_ou(slapd.new_name("t"))
    mine = {slapd.add_user(slapd.new_name("u"), PASSWORD, parent=ou).dn for _ in range(3)}
    slapd.add_user(slapd.new_name("elsewhere"), PASSWORD)
    conn = connect(slapd.url, slapd.ca_file, slapd.bind_dn, slapd.bind_password)
    try:
        found = _search(conn, ou, "(objectClass=inetOrgPerson)")
    finally:
        conn.unbind()
    assert {e.entry_dn for e in found} == mine
    assert slapd.dn_of(next(iter(mine)).split(",")[0][4:]) in mine


def test_slapd_posix_group_lists_uids(slapd: Slapd) -> None:
    dave = slapd.add_user(slapd.new_name("dave"), PASSWORD)
    eve = slapd.add_user(slapd.new_name("eve"), PASSWORD)
    unix = slapd.add_posix_group(slapd.new_name("unix"), dave.name)
    slapd.add_members(unix, eve.name)
    assert set(slapd.attributes(unix, "memberUid")["memberUid"]) == {dave.name, eve.name}
    slapd.remove_members(unix, dave.name)
    assert slapd.attributes(unix, "memberUid")["memberUid"] == [eve.name]


def test_slapd_bulk_add_loads_users_that_can_bind(tmp_path: Path) -> None:
    with running_slapd(tmp_path / "slapd") as server:
        names = server.bulk_add(200)
        conn = connect(server.url, server.ca_file, server.bind_dn, server.bind_password)
        try:
            pages = conn.extend.standard.paged_search(
                server.people_dn, "(objectClass=inetOrgPerson)", attributes=["entryUUID"],
                paged_size=50, generator=True,
            )  # fmt: skip
            uuids = {str(e["attributes"]["entryUUID"]) for e in pages}
        finally:
            conn.unbind()
        assert len(uuids) == 200
        connect(
            server.url, server.ca_file, f"uid={names[-1]},{server.people_dn}", BULK_PASSWORD
        ).unbind()
