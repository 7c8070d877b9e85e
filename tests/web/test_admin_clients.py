"""Admin console, RADIUS clients: every form over real HTTP, the secret shown once, CSRF,
access control, validation beside the field, and the Status-Server test against a real
bridge over UDP (and against ports where nothing or nobody answers)."""

from __future__ import annotations

import dataclasses
import html
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from backend.config import Settings
from backend.services import radius_status
from radius_bridge.config import ListenAddress
from tests.support.api import ADMIN
from tests.support.bridge import BridgeThread, bridge_settings
from tests.support.clock import FakeClock
from tests.support.process import wait_for
from tests.support.web import (
    WebHarness,
    csrf_from,
    post_form,
    sign_in,
)

_SECRET_FIELD = re.compile(r'id="shared-secret"[^>]*value="([^"]+)"')


def form(**values: str) -> dict[str, str]:
    """A complete add/edit form as the page posts it (defaults of a new client)."""
    data = {
        "name": "asa1",
        "addresses": "10.0.0.1",
        "secret_choice": "generate",
        "secret": "",
        "mode": "push",
        "primary": "none",
        "upstream": "",
        "upstream_secret": "",
        "upstream_timeout": "10",
        "require_message_authenticator": "on",
        "failmode": "secure",
        "unenrolled": "reject",
        "push_timeout": "55",
        "prompt": "Approve the sign-in on your phone, or type the code from the app",
        "name_format": "strip",
        "realm_map": "",
        "exempt_users": "",
        "exempt_networks": "",
        "password_separator": ",",
        "reply_attributes": "",
        "number_matching": "policy",
    }
    data.update(values)
    if data["require_message_authenticator"] == "":
        del data["require_message_authenticator"]  # an unchecked box is not sent
    return data


def shown_secret(page: str) -> str:
    match = _SECRET_FIELD.search(page)
    assert match is not None, "the page shows no secret"
    return html.unescape(match.group(1))


def stored_secret(web: WebHarness, name: str) -> str:
    document = web.run(web.services.radius_clients.document())
    [entry] = [c for c in document.clients if c["name"] == name]
    secret: str = entry["secret"]
    return secret


def field_error(page: str, name: str) -> str:
    match = re.search(rf'id="f-{name}-error">([^<]*)<', page)
    assert match is not None, f"no error beside {name}"
    return html.unescape(match.group(1))


def add(browser: httpx.Client, **values: str) -> httpx.Response:
    return post_form(browser, "/admin/clients/new", form(**values))


def edit(browser: httpx.Client, name: str, **values: str) -> httpx.Response:
    return post_form(browser, f"/admin/clients/{name}/edit", form(name=name, **values))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def harness(settings: Settings, clock: FakeClock, **changes: object) -> Iterator[WebHarness]:
    with WebHarness(settings.model_copy(update=changes), clock) as web:
        yield web


# -- access ---------------------------------------------------------------------------------


def test_pages_need_an_admin(web: WebHarness) -> None:
    anonymous = web.browser()
    for path in ("/admin/clients", "/admin/clients/new", "/admin/tokens"):
        response = anonymous.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/admin/sign-in")
    web.add_user("bob")
    user = web.browser()
    assert sign_in(user, "bob").status_code == 303  # a portal session
    assert user.get("/admin/clients").status_code == 303
    assert sign_in(user, "bob", area="admin").status_code == 403  # not an administrator
    assert user.get("/admin/clients/new").status_code == 303
    # A state change without an admin session gets nowhere.
    portal_page = user.get("/portal/").text
    response = user.post(
        "/admin/clients/new", data={"csrf_token": csrf_from(portal_page), **form()}
    )
    assert response.status_code in (303, 403)
    assert web.run(web.services.radius_clients.list()) == []


def test_empty_list_says_what_to_do(web: WebHarness) -> None:
    page = web.admin_browser().get("/admin/clients")
    assert page.status_code == 200
    assert "No RADIUS clients yet" in page.text
    assert 'href="/admin/clients/new"' in page.text
    assert 'href="/admin/clients" aria-current="page"' in page.text


# -- add ------------------------------------------------------------------------------------


