"""``openmfa directory ...`` as an operator runs it, on a real data directory: add (the bind
password on standard input, never echoed, never stored or audited in clear), list, show,
set, test, remove; the refusals and their one-line errors.

And the issue's walk against the real Samba AD DC and slapd: the kind detected, users counted,
a wrong service password and an untrusted CA reported in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.ldapops import directory_add_args
from tests.support.process import Cli
from tests.support.samba_dc import SambaDC
from tests.support.slapd import Slapd
from tests.test_directory_settings import a_ca_pem

PASSWORD = "Svc-Bind-Passw0rd-7f3c2a!"
ENV = {"OPENMFA_LOG_FORMAT": "json"}


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    cli = Cli(tmp_path, **ENV)
    cli("db", "upgrade")
    return cli


def everything_stored(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


def add_args(name: str = "corp", *extra: str) -> list[str]:
    return [
        "directory",
        "add",
        name,
        "--url",
        "ldaps://127.0.0.1:1",
        "--url",
        "LDAP://DC2.corp.example:389",
        "--kind",
        "ad",
        "--bind-dn",
        "CN=svc-openmfa,OU=Service,DC=corp,DC=example",
        "--bind-password-stdin",
        "--base-dn",
        "DC=corp,DC=example",
        "--group",
        "CN=VPN Users,OU=Groups,DC=corp,DC=example",
        *extra,
    ]


def test_the_life_of_a_directory(cli: Cli, tmp_path: Path) -> None:
    ca = tmp_path / "corp-ca.pem"
    ca.write_text(a_ca_pem("Corp Root CA"), encoding="ascii")
    outputs: list[str] = []

    added = cli(*add_args("corp", "--ca-file", str(ca), "--interval", "30m"), stdin=PASSWORD + "\n")
    outputs += [added.stdout, added.stderr]
    assert "directory corp added: ad, 2 URLs" in added.stdout

    listed = cli("directory", "list")
    outputs += [listed.stdout, listed.stderr]
    assert "corp" in listed.stdout
    assert "30m" in listed.stdout

    shown = cli("directory", "show", "CORP")
    outputs += [shown.stdout]
    assert "ldaps://127.0.0.1:1, ldap://dc2.corp.example" in shown.stdout
    assert "bind password:" in shown.stdout
    assert "CN=Corp Root CA" in shown.stdout
    assert "name=sAMAccountName" in shown.stdout

    as_json = json.loads(cli("directory", "show", "corp", "--json").stdout)
    assert as_json["bind_password"] == "set"
    assert as_json["urls"] == ["ldaps://127.0.0.1:1", "ldap://dc2.corp.example"]
    assert as_json["sync_interval"] == 1800
    assert as_json["ca"][0]["subject"] == "CN=Corp Root CA"
    assert json.loads(cli("directory", "list", "--json").stdout)[0]["name"] == "corp"

    changed = cli(
        "directory",
        "set",
        "corp",
        "--filter",
        "(department=Sales)",
        "--group",
        "",
        "--name-attribute",
        "userPrincipalName",
        "--system-ca",
    )
    assert "directory corp changed" in changed.stdout
    after = json.loads(cli("directory", "show", "corp", "--json").stdout)
    assert after["filter"] == "(department=Sales)"
    assert after["group"] == ""
    assert after["ca"] == []
    assert after["attributes"]["name"] == "userPrincipalName"
    unchanged = cli("directory", "set", "corp", "--page-size", "500")
    assert "unchanged" in unchanged.stdout
    rotated = cli("directory", "set", "corp", "--bind-password-stdin", stdin="N3w-" + PASSWORD)
    assert "changed" in rotated.stdout

    # test: nothing listens on 127.0.0.1:1 and dc2.corp.example does not resolve.
    failed = cli("directory", "test", "corp", check=False)
    outputs += [failed.stdout, failed.stderr]
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("openmfa: error: no server of the directory corp answered")
    assert "ldaps://127.0.0.1:1" in lines[0]

    audit = cli("audit", "--action", "directory.", "--json", "--limit", "50", check=False)
    outputs += [audit.stdout]
    everything = "\n".join(outputs) + cli("audit", "--json", "--limit", "500").stdout
    assert PASSWORD not in everything
    assert "N3w-" not in everything
    stored = everything_stored(cli.home)
    assert PASSWORD.encode() not in stored
    assert PASSWORD.encode("utf-16-le") not in stored

    removed = cli("directory", "remove", "corp")
    assert "directory corp removed" in removed.stdout
    assert "no directories" in cli("directory", "list").stdout
    actions = [e["action"] for e in json.loads(cli("audit", "--json", "--limit", "500").stdout)]
    for action in ("directory.add", "directory.update", "directory.test", "directory.remove"):
        assert action in actions


@pytest.mark.parametrize(
    ("extra", "stdin", "message"),
    [
        ([], "", "no bind password on standard input"),
        (["--url", "http://dc3"], PASSWORD, "is not a directory URL"),
        (["--filter", "department=Sales"], PASSWORD, "must be in parentheses"),
        (["--page-size", "5000"], PASSWORD, "page size must be 1-1000"),
        (["--admin-group", "Domain Admins"], PASSWORD, "not a distinguished name"),
        (["--email-attribute", "mail;binary"], PASSWORD, "not an LDAP attribute name"),
    ],
)
def test_refusals_are_one_line_and_store_nothing(
    cli: Cli, extra: list[str], stdin: str, message: str
) -> None:
    result = cli(*add_args("corp", *extra), stdin=stdin, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert message in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    assert "no directories" in cli("directory", "list").stdout


def test_usage_errors(cli: Cli, tmp_path: Path) -> None:
    interval = cli(*add_args("corp", "--interval", "1w"), stdin=PASSWORD, check=False)
    assert interval.returncode == 2
    assert "is not an interval" in interval.stderr
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello", encoding="ascii")
    bad_ca = cli(*add_args("corp", "--ca-file", str(not_pem)), stdin=PASSWORD, check=False)
    assert bad_ca.returncode == 1
    assert "no PEM certificate" in bad_ca.stderr
    assert cli("directory", "show", "nope", check=False).returncode == 1
    nothing = cli("directory", "set", "nope", check=False)
    assert "nothing to change" in nothing.stderr
    cli(*add_args("corp"), stdin=PASSWORD)
    taken = cli(*add_args("Corp"), stdin=PASSWORD, check=False)
    assert "already exists" in taken.stderr


def test_the_operator_walk_against_the_samba_dc(cli: Cli, samba_dc: SambaDC) -> None:
    """The issue's walk: add (kind detected, password piped), test, show, set, remove."""
    dc = samba_dc
    vpn, admins = dc.new_name("vpn"), dc.new_name("adm")
    vpn_dn, admins_dn = dc.add_group(vpn), dc.add_group(admins)
    users = [dc.add_user(dc.new_name("walk"), "Walk-Passw0rd!") for _ in range(3)]
    dc.add_members(vpn, *(u.name for u in users))
    dc.add_members(admins, users[0].name)
    added = cli(
        *directory_add_args(dc),
        "--group",
        vpn_dn,
        "--admin-group",
        admins_dn,
        stdin=dc.bind_password + "\n",
    )
    assert "directory corp added: ad" in added.stdout  # detected from the root DSE
    tested = cli("directory", "test", "corp")
    assert f"directory corp: {dc.url.removesuffix(':636')} answered" in tested.stdout  # canonical
    assert "3 users, 1 admin;" in tested.stdout
    report = json.loads(cli("directory", "test", "corp", "--json").stdout)
    assert (report["kind"], report["users"], report["admins"]) == ("ad", 3, 1)

    # A wrong service password: one clear line, exit status 1.
    cli("directory", "set", "corp", "--bind-password-stdin", stdin="Wrong-password-1")
    wrong = cli("directory", "test", "corp", check=False)
    assert wrong.returncode == 1
    assert "refused the service account's bind" in wrong.stderr
    assert "data 52e" in wrong.stderr
    assert wrong.stderr.count("\n") == 1
    cli("directory", "set", "corp", "--bind-password-stdin", stdin=dc.bind_password)

    # The system's trust store does not know the test CA.
    cli("directory", "set", "corp", "--system-ca")
    untrusted = cli("directory", "test", "corp", check=False)
    assert untrusted.returncode == 1
    assert "certificate not trusted: give --ca-file" in untrusted.stderr
    cli("directory", "set", "corp", "--ca-file", str(dc.ca_file))
    assert cli("directory", "test", "corp").returncode == 0

    stored = everything_stored(cli.home)
    assert dc.bind_password.encode() not in stored
    cli("directory", "remove", "corp")


def test_add_detects_plain_ldap_and_refuses_a_wrong_password(cli: Cli, slapd: Slapd) -> None:
    common = [
        "--url",
        slapd.starttls_url,
        "--ca-file",
        str(slapd.ca_file),
        "--bind-dn",
        slapd.bind_dn,
        "--bind-password-stdin",
        "--base-dn",
        slapd.base_dn,
    ]
    refused = cli("directory", "add", "people", *common, stdin="not-it\n", check=False)
    assert refused.returncode == 1
    assert "refused the service account's bind (invalidCredentials)" in refused.stderr
    assert "not-it" not in refused.stderr
    assert "no directories" in cli("directory", "list").stdout
    added = cli("directory", "add", "people", *common, stdin=slapd.bind_password + "\n")
    assert "directory people added: ldap" in added.stdout
    shown = json.loads(cli("directory", "show", "people", "--json").stdout)
    assert shown["attributes"]["name"] == "uid"
