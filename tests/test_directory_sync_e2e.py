"""The sync end to end: the ``openmfa`` command (a real process) against the real Samba AD DC
and slapd (tests/support/samba_dc.py, tests/support/slapd.py).

The operator walk of issue 14: ``directory sync --dry-run``, the sync, then the directory
changes as an administrator changes it (rename, disable, remove from the group, back) and each
following sync brings our users along.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.ldapops import directory_add_args
from tests.support.process import Cli
from tests.support.samba_dc import SambaDC
from tests.support.slapd import Slapd


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    cli = Cli(tmp_path, OPENMFA_LOG_FORMAT="json")
    cli("db", "upgrade")
    return cli


def sync(cli: Cli, *extra: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(cli("directory", "sync", "corp", "--json", *extra).stdout)
    return report


def users(cli: Cli) -> dict[str, dict[str, Any]]:
    listed = json.loads(cli("user", "list", "--json").stdout)
    return {u["name"]: u for u in listed}


def test_the_operator_walk_against_the_samba_dc(cli: Cli, samba_dc: SambaDC) -> None:
    dc = samba_dc
    vpn, admins = dc.new_name("vpn"), dc.new_name("adm")
    vpn_dn, admins_dn = dc.add_group(vpn), dc.add_group(admins)
    ann, ben, cat = (dc.new_name("walk") for _ in range(3))
    for name in (ann, ben, cat):
        dc.add_user(name, "Walk-Passw0rd!", email=f"{name}@corp.example", display_name=name)
    dc.add_members(vpn, ann, ben, cat)
    dc.add_members(admins, ann)
    cli(
        *directory_add_args(dc),
        "--group",
        vpn_dn,
        "--admin-group",
        admins_dn,
        stdin=dc.bind_password + "\n",
    )
    dry = cli("directory", "sync", "corp", "--dry-run")
    assert "dry run of corp: done" in dry.stdout
    assert "created    3" in dry.stdout
    assert ann in dry.stdout  # a dry run lists the names
    assert ann not in users(cli)

    first = sync(cli)
    assert (first["state"], first["created"], first["errors"]) == ("done", 3, 0)
    here = users(cli)
    assert here[ann]["admin"] is True
    assert here[ben]["email"] == f"{ben}@corp.example"
    again = sync(cli)
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 3)

    # Renamed in AD: renamed here (same objectGUID), and the audit says so.
    bea = dc.new_name("walk")
    dc.rename(ben, bea)
    renamed = sync(cli)
    assert renamed["details"]["renamed"] == [f"{ben} -> {bea}"]
    assert bea in users(cli)
    audit = cli("audit", "--user", bea, "--action", "user.rename").stdout
    assert f"from {ben}" in audit

    # Disabled in AD: disabled here with the reason.
    dc.disable(cat)
    disabled = sync(cli)
    assert disabled["details"]["disabled"] == [f"{cat} (disabled)"]
    assert users(cli)[cat]["state"] == "disabled"
    shown = cli("user", "show", cat).stdout
    assert "state:         disabled (by the directory sync: disabled)" in shown

    # Out of the group: disabled as gone; back in: enabled again.
    dc.remove_members(vpn, bea)
    gone = sync(cli)
    assert gone["details"]["disabled"] == [f"{bea} (gone)"]
    dc.add_members(vpn, bea)
    back = sync(cli)
    assert back["details"]["enabled"] == [bea]
    assert users(cli)[bea]["state"] == "active"

    history = cli("directory", "syncs", "corp").stdout.splitlines()
    assert len(history) == 1 + 7  # the header, six syncs and the dry run


def test_a_sync_from_slapd_follows_renames_and_deletions(cli: Cli, slapd: Slapd) -> None:
    ou = slapd.add_ou(slapd.new_name("ou"))
    names = [slapd.new_name("p") for _ in range(3)]
    for name in names:
        slapd.add_user(name, "Slapd-Passw0rd!", email=f"{name}@example.org", parent=ou)
    cli(*directory_add_args(slapd, base_dn=ou), stdin=slapd.bind_password + "\n")
    assert sync(cli)["created"] == 3
    renamed = slapd.new_name("p")
    slapd.rename(names[0], renamed)
    slapd.delete(names[1])
    report = sync(cli)
    assert report["details"]["renamed"] == [f"{names[0]} -> {renamed}"]
    assert report["details"]["disabled"] == [f"{names[1]} (gone)"]
    assert users(cli)[names[1]]["state"] == "disabled"