def test_generated_secret_is_shown_once_and_never_again(web: WebHarness) -> None:
    admin = web.admin_browser()
    response = add(admin, name="asa1", addresses="10.0.0.1\r\n10.0.0.2")
    assert response.status_code == 200
    secret = shown_secret(response.text)
    assert len(secret) >= 32
    assert stored_secret(web, "asa1") == secret
    assert "only time the secret is shown" in response.text
    assert "Set the gateway's RADIUS timeout above the push timeout (55 s)" in response.text
    for path in ("/admin/clients", "/admin/clients/asa1/edit", "/admin/clients/new"):
        page = admin.get(path)
        assert page.status_code == 200
        assert secret not in page.text, path
    assert "set (32 bytes); never shown again" in admin.get("/admin/clients/asa1/edit").text
    [row] = web.audit("radius_client.add")
    assert row.actor == "admin:root"
    assert row.result == "ok"
    assert secret not in (row.detail or "")
    record = web.run(web.services.radius_clients.get("asa1"))
    assert record.addresses == ("10.0.0.1", "10.0.0.2")


def test_entered_secret_is_stored_and_shown_once(web: WebHarness) -> None:
    admin = web.admin_browser()
    response = add(admin, secret_choice="enter", secret="short-one")
    assert response.status_code == 200
    assert shown_secret(response.text) == "short-one"
    assert stored_secret(web, "asa1") == "short-one"
    assert "The shared secret is short (9 bytes)" in response.text
    assert "short-one" not in admin.get("/admin/clients/asa1/edit").text


def test_every_setting_is_stored(web: WebHarness) -> None:
    admin = web.admin_browser()
    response = add(
        admin,
        name="vpn",
        addresses="10.0.0.5/24, 2001:db8::/64",
        mode="challenge",
        primary="radius",
        upstream="nps.corp.example:1645",
        upstream_secret="upstream-secret-0123456789",
        upstream_timeout="7.5",
        require_message_authenticator="",
        failmode="safe",
        unenrolled="allow",
        push_timeout="40",
        prompt="Approve on your phone\r\nor type the code",
        name_format="map",
        realm_map="partner.example={user}.partner\r\n",
        exempt_users="svc-backup\r\nSVC-Monitor",
        exempt_networks="192.0.2.0/24",
        password_separator="|",
        reply_attributes="Filter-Id=vpn-users\r\nTunnel-Private-Group-Id:1=42\r\n"
        "Cisco-AVPair=ip:inacl#1=permit ip any any",
        number_matching="on",
    )
    assert response.status_code == 200, response.text
    assert "10.0.0.5/24 has host bits set; it is stored as 10.0.0.0/24." in response.text
    assert "Message-Authenticator is not required" in response.text
    r = web.run(web.services.radius_clients.get("vpn"))
    assert r.addresses == ("10.0.0.0/24", "2001:db8::/64")
    assert (r.mode, r.primary, r.failmode, r.unenrolled) == ("challenge", "radius", "safe", "allow")
    assert r.upstream is not None
    assert (r.upstream.host, r.upstream.port, r.upstream.timeout) == ("nps.corp.example", 1645, 7.5)
    assert r.require_message_authenticator is False
    assert r.push_timeout == 40
    assert r.prompt == "Approve on your phone\nor type the code"
    assert r.name_format == "map"
    assert r.realm_map == (("partner.example", "{user}.partner"),)
    assert r.exempt_users == ("svc-backup", "svc-monitor")
    assert r.exempt_networks == ("192.0.2.0/24",)
    assert r.password_separator == "|"
    assert r.reply_attributes == (
        ("Filter-Id", "vpn-users"),
        ("Tunnel-Private-Group-Id:1", "42"),
        ("Cisco-AVPair", "ip:inacl#1=permit ip any any"),
    )
    assert r.number_matching == "on"
    listing = admin.get("/admin/clients").text
    assert "OFF" in listing
    assert "nps.corp.example" in listing
    edit_page = admin.get("/admin/clients/vpn/edit").text
    assert "upstream-secret-0123456789" not in edit_page
    assert "BlastRADIUS, CVE-2024-3596" in edit_page  # the warning beside the unchecked box
    assert "nps.corp.example:1645" in edit_page


