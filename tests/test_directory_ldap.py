"""The LDAP adapter (backend/directory/ldap.py) against real servers: a Samba AD domain
controller and OpenLDAP slapd (tests/support/samba_dc.py, slapd.py), over verified TLS.

Kind detection, counting, paging (more users than a page), nested groups (AD's in-chain
rule), admin groups, disabled and expired accounts, stable ids across renames, every
password outcome the servers give (with Samba's real diagnostic strings), empty passwords,
filter injection, failover, untrusted CAs, StartTLS, a dropped pooled connection, and a
silent server that must not block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.directory.config import DEFAULT_ATTRIBUTES, DirectoryConfig
from backend.directory.entries import DirectoryEntry
from backend.directory.ldap import LdapDirectory, bind_refusal_outcome, tls_context
from backend.errors import DirectoryError, DirectoryUnavailable
from tests.fakes.tls import make_tls
from tests.support.ldapops import DirectoryServer, connect
from tests.support.process import free_port
from tests.support.samba_dc import SambaDC
from tests.support.slapd import Slapd, running_slapd
from tests.test_directory_settings import a_ca_pem

PASSWORD = "Corr3ct-Horse-Battery!"


def _config(
    server: DirectoryServer, ident: int, name: str, kind: str, values: dict[str, Any]
) -> DirectoryConfig:
    base: dict[str, Any] = {
        "id": ident,
        "name": name,
        "kind": kind,
        "urls": (server.url,),
        "ca_pem": Path(server.ca_file).read_text(encoding="ascii"),
        "bind_dn": server.bind_dn,
        "base_dn": server.base_dn,
        "attributes": DEFAULT_ATTRIBUTES[kind],
        "connect_timeout": 3.0,
        "search_timeout": 10.0,
    }
    base.update(values)
    return DirectoryConfig(**base)


def ad_config(dc: SambaDC, **values: Any) -> DirectoryConfig:
    return _config(dc, 1, "corp", "ad", values)


def ldap_config(server: Slapd, **values: Any) -> DirectoryConfig:
    return _config(server, 2, "people", "ldap", values)


async def everyone(reader: LdapDirectory) -> tuple[list[list[DirectoryEntry]], dict[str, Any]]:
    pages = [page async for page in reader.user_pages()]
    by_name = {e.name: e for page in pages for e in page}
    return pages, by_name


@pytest.fixture
def ad(samba_dc: SambaDC) -> tuple[SambaDC, dict[str, str]]:
    """Users and nested groups of one test: vpn <- (alice, team <- (bob)); admins <- team;
    carol outside; dave disabled, erin expired, frank expires next year, all in vpn."""
    dc = samba_dc
    names = {k: dc.new_name(k) for k in ("alice", "bob", "carol", "dave", "erin", "frank")}
    for key, name in names.items():
        dc.add_user(name, PASSWORD, email=f"{name}@corp.example", display_name=key.title())
    vpn, team, admins = (dc.new_name(g) for g in ("vpn", "team", "admins"))
    names.update(vpn=dc.add_group(vpn), team=dc.add_group(team), admins=dc.add_group(admins))
    dc.add_members(team, names["bob"])
    dc.add_members(vpn, names["alice"], team, names["dave"], names["erin"], names["frank"])
    dc.add_members(admins, team)
    dc.disable(names["dave"])
    dc.expire(names["erin"])
    dc.set_expiry(names["frank"], 365)
    return dc, names


# -- Active Directory (Samba) ----------------------------------------------------------------


@pytest.mark.anyio
async def test_ad_selection_nested_groups_admins_and_paging(
    ad: tuple[SambaDC, dict[str, str]],
) -> None:
    dc, n = ad
    reader = LdapDirectory(
        ad_config(dc, group_dn=n["vpn"], admin_group_dn=n["admins"], page_size=2), dc.bind_password
    )
    try:
        report = await reader.test()
        assert report.kind == "ad"
        assert report.url == dc.url
        assert "Active Directory" in report.vendor
        assert (report.users, report.admins) == (5, 1)  # alice, bob (nested), dave, erin, frank

        pages, users = await everyone(reader)
        assert len(pages) >= 3  # 5 users, 2 a page
        assert all(len(page) <= 2 for page in pages)
        assert set(users) == {n[k] for k in ("alice", "bob", "dave", "erin", "frank")}
        bob = users[n["bob"]]
        assert bob.admin  # admins <- team <- bob
        assert not users[n["alice"]].admin
        assert bob.external_id == dc.guid(n["bob"])
        assert bob.email == f"{n['bob']}@corp.example"
        assert bob.display_name == "Bob"
        assert bob.dn.lower() == dc.dn_of(n["bob"]).lower()
        assert (users[n["dave"]].enabled, users[n["dave"]].inactive_reason) == (False, "disabled")
        assert (users[n["erin"]].enabled, users[n["erin"]].inactive_reason) == (False, "expired")
        assert (users[n["frank"]].enabled, users[n["frank"]].inactive_reason) == (True, "")
        assert users[n["alice"]].enabled
    finally:
        await reader.close()


@pytest.mark.anyio
async def test_ad_filter_and_objectguid_across_a_rename(
    ad: tuple[SambaDC, dict[str, str]],
) -> None:
    dc, n = ad
    config = ad_config(dc, group_dn=n["vpn"], user_filter="(mail=*@corp.example)")
    reader = LdapDirectory(config, dc.bind_password)
    try:
        _, before = await everyone(reader)
        guid = before[n["alice"]].external_id
        renamed = dc.new_name("alicia")
        dc.rename(n["alice"], renamed)
        _, after = await everyone(reader)
        assert n["alice"] not in after
        assert after[renamed].external_id == guid
        # By its id, the renamed user is found whatever name is given.
        found = await reader.authenticate("old-name", PASSWORD, external_id=guid)
        assert found.outcome == "ok"
        assert found.entry is not None
        assert found.entry.name == renamed
        # The filter narrows the selection: nobody has a mail at another domain.
        dc.set_attributes(n["frank"], mail="frank@elsewhere.example")
        _, narrowed = await everyone(reader)
        assert n["frank"] not in narrowed
    finally:
        await reader.close()


@pytest.mark.anyio
async def test_ad_password_outcomes_and_samba_diagnostics(
    ad: tuple[SambaDC, dict[str, str]],
) -> None:
    dc, n = ad
    must, locked = dc.new_name("mustchg"), dc.new_name("locked")
    dc.add_user(must, PASSWORD, must_change=True)
    dc.add_user(locked, PASSWORD)
    dc.add_members(n["vpn"], must, locked)
    dc.lock_out(locked)
    reader = LdapDirectory(ad_config(dc, group_dn=n["vpn"]), dc.bind_password)
    try:
        ok = await reader.authenticate(n["alice"], PASSWORD)
        assert ok.accepted
        assert ok.entry is not None
        assert ok.entry.external_id == dc.guid(n["alice"])
        assert ok.detail == ""
        cases = {
            (n["alice"], "Wr0ng-password"): ("wrong-password", "52e"),
            (n["bob"].upper(), "Wr0ng-password"): ("wrong-password", "52e"),
            (n["dave"], PASSWORD): ("disabled", "533"),
            (n["erin"], PASSWORD): ("expired", "701"),
            (must, PASSWORD): ("must-change", "773"),
            (locked, PASSWORD): ("locked", "775"),
        }
        for (name, password), (outcome, code) in cases.items():
            result = await reader.authenticate(name, password)
            assert result.outcome == outcome, (name, result)
            # Samba's own message, e.g. "80090308: LdapErr: DSID-0C0903A9, comment:
            # AcceptSecurityContext error, data 52e, v1db1": the pure map reads it the same.
            assert f"data {code}" in result.detail
            message = result.detail.split(": ", 1)[1]
            assert bind_refusal_outcome("invalidCredentials", message) == outcome
            assert password not in result.detail
        # Refused before any bind: an empty password would be an anonymous bind (a "success").
        empty = await reader.authenticate(n["alice"], "")
        assert empty.outcome == "empty-password"
        assert (await reader.authenticate(n["carol"], PASSWORD)).outcome == "no-such-user"
        assert (await reader.authenticate("nobody-here", PASSWORD)).outcome == "no-such-user"
        # Filter injection: the name is a value, never filter syntax.
        for attack in ("*", f"{n['alice'][:3]}*", f"{n['alice']})(sAMAccountName=*"):
            assert (await reader.authenticate(attack, PASSWORD)).outcome == "no-such-user"
        assert (await reader.authenticate("", PASSWORD)).outcome == "no-such-user"
        assert (
            await reader.authenticate("x", PASSWORD, external_id="not-a-uuid")
        ).outcome == "no-such-user"
    finally:
        await reader.close()


@pytest.mark.anyio
async def test_ad_starttls_failover_and_refusals(samba_dc: SambaDC) -> None:
    dc = samba_dc
    user = dc.add_user(dc.new_name("tls"), PASSWORD)
    dead = f"ldaps://127.0.0.1:{free_port()}"
    reader = LdapDirectory(ad_config(dc, urls=(dead, dc.starttls_url)), dc.bind_password)
    try:
        report = await reader.test()
        assert report.url == dc.starttls_url  # the dead first URL was skipped
        assert report.kind == "ad"
        assert (await reader.authenticate(user.name, PASSWORD)).accepted
    finally:
        await reader.close()

    wrong = LdapDirectory(ad_config(dc), "not-the-password")
    try:
        with pytest.raises(DirectoryError, match="refused the service account's bind") as caught:
            await wrong.test()
        assert "not-the-password" not in str(caught.value)
        # A password check with a broken service account is a refusal, never a pass.
        assert (await wrong.authenticate(user.name, PASSWORD)).outcome == "unavailable"
    finally:
        await wrong.close()

    untrusted = LdapDirectory(ad_config(dc, ca_pem=a_ca_pem("Someone Else")), dc.bind_password)
    try:
        with pytest.raises(DirectoryUnavailable, match="certificate not trusted: give --ca-file"):
            await untrusted.test()
        assert (await untrusted.authenticate(user.name, PASSWORD)).outcome == "unavailable"
    finally:
        await untrusted.close()


# -- OpenLDAP (slapd) ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ldap_selection_memberof_paging_admins_and_rename(slapd: Slapd) -> None:
    prefix = slapd.new_name("pg")
    names = [f"{prefix}{i}" for i in range(5)]
    for i, name in enumerate(names):
        slapd.add_user(name, PASSWORD, email=f"{name}@example.org", phone=f"+1 555 000{i}")
    outsider = slapd.add_user(slapd.new_name("out"), PASSWORD)
    group = slapd.add_group(slapd.new_name("vpn"), *names[:4])
    admins = slapd.add_group(slapd.new_name("adm"), names[1])
    config = ldap_config(
        slapd,
        urls=(slapd.starttls_url,),  # StartTLS before the bind
        user_filter=f"(uid={prefix}*)",
        page_size=2,
    )
    reader = LdapDirectory(config, slapd.bind_password)
    try:
        report = await reader.test()
        assert (report.kind, report.users, report.admins) == ("ldap", 5, 0)
        pages, users = await everyone(reader)
        assert len(pages) == 3
        assert set(users) == set(names)
        assert users[names[2]].external_id == slapd.entry_uuid(names[2])
        assert users[names[2]].phone == "+1 555 0002"
    finally:
        await reader.close()

    grouped = LdapDirectory(
        ldap_config(slapd, group_dn=group, admin_group_dn=admins, page_size=3),
        slapd.bind_password,
    )
    try:
        report = await grouped.test()
        assert (report.users, report.admins) == (4, 1)
        _, users = await everyone(grouped)
        assert set(users) == set(names[:4])
        assert users[names[1]].admin
        assert not users[names[0]].admin
        uuid_before = users[names[0]].external_id
        renamed = slapd.new_name("ren")
        slapd.rename(names[0], renamed)
        _, after = await everyone(grouped)
        assert after[renamed].external_id == uuid_before
        assert (await grouped.authenticate(renamed, PASSWORD)).accepted
        assert (await grouped.authenticate(outsider.name, PASSWORD)).outcome == "no-such-user"
        assert (await grouped.authenticate(names[4], PASSWORD)).outcome == "no-such-user"
    finally:
        await grouped.close()


@pytest.mark.anyio
async def test_ldap_groups_without_memberof(slapd: Slapd) -> None:
    """posixGroup (memberUid) and groupOfUniqueNames (which the memberof overlay does not
    maintain): membership read from the group itself."""
    a, b, c = (slapd.add_user(slapd.new_name(p), PASSWORD) for p in ("ua", "ub", "uc"))
    posix = slapd.add_posix_group(slapd.new_name("px"), a.name, b.name)
    unique_dn = f"cn={slapd.new_name('uq')},{slapd.groups_dn}"
    admin = connect(slapd.url, Path(slapd.ca_file), slapd.admin_dn, slapd.admin_password)
    try:
        assert admin.add(  # type: ignore[no-untyped-call]
            unique_dn,
            ["groupOfUniqueNames"],
            {"cn": unique_dn.split(",")[0][3:], "uniqueMember": [b.dn, c.dn]},
        )
    finally:
        admin.unbind()
    reader = LdapDirectory(
        ldap_config(slapd, group_dn=posix, admin_group_dn=unique_dn), slapd.bind_password
    )
    try:
        report = await reader.test()
        assert (report.users, report.admins) == (2, 1)
        _, users = await everyone(reader)
        assert set(users) == {a.name, b.name}
        assert users[b.name].admin
        assert not users[a.name].admin
        ok = await reader.authenticate(b.name, PASSWORD)
        assert ok.accepted
        assert ok.entry is not None
        assert ok.entry.admin
        assert (await reader.authenticate(c.name, PASSWORD)).outcome == "no-such-user"
    finally:
        await reader.close()


@pytest.mark.anyio
async def test_ldap_password_outcomes(slapd: Slapd) -> None:
    user = slapd.add_user(slapd.new_name("pw"), PASSWORD)
    reader = LdapDirectory(ldap_config(slapd), slapd.bind_password)
    try:
        ok = await reader.authenticate(user.name, PASSWORD)
        assert ok.accepted
        assert ok.entry is not None
        assert ok.entry.external_id == slapd.entry_uuid(user.name)
        by_id = await reader.authenticate("", PASSWORD, external_id=ok.entry.external_id)
        assert by_id.accepted
        wrong = await reader.authenticate(user.name, "Wr0ng")
        assert wrong.outcome == "wrong-password"
        assert "Wr0ng" not in wrong.detail
        assert (await reader.authenticate(user.name, "")).outcome == "empty-password"
        for attack in ("*", f"{user.name[:3]}*", f"{user.name})(uid=*", "\\2a"):
            assert (await reader.authenticate(attack, PASSWORD)).outcome == "no-such-user"
    finally:
        await reader.close()


@pytest.fixture
def own_slapd(tmp_path: Path) -> Iterator[Slapd]:
    with running_slapd(tmp_path / "slapd") as server:
        yield server


@pytest.mark.anyio
async def test_a_dropped_pooled_connection_is_rebuilt_and_outages_are_unavailable(
    own_slapd: Slapd,
) -> None:
    user = own_slapd.add_user(own_slapd.new_name("pool"), PASSWORD)
    reader = LdapDirectory(ldap_config(own_slapd), own_slapd.bind_password)
    try:
        assert (await reader.authenticate(user.name, PASSWORD)).accepted  # pools a connection
        own_slapd.stop()
        down = await reader.authenticate(user.name, PASSWORD)
        assert down.outcome == "unavailable"
        with pytest.raises(DirectoryUnavailable, match="no server of the directory people"):
            await reader.test()
        own_slapd.start()
        assert (await reader.authenticate(user.name, PASSWORD)).accepted
        assert (await reader.test()).users >= 1
    finally:
        await reader.close()


@pytest.mark.anyio
async def test_a_silent_server_never_blocks_the_event_loop(slapd: Slapd) -> None:
    """A server that accepts and never answers: the adapter waits in its threads, the loop
    keeps running, and the answer is "unavailable" after the timeouts."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"ldaps://127.0.0.1:{silent.getsockname()[1]}"
        reader = LdapDirectory(
            ldap_config(slapd, urls=(url,), connect_timeout=1.0, search_timeout=1.0),
            slapd.bind_password,
        )
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        try:
            result = await reader.authenticate("anyone", PASSWORD)
        finally:
            task.cancel()
            await reader.close()
        elapsed = time.monotonic() - started
        assert result.outcome == "unavailable"
        assert elapsed < 8
        assert ticks >= elapsed / 0.01 * 0.5  # the loop ran all along

        # Checks beyond the threads and the waiting room are refused at once, not queued.
        bounded = LdapDirectory(
            ldap_config(slapd, urls=(url,), connect_timeout=1.0, search_timeout=1.0),
            slapd.bind_password,
            max_workers=1,
            max_waiting=1,
        )
        try:
            first, second = (
                asyncio.create_task(bounded.authenticate(f"u{i}", PASSWORD)) for i in (1, 2)
            )
            await asyncio.sleep(0)  # both admitted: one running, one waiting
            started = time.monotonic()
            third = await bounded.authenticate("u3", PASSWORD)
            assert third.outcome == "unavailable"
            assert "already wait" in third.detail
            assert time.monotonic() - started < 0.5
            assert (await first).outcome == (await second).outcome == "unavailable"
        finally:
            await bounded.close()


