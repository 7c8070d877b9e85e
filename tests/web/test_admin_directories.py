"""Admin console, Directories: the list with each directory's settings in short; Test against
a directory that is down (a real refused TCP connection: an error shown, audited) and against
a real OpenLDAP server (the group's members counted); administrators only, CSRF."""

from __future__ import annotations

import gc
import html
import socket
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from backend.directory.settings import DirectorySettings
from backend.errors import SyncStopped
from tests.support.api import ADMIN
from tests.support.slapd import Slapd
from tests.support.web import WebHarness, csrf_from, sign_in
from webportal.admin import directories as directories_page

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
    settings = slapd.directory_settings("lab", group_dn=group_dn)
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


# -- Dry run, Sync now, Sync anyway: the page on the sync service's contract ---------------


@dataclass(frozen=True)
class FakeReport:
    """A ``SyncReport`` as the issue 14 contract describes it (a directory_syncs row)."""

    dry_run: bool
    state: str
    started_at: datetime
    finished_at: datetime | None
    created: int = 0
    updated: int = 0
    renamed: int = 0
    disabled: int = 0
    enabled: int = 0
    unchanged: int = 0
    errors: int = 0
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else 1.5


@dataclass
class FakeSync:
    """``services.directory_sync`` speaking the contract's ``run`` and ``last``: a dry run
    plans two new users, a sync is stopped at the threshold unless forced."""

    now: datetime
    runs: list[tuple[str, bool, bool]] = field(default_factory=list)
    reports: list[FakeReport] = field(default_factory=list)

    async def run(
        self,
        actor: Any,
        name: str,
        *,
        dry_run: bool = False,
        force: bool = False,
        progress: Any = None,
    ) -> FakeReport:
        self.runs.append((name, dry_run, force))
        details = {"created": ["alice", "bob"], "disabled": ["carol (gone)"]}
        if not dry_run and not force:
            report = FakeReport(
                False, "stopped", self.now, self.now, message="would disable 9 of 10"
            )
            self.reports.append(report)
            raise SyncStopped("it would disable 9 of 10 users (the limit is 5).")
        report = FakeReport(dry_run, "done", self.now, self.now, 2, 0, 0, 1, 0, 7, 0, "", details)
        self.reports.append(report)
        return report

    async def last(self, name: str, *, dry_run: bool | None = None) -> FakeReport | None:
        found = [r for r in self.reports if dry_run is None or r.dry_run == dry_run]
        return found[-1] if found else None


def test_dry_run_sync_stopped_and_sync_anyway(
    web: WebHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeSync(web.clock.now)
    monkeypatch.setattr(directories_page, "_sync_service", lambda request: fake)
    admin = web.admin_browser()
    add_directory(web, "corp", "ldaps://dc1.corp.example")
    page = admin.get("/admin/directories")
    assert "Not synced yet" in page.text
    assert "Sync anyway" not in page.text
    token = csrf_from(page.text)

    dry = admin.post("/admin/directories/corp/sync", data={"csrf_token": token, "mode": "dry-run"})
    assert dry.status_code == 303
    text = html.unescape(admin.get("/admin/directories").text)
    assert "Dry run of corp done: 2 created" in text
    assert "(nothing written)" in text
    assert "Last dry run" in text
    assert "alice, bob" in text
    assert "carol (gone)" in text

    admin.post("/admin/directories/corp/sync", data={"csrf_token": token, "mode": "sync"})
    text = html.unescape(admin.get("/admin/directories").text)
    assert "The sync of corp stopped: it would disable 9 of 10 users" in text
    assert "Nobody was disabled" in text
    assert "Sync anyway" in text

    admin.post("/admin/directories/corp/sync", data={"csrf_token": token, "mode": "force"})
    assert fake.runs == [("corp", True, False), ("corp", False, False), ("corp", False, True)]
    text = html.unescape(admin.get("/admin/directories").text)
    assert "Sync of corp done" in text
    assert "Sync anyway" not in text
    bogus = admin.post("/admin/directories/corp/sync", data={"csrf_token": token, "mode": "wipe"})
    assert bogus.status_code == 303
    assert len(fake.runs) == 3
    assert admin.post("/admin/directories/corp/sync", data={"mode": "sync"}).status_code == 403
    assert len(fake.runs) == 3


def test_dry_run_sync_and_a_stop_at_the_threshold_against_slapd(
    web: WebHarness, slapd: Slapd
) -> None:
    """The real sync service and a real OpenLDAP server: dry run (nothing written), sync
    (users created), the group emptied (the sync stops: nobody disabled), Sync anyway."""
    admin = web.admin_browser()
    names = [slapd.new_name("emp") for _ in range(6)]
    for name in names:
        slapd.add_user(name, "Emp-Passw0rd!", email=f"{name}@example.com")
    group = slapd.new_name("staff")
    group_dn = slapd.add_group(group, *names)
    settings = slapd.directory_settings("ldap1", group_dn=group_dn)
    web.run(web.services.directories.add(ADMIN, settings, slapd.bind_password))
    token = csrf_from(admin.get("/admin/directories").text)

    def press(mode: str) -> str:
        done = admin.post("/admin/directories/ldap1/sync", data={"csrf_token": token, "mode": mode})
        assert done.status_code == 303, done.text
        return html.unescape(admin.get("/admin/directories").text)

    text = press("dry-run")
    assert "Dry run of ldap1 done: 6 created" in text
    assert "(nothing written)" in text
    assert all(name in text for name in names)  # the names that would be created
    assert not any(u.user.name in names for u in web.run(web.services.users.list()))

    text = press("sync")
    assert "Sync of ldap1 done: 6 created" in text
    assert {u.user.name for u in web.run(web.services.users.list())} >= set(names)

    slapd.remove_members(group, *names)
    text = press("sync")
    assert "The sync of ldap1 stopped" in text
    assert "Nobody was disabled" in text
    assert "Sync anyway" in text
    assert not any(web.user(name).disabled for name in names)

    text = press("force")
    assert "Sync of ldap1 done: 0 created, 0 updated, 0 renamed, 6 disabled" in text
    assert "Sync anyway" not in text
    assert all(web.user(name).disabled for name in names)
