"""Admin console, Directories: the list with each directory's settings in short; Test against
a directory that is down (a real refused TCP connection: an error shown, audited) and against
a real OpenLDAP server (the group's members counted); administrators only, CSRF."""

from __future__ import annotations

import gc
import html
import socket
import warnings
from pathlib import Path

from backend.directory.settings import DirectorySettings
from tests.support.api import ADMIN
from tests.support.slapd import Slapd
from tests.support.web import WebHarness, csrf_from, sign_in

BIND = "S3rvice-Acc0unt-Passw0rd!"


def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def add_directory(web: WebHarness, name: str, url: str) -> None:
    settings = DirectorySettings(
        name=name,
        urls=(url,),
        bind_dn="CN=svc-openmfa,OU=Service,DC=corp,DC=example",
        base_dn="DC=corp,DC=example",
        kind="ad",
        group_dn="CN=VPN Users,OU=Groups,DC=corp,DC=example",
        connect_timeout=2,
    )
    web.run(web.services.directories.add(ADMIN, settings, BIND))


def test_the_list_and_access(web: WebHarness) -> None:
    assert web.browser().get("/admin/directories").status_code == 303
    web.add_user("bob")
    user = web.browser()
    sign_in(user, "bob")
    assert user.get("/admin/directories").status_code == 303
    admin = web.admin_browser()
    empty = admin.get("/admin/directories")
    assert empty.status_code == 200
    assert "No directories yet" in empty.text
    add_directory(web, "corp", "ldaps://dc1.corp.example")
    page = html.unescape(admin.get("/admin/directories").text)
    assert "corp" in page
    assert "ldaps://dc1.corp.example" in page
    assert "CN=VPN Users,OU=Groups,DC=corp,DC=example" in page
    assert BIND not in page


def test_test_of_a_directory_that_is_down_shows_why(web: WebHarness) -> None:
    admin = web.admin_browser()
    add_directory(web, "down", f"ldaps://127.0.0.1:{closed_port()}")
    page = admin.get("/admin/directories")
    response = admin.post("/admin/directories/down/test", data={"csrf_token": csrf_from(page.text)})
    assert response.status_code == 502
    text = html.unescape(response.text)
    assert "Test of down failed" in text
    assert BIND not in text
    assert [e.result for e in web.audit("directory.test")][:1] != ["ok"]
    # ldap3 leaves the socket of a refused connect for the garbage collector (seen with
    # ldap3 2.9): collect it here, so its ResourceWarning does not land in another test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_test_of_a_real_openldap_directory(web: WebHarness, slapd: Slapd) -> None:
    admin = web.admin_browser()
    group = slapd.new_name("vpn")
    alice = slapd.add_user(slapd.new_name("alice"), "Alice-Passw0rd!")
    bob = slapd.add_user(slapd.new_name("bob"), "Bob-Passw0rd!")
    group_dn = slapd.add_group(group, alice.name, bob.name)
    settings = DirectorySettings(
        name="lab",
        urls=(slapd.url,),
        bind_dn=slapd.bind_dn,
        base_dn=slapd.base_dn,
        kind="ldap",
        ca_pem=Path(slapd.ca_file).read_text(),
        group_dn=group_dn,
    )
    web.run(web.services.directories.add(ADMIN, settings, slapd.bind_password))
    page = admin.get("/admin/directories")
    response = admin.post("/admin/directories/lab/test", data={"csrf_token": csrf_from(page.text)})
    assert response.status_code == 200, response.text
    text = html.unescape(response.text)
    assert f"Test of lab: {slapd.url} answered (ldap" in text
    assert "the service account's bind worked; 2 user(s) selected" in text
    assert slapd.bind_password not in text
    assert [e.result for e in web.audit("directory.test")][:1] == ["ok"]


def test_test_needs_csrf_and_a_known_directory(web: WebHarness) -> None:
    admin = web.admin_browser()
    assert admin.post("/admin/directories/corp/test").status_code == 403
    page = admin.get("/admin/directories")
    missing = admin.post("/admin/directories/nope/test", data={"csrf_token": csrf_from(page.text)})
    assert missing.status_code == 303
    assert "no directory named nope" in html.unescape(admin.get("/admin/directories").text)