class TlsListener:
    """A TLS server on 127.0.0.1 that completes handshakes (or fails them) and then hangs up:
    enough to see what the adapter's certificate checks say, without LDAP."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                self._context.wrap_socket(conn, server_side=True).close()

    def close(self) -> None:
        self._sock.close()
        self._thread.join(timeout=5)


@pytest.mark.anyio
async def test_certificates_that_do_not_name_the_host_or_are_not_trusted(
    tmp_path: Path, slapd: Slapd
) -> None:
    elsewhere = make_tls(tmp_path / "elsewhere", hosts=("elsewhere.example",))
    listener = TlsListener(elsewhere.server_context())
    try:
        url = f"ldaps://127.0.0.1:{listener.port}"
        trusted_ca = elsewhere.ca_file.read_text(encoding="ascii")
        for ca, message in (
            (trusted_ca, "certificate does not name the host of the URL"),
            (a_ca_pem("Another CA"), "certificate not trusted: give --ca-file"),
            (None, "certificate not trusted: give --ca-file"),  # the system's store
        ):
            reader = LdapDirectory(ldap_config(slapd, urls=(url,), ca_pem=ca), "pw")
            try:
                with pytest.raises(DirectoryUnavailable, match=message):
                    await reader.test()
            finally:
                await reader.close()
    finally:
        listener.close()


def test_the_tls_context_verifies_names_and_refuses_old_protocols() -> None:
    context = tls_context(a_ca_pem())
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1  # the private CA alone, not the system's store


@pytest.mark.anyio
async def test_closing_a_reader_during_a_paged_read_ends_it_cleanly(slapd: Slapd) -> None:
    """The service replaces a reader when its settings change, perhaps while a sync reads
    pages: the read stops with DirectoryUnavailable and its connection is released."""
    prefix = slapd.new_name("cl")
    for i in range(4):
        slapd.add_user(f"{prefix}{i}", PASSWORD)
    reader = LdapDirectory(
        ldap_config(slapd, user_filter=f"(uid={prefix}*)", page_size=1), slapd.bind_password
    )
    pages = reader.user_pages()
    first = await anext(pages)
    assert len(first) == 1
    await reader.close()
    with pytest.raises(DirectoryUnavailable, match="closed"):
        await anext(pages)
    await pages.aclose()


@pytest.mark.anyio
async def test_a_silent_first_server_is_tried_last_for_a_while(slapd: Slapd) -> None:
    """Failover: the first URL accepts connections and never answers. The first connection
    waits out the timeout and moves on; the next ones go to the live server first."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        dead = f"ldaps://127.0.0.1:{silent.getsockname()[1]}"
        reader = LdapDirectory(
            ldap_config(slapd, urls=(dead, slapd.url), connect_timeout=1.0, search_timeout=1.0),
            slapd.bind_password,
        )
        try:
            started = time.monotonic()
            report = await reader.test()
            assert report.url == slapd.url
            assert time.monotonic() - started >= 0.9  # waited for the silent one
            started = time.monotonic()
            url, conn = await asyncio.to_thread(reader._open, slapd.bind_dn, slapd.bind_password)
            conn.unbind()
            assert url == slapd.url
            assert time.monotonic() - started < 0.9  # the silent one was not tried first
        finally:
            await reader.close()