def test_validation_errors_are_shown_beside_the_fields(web: WebHarness) -> None:
    admin = web.admin_browser()
    response = add(
        admin,
        name="bad name!",
        addresses="10.0.0.1, not-an-address",
        secret_choice="enter",
        secret="",
        push_timeout="1",
        prompt="x" * 300,
        password_separator="a",
        reply_attributes="No-Such-Attribute=1",
        exempt_networks="0.0.0.0/0",
        exempt_users="svc-ok\r\nbad/user",
        primary="radius",
        upstream="",
        name_format="map",
        realm_map="partner.example=nouser",
    )
    assert response.status_code == 400
    page = response.text
    assert "client names are 1-64 characters" in field_error(page, "name").lower()
    assert "'not-an-address' is not an IP address" in field_error(page, "addresses")
    assert field_error(page, "secret") == "Type the shared secret, or choose to have one generated."
    assert "from 5 to 600 seconds" in field_error(page, "push_timeout")
    assert "253" in field_error(page, "prompt")
    assert "separator" in field_error(page, "password_separator")
    assert "Unknown reply attribute 'No-Such-Attribute'" in field_error(page, "reply_attributes")
    assert "Primary radius needs the upstream server" in field_error(page, "upstream")
    assert "upstream server's secret" in field_error(page, "upstream_secret")
    assert "{user}" in field_error(page, "realm_map")
    assert "exempt user" in field_error(page, "exempt_users").lower()
    assert 'aria-invalid="true"' in page
    assert "Please correct the" in page
    # What was typed is kept (secrets never echoed); nothing is stored.
    assert "not-an-address" in page
    assert "No-Such-Attribute=1" in page
    assert web.run(web.services.radius_clients.list()) == []
    [row] = web.audit("radius_client.add")
    assert row.result == "refused"
    assert "addresses" in (row.detail or "")


def test_cross_field_rules_come_from_the_service(web: WebHarness) -> None:
    admin = web.admin_browser()
    assert add(admin, name="asa1", addresses="10.0.0.1").status_code == 200
    taken = add(admin, name="asa2", addresses="10.0.0.1")
    assert taken.status_code == 400
    assert "already an address of the client 'asa1'" in field_error(taken.text, "addresses")
    same_name = add(admin, name="ASA1", addresses="10.0.0.9")
    assert same_name.status_code == 400
    assert "already exists" in field_error(same_name.text, "name")
    everyone = add(admin, name="x", exempt_networks="::/0")
    assert everyone.status_code == 400
    assert "every caller" in field_error(everyone.text, "exempt_networks")
    assert [c.name for c in web.run(web.services.radius_clients.list())] == ["asa1"]


def test_a_secret_entered_with_an_error_elsewhere_is_not_echoed(web: WebHarness) -> None:
    admin = web.admin_browser()
    response = add(
        admin, addresses="nope", secret_choice="enter", secret="typed-secret-value-123456"
    )
    assert response.status_code == 400
    assert "typed-secret-value-123456" not in response.text


# -- edit, rotate, remove ---------------------------------------------------------------------


def test_edit_changes_settings_and_keeps_the_secret(web: WebHarness) -> None:
    admin = web.admin_browser()
    secret = shown_secret(add(admin, name="asa1").text)
    response = edit(
        admin, "asa1", secret_choice="keep", mode="challenge", require_message_authenticator=""
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/clients/asa1/edit"
    page = admin.get("/admin/clients/asa1/edit").text
    assert "asa1 changed: mode, require_message_authenticator." in page
    assert "Message-Authenticator is not required" in page  # the warning, as a flash
    assert secret not in page
    assert stored_secret(web, "asa1") == secret
    [row] = web.audit("radius_client.update")
    assert row.detail == "asa1: mode, require_message_authenticator"
    # Saving the same values again changes nothing.
    again = edit(
        admin, "asa1", secret_choice="keep", mode="challenge", require_message_authenticator=""
    )
    assert again.status_code == 303
    assert "asa1 unchanged." in admin.get("/admin/clients/asa1/edit").text


def test_rotating_shows_the_new_secret_once(web: WebHarness) -> None:
    admin = web.admin_browser()
    old = shown_secret(add(admin, name="asa1").text)
    response = edit(admin, "asa1", secret_choice="generate")
    assert response.status_code == 200
    new = shown_secret(response.text)
    assert new != old
    assert stored_secret(web, "asa1") == new
    assert "New shared secret for asa1" in response.text
    assert new not in admin.get("/admin/clients/asa1/edit").text
    typed = edit(admin, "asa1", secret_choice="enter", secret="a-typed-secret-of-enough-length")
    assert typed.status_code == 303
    assert stored_secret(web, "asa1") == "a-typed-secret-of-enough-length"
    assert "secret" in (web.audit("radius_client.update")[0].detail or "")


def test_upstream_secret_is_kept_when_left_empty(web: WebHarness) -> None:
    admin = web.admin_browser()
    add(
        admin,
        primary="radius",
        upstream="10.0.0.5",
        upstream_secret="the-upstream-secret-123",
    )
    response = edit(admin, "asa1", secret_choice="keep", primary="radius", upstream="10.0.0.6:1812")
    assert response.status_code == 303
    document = web.run(web.services.radius_clients.document())
    assert document.clients[0]["upstream"] == {
        "host": "10.0.0.6",
        "port": 1812,
        "secret": "the-upstream-secret-123",
        "timeout": 10.0,
    }
    # Switching away drops it; switching back needs the secret again.
    assert edit(admin, "asa1", secret_choice="keep", primary="none").status_code == 303
    back = edit(admin, "asa1", secret_choice="keep", primary="radius", upstream="10.0.0.6")
    assert back.status_code == 400
    assert "upstream server's secret" in field_error(back.text, "upstream_secret")


def test_edit_validation_error_keeps_the_client(web: WebHarness) -> None:
    admin = web.admin_browser()
    add(admin)
    response = edit(admin, "asa1", secret_choice="keep", addresses="")
    assert response.status_code == 400
    assert "at least one address" in field_error(response.text, "addresses")
    assert web.run(web.services.radius_clients.get("asa1")).addresses == ("10.0.0.1",)
    assert web.audit("radius_client.update")[0].result == "refused"


def test_remove_asks_and_removes(web: WebHarness) -> None:
    admin = web.admin_browser()
    add(admin)
    page = admin.get("/admin/clients/asa1/edit").text
    assert 'action="/admin/clients/asa1/remove" data-confirm="Remove the RADIUS client asa1?' in (
        page
    )
    response = admin.post("/admin/clients/asa1/remove", data={"csrf_token": csrf_from(page)})
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/clients"
    assert "RADIUS client asa1 removed." in admin.get("/admin/clients").text
    assert web.run(web.services.radius_clients.list()) == []
    assert web.audit("radius_client.remove")[0].detail == "asa1"
    assert admin.get("/admin/clients/asa1/edit").status_code == 404


def test_forms_without_the_csrf_token_are_refused(web: WebHarness) -> None:
    admin = web.admin_browser()
    add(admin)
    for path, data in (
        ("/admin/clients/new", form(name="asa2", addresses="10.0.0.2")),
        ("/admin/clients/asa1/edit", form(mode="otp")),
        ("/admin/clients/asa1/remove", {}),
        ("/admin/clients/asa1/test", {}),
    ):
        for token in ({}, {"csrf_token": "wrong"}):
            response = admin.post(path, data={**data, **token})
            assert response.status_code == 403, path
    records = web.run(web.services.radius_clients.list())
    assert [(r.name, r.mode) for r in records] == [("asa1", "push")]
    assert len([r for r in web.refusals() if r.result == "csrf-failed"]) == 8


# -- the Status-Server test -------------------------------------------------------------------


def test_status_server_against_a_real_bridge(settings: Settings, clock: FakeClock) -> None:
    port = free_udp_port()
    with harness(settings, clock, radius_host="127.0.0.1", radius_port=port) as web:
        token = web.run(web.services.tokens.create(ADMIN, "lab", scope="bridge"))
        config = dataclasses.replace(
            bridge_settings(web.url, token), listen=(ListenAddress("127.0.0.1", port),)
        )
        with BridgeThread(config) as bridge:
            admin = web.admin_browser()
            add(admin, name="local", addresses="127.0.0.1")
            revision = web.run(web.services.radius_clients.revision())
            wait_for(lambda: bridge.revision == revision, 10, "the bridge to load the client")
            page = admin.get("/admin/clients/local/edit").text
            response = admin.post("/admin/clients/local/test", data={"csrf_token": csrf_from(page)})
            assert response.status_code == 200
            assert "Status-Server test: answered" in response.text
            assert re.search(
                rf"The bridge at 127\.0\.0\.1:{port} answered Access-Accept, signed with this "
                r"client&#39;s secret, in [0-9.]+ ms\.",
                response.text,
            )
            [row] = web.audit("radius_client.test")
            assert row.result == "answered"
            assert row.detail is not None
            assert row.detail.startswith("local rtt=")

            # A client the server's address does not belong to cannot be tested from here.
            add(admin, name="asa1", addresses="10.0.0.1")
            page = admin.get("/admin/clients/asa1/edit").text
            other = admin.post("/admin/clients/asa1/test", data={"csrf_token": csrf_from(page)})
            assert (
                "Not sent: the test would come from 127.0.0.1 and the bridge takes it for "
                "client local" in other.text
            )
            assert "add 127.0.0.1 to its addresses" in other.text


def test_status_server_where_nothing_listens(settings: Settings, clock: FakeClock) -> None:
    port = free_udp_port()  # closed again: loopback answers with ICMP port unreachable
    with harness(settings, clock, radius_host="127.0.0.1", radius_port=port) as web:
        admin = web.admin_browser()
        add(admin, name="local", addresses="127.0.0.0/8")
        page = admin.get("/admin/clients/local/edit").text
        started = time.monotonic()
        response = admin.post("/admin/clients/local/test", data={"csrf_token": csrf_from(page)})
        assert time.monotonic() - started < radius_status.TIMEOUT_SECONDS + 2
        assert response.status_code == 200
        assert f"Nothing listens on 127.0.0.1:{port}" in response.text


def test_status_server_where_nobody_answers_is_bounded(
    settings: Settings, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(radius_status, "TIMEOUT_SECONDS", 0.6)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as black_hole:
        black_hole.bind(("127.0.0.1", 0))  # receives, never answers
        port = black_hole.getsockname()[1]
        with harness(settings, clock, radius_host="127.0.0.1", radius_port=port) as web:
            admin = web.admin_browser()
            add(admin, name="local", addresses="127.0.0.1")
            page = admin.get("/admin/clients/local/edit").text
            started = time.monotonic()
            response = admin.post("/admin/clients/local/test", data={"csrf_token": csrf_from(page)})
            elapsed = time.monotonic() - started
            assert 0.5 < elapsed < 3.0
            assert f"No answer from 127.0.0.1:{port} within 0.6 s." in response.text
            # The probe did arrive (twice: sent again half-way), signed with the secret.
            black_hole.settimeout(1)
            first = black_hole.recv(4096)
            assert first[0] == 12  # Status-Server
            assert black_hole.recv(4096) == first
            assert web.audit("radius_client.test")[0].result == "no-answer"


def test_status_server_when_the_bridge_is_off(settings: Settings, clock: FakeClock) -> None:
    with harness(settings, clock, radius_port=0) as web:
        admin = web.admin_browser()
        add(admin)
        page = admin.get("/admin/clients/asa1/edit").text
        response = admin.post("/admin/clients/asa1/test", data={"csrf_token": csrf_from(page)})
        assert "The RADIUS bridge is off on this server (radius_port is 0)" in response.text


def test_unknown_client_is_404(web: WebHarness) -> None:
    admin = web.admin_browser()
    assert admin.get("/admin/clients/nope/edit").status_code == 404
    page = admin.get("/admin/clients").text
    response = admin.post("/admin/clients/nope/test", data={"csrf_token": csrf_from(page)})
    assert response.status_code == 404


# -- RadSec ---------------------------------------------------------------------------------------


def test_a_radsec_client_shows_its_certificates_and_keeps_them_on_edit(web: WebHarness) -> None:
    from backend.domain.radius import ClientChanges

    fingerprint = "SHA256:" + ":".join(["4E"] * 32)
    web.run(
        web.services.radius_clients.add(
            ADMIN, "branch1", ClientChanges(radsec_fingerprints=[fingerprint])
        )
    )
    admin = web.admin_browser()
    assert "RadSec" in admin.get("/admin/clients").text
    page = admin.get("/admin/clients/branch1/edit").text
    assert fingerprint in page
    assert "RadSec only" in page
    # The form knows nothing of certificates: changing the mode there keeps them.
    response = edit(
        admin,
        "branch1",
        secret_choice="keep",
        addresses="0.0.0.0/0\r\n::/0",
        mode="challenge",
    )
    assert response.status_code == 303, response.text
    record = web.run(web.services.radius_clients.get("branch1"))
    assert record.mode == "challenge"
    assert record.radsec_fingerprints == (fingerprint,)
    assert record.secret_bytes == 0
