"""RADIUS client settings: validation rules (pure), the service on SQLite and PostgreSQL
(round trips, secrets sealed at rest, the document revision), the migration, and API token
scopes including the in-memory tokens of ``openmfa run``."""

from __future__ import annotations

import asyncio
import ipaddress
import typing
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text, update

from backend.api import schemas
from backend.config import Settings
from backend.domain import radius
from backend.domain.radius import ClientChanges, ClientSettings, merge, normalise
from backend.errors import (
    AuthenticationRequired,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidName,
    InvalidRadiusClient,
    NotFound,
    ServerKeyError,
)
from backend.services import Services
from backend.services.context import Actor
from backend.services.radius_clients import REVISION_KEY
from backend.store import migrations
from backend.store.tables import api_tokens_t, audit_t, meta_t, metadata, radius_clients_t
from radius_bridge.clients import parse_clients
from radius_bridge.model import Upstream
from radius_vocabulary.audit import BRIDGE_AUDIT_ACTIONS
from radius_vocabulary.settings import (
    DEFAULT_PROMPT,
    FAILMODES,
    MODES,
    NAME_FORMATS,
    PRIMARIES,
    UNENROLLED,
)
from tests.support.clock import FakeClock

ADMIN = Actor("test:admin")
SECRET = "Tr0ub4dor&3-shared-secret"
UPSTREAM_SECRET = "upstream-secret-0123456789"


def changes(**values: Any) -> ClientChanges:
    values.setdefault("addresses", ["10.0.0.0/24"])
    values.setdefault("secret", SECRET)
    return ClientChanges(**values)


def settled(**values: Any) -> ClientSettings:
    """Defaults plus ``values``, merged and normalised as the service does for a new client."""
    return normalise(merge(None, changes(**values)))


def refused(match: str, **values: Any) -> None:
    with pytest.raises(InvalidRadiusClient, match=match):
        settled(**values)


# -- single values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored", "host_bits"),
    [
        ("10.0.0.0/24", "10.0.0.0/24", False),
        ("10.0.0.5/24", "10.0.0.0/24", True),
        ("192.0.2.7", "192.0.2.7", False),
        ("192.0.2.7/32", "192.0.2.7", False),
        (" 2001:db8::/64 ", "2001:db8::/64", False),
        ("2001:DB8::1", "2001:db8::1", False),
        ("2001:db8::1/64", "2001:db8::/64", True),
        ("::ffff:10.0.0.0/120", "10.0.0.0/24", False),
        ("::ffff:192.0.2.7", "192.0.2.7", False),
    ],
)
def test_addresses_are_stored_in_canonical_form(given: str, stored: str, host_bits: bool) -> None:
    assert radius.format_network(radius.parse_network(given)) == stored
    assert radius.host_bits_ignored(given) is host_bits
    assert settled(addresses=[given]).addresses == (stored,)


@pytest.mark.parametrize("bad", ["", "vpn.example.com", "10.0.0.0/33", "10.0.0", "::g", "1.2.3.4/"])
def test_addresses_that_are_not_ip_networks_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRadiusClient, match="not an IP address or a network"):
        radius.parse_network(bad)


def test_addresses_are_deduplicated_and_required() -> None:
    assert settled(addresses=["10.0.0.1", "10.0.0.1/32", "10.0.0.0/8"]).addresses == (
        "10.0.0.1",
        "10.0.0.0/8",
    )
    with pytest.raises(InvalidRadiusClient, match="at least one address"):
        merge(None, ClientChanges(addresses=[], secret=SECRET))
    with pytest.raises(InvalidRadiusClient, match="at most 64"):
        settled(addresses=[f"10.0.{i}.0/24" for i in range(65)])


def test_secrets_are_1_to_128_bytes_of_utf8() -> None:
    assert radius.check_secret("x" * 128) == "x" * 128
    assert radius.check_secret("€" * 42) == "€" * 42  # 126 bytes
    for bad, why in (("", "is empty"), ("x" * 129, "129 bytes"), ("€" * 43, "129 bytes")):
        with pytest.raises(InvalidRadiusClient, match=why):
            radius.check_secret(bad)
    with pytest.raises(InvalidRadiusClient, match="needs a shared secret"):
        merge(None, ClientChanges(addresses=["10.0.0.1"]))
    assert radius.is_short_secret("x" * 15)
    assert not radius.is_short_secret("x" * 16)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("radius.example.com", ("radius.example.com", 1812)),
        ("NPS.Example.COM.", ("nps.example.com", 1812)),
        ("10.0.0.5:1645", ("10.0.0.5", 1645)),
        ("[2001:db8::5]:1812", ("2001:db8::5", 1812)),
        ("[2001:db8::5]", ("2001:db8::5", 1812)),
        ("2001:db8::5", ("2001:db8::5", 1812)),
        ("nps:65535", ("nps", 65535)),
    ],
)
def test_upstream_host_and_port(given: str, expected: tuple[str, int]) -> None:
    assert radius.parse_host_port(given) == expected


@pytest.mark.parametrize(
    "bad", ["nps:0", "nps:65536", "nps:x", "bad_host", "[2001:db8::5", "[::1]x", "-nps", ""]
)
def test_bad_upstreams_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRadiusClient):
        radius.parse_host_port(bad)


def test_prompt_fits_one_reply_message() -> None:
    assert settled(prompt="a" * 253).prompt == "a" * 253
    assert settled(prompt="€" * 84).prompt == "€" * 84  # 252 bytes
    assert settled(prompt="Approve on your phone\nor type the code").prompt.count("\n") == 1
    assert settled().prompt == DEFAULT_PROMPT
    refused("254 bytes", prompt="a" * 254)
    refused("255 bytes", prompt="€" * 85)
    refused("control characters", prompt="bell\x07")
    refused("empty", prompt="   ")


@pytest.mark.parametrize("good", [",", "|", ";", "#", "+"])
def test_separator_is_one_non_alphanumeric_character(good: str) -> None:
    assert settled(password_separator=good).password_separator == good


@pytest.mark.parametrize("bad", ["", ",,", "a", "7", "é", " ", "\t", "\x00"])
def test_bad_separators_are_refused(bad: str) -> None:
    refused("separator", password_separator=bad)


def test_enumerations_and_time_limits() -> None:
    for key, good, bad in (
        ("mode", "challenge", "sms"),
        ("primary", "local", "kerberos"),
        ("failmode", "safe", "open"),
        ("unenrolled", "allow", "ignore"),
        ("name_format", "keep", "lower"),
    ):
        assert getattr(settled(**{key: good}), key) == good
        refused("must be one of", **{key: bad})
    assert settled(push_timeout=5).push_timeout == 5.0
    assert settled(push_timeout=600).push_timeout == 600.0
    for bad_timeout in (4.9, 600.5, float("nan"), float("inf")):
        refused("push timeout is from 5 to 600", push_timeout=bad_timeout)


def test_upstream_only_for_primary_radius() -> None:
    client = settled(primary="radius", upstream_host="10.0.0.5", upstream_secret=UPSTREAM_SECRET)
    assert client.upstream == radius.UpstreamSettings("10.0.0.5", 1812, 10.0, UPSTREAM_SECRET)
    refused("needs the upstream server \\(--upstream\\)", primary="radius")
    refused("upstream-secret-file", primary="radius", upstream_host="10.0.0.5")
    refused("only for primary radius", upstream_host="10.0.0.5")
    refused("only for primary radius", primary="local", upstream_secret=UPSTREAM_SECRET)
    for timeout in (0.5, 61.0):
        refused(
            "upstream timeout is from 1 to 60",
            primary="radius",
            upstream_host="nps",
            upstream_secret=UPSTREAM_SECRET,
            upstream_timeout=timeout,
        )
    refused(
        "upstream secret has 129 bytes",
        primary="radius",
        upstream_host="nps",
        upstream_secret="s" * 129,
    )
    # Switching away from radius drops the upstream and its secret; switching back needs both.
    local = normalise(merge(client, ClientChanges(primary="local")))
    assert local.upstream is None
    with pytest.raises(InvalidRadiusClient, match="--upstream"):
        merge(local, ClientChanges(primary="radius"))
    # Changing part of the upstream keeps the rest.
    moved = normalise(merge(client, ClientChanges(upstream_port=1645, upstream_timeout=3)))
    assert moved.upstream == radius.UpstreamSettings("10.0.0.5", 1645, 3.0, UPSTREAM_SECRET)


def test_realm_map_only_with_user_names_map() -> None:
    mapped = settled(
        name_format="map",
        realm_map=["Partner.Example={user}.partner", "CONTOSO={user}"],
    )
    assert mapped.realm_map == (("contoso", "{user}"), ("partner.example", "{user}.partner"))
    refused("needs at least one realm", name_format="map")
    refused("only used with user-names map", realm_map=["partner.example={user}"])
    refused("exactly once", name_format="map", realm_map=["partner.example=user"])
    refused("exactly once", name_format="map", realm_map=["p.example={user}{user}"])
    refused("no other braces", name_format="map", realm_map=["p.example={user}-{realm}"])
    refused("does not give valid user names", name_format="map", realm_map=["p.example={user} x"])
    refused("not a domain", name_format="map", realm_map=["bad realm={user}"])
    refused("not REALM=TEMPLATE", name_format="map", realm_map=["partner.example"])
    refused("appears twice", name_format="map", realm_map=["a.example={user}", "A.example={user}"])
    stripped = normalise(merge(mapped, ClientChanges(name_format="strip")))
    assert stripped.realm_map == ()


def test_exemptions() -> None:
    client = settled(
        exempt_users=["SVC-Backup", "svc-backup", "alice@example.com"],
        exempt_networks=["192.0.2.0/24", "2001:db8:1::/48"],
    )
    assert client.exempt_users == ("alice@example.com", "svc-backup")
    assert client.exempt_networks == ("192.0.2.0/24", "2001:db8:1::/48")
    refused("exempt user 'bad name'", exempt_users=["bad name"])
    refused("exempt network 'corp'", exempt_networks=["corp"])
    refused("every caller", exempt_networks=["0.0.0.0/0"])
    refused("every caller", exempt_networks=["::/0"])


def test_reply_attributes_are_names_the_bridge_dictionary_can_encode() -> None:
    client = settled(
        reply_attributes=[
            "filter-id=vpn-users",
            "Class=OU=Engineering;",
            "Session-Timeout=28800",
            "tunnel-type:1=VLAN",
            "Tunnel-Medium-Type:1=6",
            "Tunnel-Private-Group-Id:1=42",
            "Framed-IP-Address=10.1.2.3",
            "Service-Type=Framed-User",
            "Cisco-AVPair=ip:inacl#1=permit ip any any",
            "Cisco-AVPair=shell:priv-lvl=15",
            "Fortinet-Group-Name=vpn",
        ]
    )
    assert client.reply_attributes == (
        ("Filter-Id", "vpn-users"),
        ("Class", "OU=Engineering;"),
        ("Session-Timeout", "28800"),
        ("Tunnel-Type:1", "VLAN"),
        ("Tunnel-Medium-Type:1", "6"),
        ("Tunnel-Private-Group-Id:1", "42"),
        ("Framed-IP-Address", "10.1.2.3"),
        ("Service-Type", "Framed-User"),
        ("Cisco-AVPair", "ip:inacl#1=permit ip any any"),
        ("Cisco-AVPair", "shell:priv-lvl=15"),
        ("Fortinet-Group-Name", "vpn"),
    )
    refused("unknown reply attribute 'X-Nope': not in the bridge's", reply_attributes=["X-Nope=1"])
    refused("not NAME=VALUE", reply_attributes=["Filter-Id"])
    refused("has no value", reply_attributes=["Filter-Id="])
    refused("Session-Timeout: 'soon' is not a number", reply_attributes=["Session-Timeout=soon"])
    refused("does not fit 32 bits", reply_attributes=["Idle-Timeout=4294967296"])
    refused("Octet 300", reply_attributes=["Framed-IP-Address=10.0.0.300"])
    refused("'MPLS' is not a number or a known value", reply_attributes=["Tunnel-Type=MPLS"])
    refused("longer than 253 octets", reply_attributes=["Class=" + "x" * 254])
    refused("longer than 247 octets", reply_attributes=["Cisco-AVPair=" + "x" * 248])
    refused("Filter-Id takes no tag", reply_attributes=["Filter-Id:1=x"])
    refused("tag of Tunnel-Type is a number", reply_attributes=["Tunnel-Type:x=VLAN"])
    refused("must be 0..31", reply_attributes=["Tunnel-Type:32=VLAN"])
    for managed in ("State", "Message-Authenticator", "Proxy-State", "User-Password"):
        refused("set by the bridge itself", reply_attributes=[f"{managed}=x"])
    refused("encrypted", reply_attributes=["Tunnel-Password=x"])
    refused("at most 32", reply_attributes=[f"Class={i}" for i in range(33)])


def test_changed_settings_names_what_differs() -> None:
    base = settled(primary="radius", upstream_host="nps", upstream_secret=UPSTREAM_SECRET)
    same = normalise(merge(base, ClientChanges(mode="push", secret=SECRET)))
    assert radius.changed_settings(base, same) == []
    rotated = normalise(merge(base, ClientChanges(upstream_secret="another-upstream-secret")))
    assert radius.changed_settings(base, rotated) == ["upstream_secret"]
    moved = normalise(merge(base, ClientChanges(upstream_host="nps2", secret="new " + SECRET)))
    assert radius.changed_settings(base, moved) == ["secret", "upstream"]


def test_settings_never_show_secrets_in_their_repr() -> None:
    client = settled(primary="radius", upstream_host="nps", upstream_secret=UPSTREAM_SECRET)
    change = changes(primary="radius", upstream_secret=UPSTREAM_SECRET)
    for shown in (repr(client), str(client), repr(change)):
        assert SECRET not in shown
        assert UPSTREAM_SECRET not in shown
    assert "upstream_secret" in repr(change)  # which settings were given, not their values


def test_api_schemas_agree_with_the_rules() -> None:
    def literal(model: type[Any], field: str) -> tuple[str, ...]:
        return typing.get_args(model.model_fields[field].annotation)

    assert literal(schemas.BridgeAuditRequest, "action") == BRIDGE_AUDIT_ACTIONS
    assert literal(schemas.RadiusClient, "mode") == MODES
    assert literal(schemas.RadiusClient, "primary") == PRIMARIES
    assert literal(schemas.RadiusClient, "failmode") == FAILMODES
    assert literal(schemas.RadiusClient, "unenrolled") == UNENROLLED
    assert literal(schemas.RadiusUserNames, "format") == NAME_FORMATS


# -- the service, on SQLite and PostgreSQL --------------------------------------------------------


async def revision(services: Services) -> str:
    return await services.radius_clients.revision()


async def raw_rows(services: Services) -> list[Any]:
    async with services.db.read() as conn:
        return list((await conn.execute(select(radius_clients_t))).all())


@pytest.mark.anyio
async def test_round_trip_and_the_document_of_the_contract(services: Services) -> None:
    asa = await services.radius_clients.add(
        ADMIN,
        "ASA1",
        changes(
            addresses=["10.0.0.5/24", "2001:db8::/64", "192.0.2.7"],
            mode="challenge",
            primary="radius",
            upstream_host="nps.example.com",
            upstream_port=1645,
            upstream_timeout=5.5,
            upstream_secret=UPSTREAM_SECRET,
            failmode="safe",
            unenrolled="allow",
            push_timeout=45,
            prompt="Approve or type the code",
            name_format="map",
            realm_map=["partner.example={user}.partner"],
            exempt_users=["svc-backup"],
            exempt_networks=["192.0.2.0/24"],
            password_separator="|",
            reply_attributes=["Filter-Id=vpn-users", "Tunnel-Type:1=VLAN"],
        ),
    )
    await services.radius_clients.add(ADMIN, "rdgw", changes(addresses=["10.1.0.10"]))

    assert asa.name == "ASA1"
    assert asa.secret_bytes == len(SECRET)
    assert not asa.secret_short
    assert asa.upstream is not None
    assert asa.upstream.secret_bytes == len(UPSTREAM_SECRET)
    assert await services.radius_clients.get("asa1") == asa  # any letter case
    assert [c.name for c in await services.radius_clients.list()] == ["ASA1", "rdgw"]

    document = await services.radius_clients.document()
    assert document.revision == await revision(services)
    assert document.clients == [
        {
            "name": "ASA1",
            "addresses": ["10.0.0.0/24", "2001:db8::/64", "192.0.2.7"],
            "secret": SECRET,
            "mode": "challenge",
            "primary": "radius",
            "upstream": {
                "host": "nps.example.com",
                "port": 1645,
                "secret": UPSTREAM_SECRET,
                "timeout": 5.5,
            },
            "require_message_authenticator": True,
            "failmode": "safe",
            "unenrolled": "allow",
            "push_timeout": 45.0,
            "prompt": "Approve or type the code",
            "user_names": {"format": "map", "realm_map": {"partner.example": "{user}.partner"}},
            "exempt_users": ["svc-backup"],
            "exempt_networks": ["192.0.2.0/24"],
            "password_separator": "|",
            "reply_attributes": [["Filter-Id", "vpn-users"], ["Tunnel-Type:1", "VLAN"]],
            "number_matching": "policy",
            "directory": None,
            "radsec_fingerprints": [],
        },
        {
            "name": "rdgw",
            "addresses": ["10.1.0.10"],
            "secret": SECRET,
            "mode": "push",
            "primary": "none",
            "upstream": None,
            "require_message_authenticator": True,
            "failmode": "secure",
            "unenrolled": "reject",
            "push_timeout": 55.0,
            "prompt": DEFAULT_PROMPT,
            "user_names": {"format": "strip", "realm_map": {}},
            "exempt_users": [],
            "exempt_networks": [],
            "password_separator": ",",
            "reply_attributes": [],
            "number_matching": "policy",
            "directory": None,
            "radsec_fingerprints": [],
        },
    ]
    # The document is what the API serves: it validates against the published schema.
    schemas.RadiusClients.model_validate(
        {"revision": document.revision, "clients": document.clients}
    )
    # ... and the bridge reads every client of it, with nothing refused.
    parsed = parse_clients({"revision": document.revision, "clients": document.clients})
    assert parsed.errors == ()
    asa_config, rdgw_config = parsed.clients
    assert asa_config.secret == SECRET.encode()
    assert asa_config.upstream == Upstream("nps.example.com", 1645, UPSTREAM_SECRET.encode(), 5.5)
    assert asa_config.networks == tuple(
        ipaddress.ip_network(a) for a in ("10.0.0.0/24", "2001:db8::/64", "192.0.2.7")
    )
    assert asa_config.reply_attributes == (("Filter-Id", "vpn-users"), ("Tunnel-Type:1", "VLAN"))
    assert asa_config.exempt_users == frozenset({"svc-backup"})
    assert asa_config.user_names.realm_map == (("partner.example", "{user}.partner"),)
    assert (rdgw_config.mode, rdgw_config.upstream, rdgw_config.failmode) == (
        "push",
        None,
        "secure",
    )


@pytest.mark.anyio
async def test_secrets_are_sealed_at_rest_and_bound_to_their_row(services: Services) -> None:
    await services.radius_clients.add(
        ADMIN,
        "nps",
        changes(primary="radius", upstream_host="10.0.0.5", upstream_secret=UPSTREAM_SECRET),
    )
    await services.radius_clients.add(ADMIN, "other", changes(addresses=["10.9.0.0/16"]))
    rows = {row.name: row for row in await raw_rows(services)}
    for row in rows.values():
        raw = repr(tuple(row)).encode() + b"".join(
            bytes(v) for v in row if isinstance(v, bytes | memoryview)
        )
        for secret in (SECRET, UPSTREAM_SECRET):
            assert secret.encode() not in raw
            assert secret.encode().hex().encode() not in raw
    nps = rows["nps"]
    assert nps.upstream_secret_enc is not None
    assert bytes(nps.secret_enc) != bytes(rows["other"].secret_enc)  # a fresh nonce each
    # A sealed secret copied to another row does not decrypt there.
    async with services.db.write() as conn:
        await conn.execute(
            update(radius_clients_t)
            .where(radius_clients_t.c.name == "other")
            .values(secret_enc=bytes(nps.secret_enc))
        )
    with pytest.raises(ServerKeyError):
        await services.radius_clients.document()


@pytest.mark.anyio
async def test_the_revision_changes_with_every_change_and_only_then(services: Services) -> None:
    clients = services.radius_clients
    seen = [await revision(services)]
    assert seen[0].startswith("0.")  # created by the migration

    async def changed() -> None:
        now = await revision(services)
        assert now not in seen, "the revision did not change"
        seen.append(now)

    async def unchanged() -> None:
        assert await revision(services) == seen[-1], "the revision changed"

    await clients.add(ADMIN, "asa1", changes())
    await changed()
    for refusal in (
        clients.add(ADMIN, "ASA1", changes(addresses=["10.5.0.0/16"])),  # name taken
        clients.add(ADMIN, "asa2", changes()),  # address taken
        clients.add(ADMIN, "asa2", changes(mode="sms")),
        clients.update(ADMIN, "asa1", ClientChanges(push_timeout=1)),
        clients.update(ADMIN, "nope", ClientChanges(mode="otp")),
        clients.remove(ADMIN, "nope"),
    ):
        with pytest.raises((Conflict, InvalidRadiusClient, NotFound)):
            await refusal
        await unchanged()
    await clients.get("asa1")
    await clients.list()
    await clients.document()
    await unchanged()
    record, names = await clients.update(ADMIN, "asa1", ClientChanges(mode="push", secret=SECRET))
    assert names == []  # the values it already had
    await unchanged()
    record, names = await clients.update(ADMIN, "asa1", ClientChanges(mode="otp"))
    assert (names, record.mode) == (["mode"], "otp")
    await changed()
    _, names = await clients.update(ADMIN, "asa1", ClientChanges(secret="rotated " + SECRET))
    assert names == ["secret"]
    await changed()
    await clients.remove(ADMIN, "ASA1")
    await changed()
    assert await clients.list() == []
    assert [int(r.split(".")[0]) for r in seen] == [0, 1, 2, 3, 4]


@pytest.mark.anyio
async def test_concurrent_changes_from_two_nodes_lose_no_revision(
    services: Services, settings: Settings, clock: FakeClock
) -> None:
    # Different clients, so that nothing but the revision row itself orders the transactions.
    for i in range(10):
        await services.radius_clients.add(ADMIN, f"gw{i}", changes(addresses=[f"10.0.{i}.0/24"]))
    start = int((await revision(services)).split(".")[0])
    other = await Services.open(settings, clock=clock)
    try:
        nodes = [services, other]
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    nodes[i % 2].radius_clients.update(
                        ADMIN, f"gw{i}", ClientChanges(push_timeout=10 + i)
                    )
                    for i in range(10)
                )
            ),
            60,
        )
    finally:
        await other.close()
    assert all(names == ["push_timeout"] for _, names in results)
    assert int((await revision(services)).split(".")[0]) == start + 10


@pytest.mark.anyio
async def test_names_addresses_and_audit(services: Services) -> None:
    clients = services.radius_clients
    await clients.add(ADMIN, "asa1", changes(addresses=["10.0.0.0/24", "10.0.1.1"]))
    with pytest.raises(Conflict, match="a RADIUS client named 'Asa1' already exists"):
        await clients.add(ADMIN, "Asa1", changes(addresses=["10.2.0.0/24"]))
    with pytest.raises(Conflict, match=r"10\.0\.1\.1 is already an address of the client 'asa1'"):
        await clients.add(ADMIN, "asa2", changes(addresses=["10.3.0.0/24", "10.0.1.1/32"]))
    # A more specific network inside another client's is allowed (longest prefix wins).
    await clients.add(ADMIN, "asa2", changes(addresses=["10.0.0.128/25"]))
    with pytest.raises(Conflict, match="already an address of the client 'asa2'"):
        await clients.update(ADMIN, "asa1", ClientChanges(addresses=["10.0.0.128/25"]))
    await clients.update(ADMIN, "asa1", ClientChanges(addresses=["10.0.0.0/24", "10.0.2.0/24"]))
    with pytest.raises(InvalidName):
        await clients.add(ADMIN, "bad name", changes(addresses=["10.7.0.0/16"]))
    with pytest.raises(NotFound, match="no RADIUS client named 'nope'"):
        await clients.get("nope")
    await clients.update(ADMIN, "ASA2", ClientChanges(secret="another " + SECRET))
    await clients.remove(ADMIN, "asa2")

    entries = await services.audit.query(limit=100)
    actions = [(e.action, e.result, e.detail) for e in reversed(entries)]
    assert actions == [
        ("radius_client.add", "ok", "asa1 mode=push primary=none addresses=10.0.0.0/24,10.0.1.1"),
        ("radius_client.add", "ok", "asa2 mode=push primary=none addresses=10.0.0.128/25"),
        ("radius_client.update", "ok", "asa1: addresses"),
        ("radius_client.update", "ok", "asa2: secret"),
        ("radius_client.remove", "ok", "asa2"),
    ]
    assert {e.actor for e in entries} == {"test:admin"}


@pytest.mark.anyio
async def test_bridge_decisions_are_audited_with_known_actions_only(services: Services) -> None:
    bridge = Actor("gateway:bridge1", "10.0.0.9")
    await services.radius_clients.record_bridge_decision(
        bridge, "radius.exempt_user", "SVC-Backup", "client=asa1"
    )
    with pytest.raises(BadRequest, match=r"action must be one of radius\.exempt_user"):
        await services.radius_clients.record_bridge_decision(bridge, "user.add", "x", "")
    entries = await services.audit.query(action="radius.exempt_user")
    assert [(e.actor, e.user_name, e.result, e.detail) for e in entries] == [
        ("gateway:bridge1", "svc-backup", "accept", "client=asa1")
    ]


@pytest.mark.anyio
async def test_no_secret_reaches_the_audit_trail(services: Services) -> None:
    clients = services.radius_clients
    await clients.add(
        ADMIN,
        "nps",
        changes(primary="radius", upstream_host="nps", upstream_secret=UPSTREAM_SECRET),
    )
    await clients.update(ADMIN, "nps", ClientChanges(secret="x" + SECRET, upstream_secret="y" * 20))
    with pytest.raises(InvalidRadiusClient):
        await clients.update(ADMIN, "nps", ClientChanges(secret="z" * 200))
    await clients.remove(ADMIN, "nps")
    async with services.db.read() as conn:
        rows = (await conn.execute(select(audit_t))).all()
    dump = repr([tuple(r) for r in rows])
    for secret in (SECRET, "x" + SECRET, UPSTREAM_SECRET, "y" * 20, "z" * 200):
        assert secret not in dump


# -- the migration ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_migrated_schema_matches_the_tables(services: Services) -> None:
    def diff(sync_conn: Any) -> list[Any]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with services.db.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


def test_upgrading_keeps_existing_tokens_at_scope_gateway(database_url: str) -> None:
    config = migrations.alembic_config(database_url)
    command.downgrade(config, "0001")

    async def old_token_then_read() -> list[tuple[str, str]]:
        from backend.store.database import Database

        db = Database(database_url)
        try:
            async with db.write() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO api_tokens (name, token_hash, created_at) "
                        "VALUES ('old', 'h', CURRENT_TIMESTAMP)"
                    )
                )
            await asyncio.to_thread(migrations.upgrade, database_url)
            async with db.read() as conn:
                tokens = (
                    await conn.execute(select(api_tokens_t.c.name, api_tokens_t.c.scope))
                ).all()
                meta = (
                    await conn.execute(select(meta_t.c.value).where(meta_t.c.key == REVISION_KEY))
                ).scalar()
        finally:
            await db.dispose()
        assert meta is not None
        return [(t.name, t.scope) for t in tokens]

    assert asyncio.run(old_token_then_read()) == [("old", "gateway")]
    command.downgrade(config, "0001")  # and back down cleanly, then up again
    migrations.upgrade(database_url)


# -- API token scopes and ephemeral tokens --------------------------------------------------------


@pytest.mark.anyio
async def test_token_scopes(services: Services) -> None:
    tokens = services.tokens
    gateway = await tokens.authenticate(await tokens.create(ADMIN, "gw"))
    bridge = await tokens.authenticate(await tokens.create(ADMIN, "br", scope="bridge"))
    assert (gateway.scope, bridge.scope) == ("gateway", "bridge")
    with pytest.raises(BadRequest, match="scope is one of gateway, bridge"):
        await tokens.create(ADMIN, "x", scope="admin")
    tokens.authorize(gateway, "gateway")
    tokens.authorize(bridge, "gateway")
    tokens.authorize(bridge, "bridge")
    with pytest.raises(Forbidden, match="'gw' has scope gateway; this needs a token of scope"):
        tokens.authorize(gateway, "bridge")
    assert [(t.name, t.scope) for t in await tokens.list()] == [
        ("br", "bridge"),
        ("gw", "gateway"),
    ]
    created = await services.audit.query(action="token.create")
    assert {e.detail for e in created} == {"gw scope=gateway", "br scope=bridge"}


@pytest.mark.anyio
async def test_ephemeral_tokens_live_in_this_process_only(
    services: Services, settings: Settings, clock: FakeClock
) -> None:
    tokens = services.tokens
    token = tokens.register_ephemeral("in-process-bridge", "bridge")
    assert token.startswith("omfa_")
    assert len(token) >= 30
    record = await tokens.authenticate(token)
    assert (record.id, record.name, record.scope) == (None, "in-process-bridge", "bridge")
    tokens.authorize(record, "bridge")
    assert await tokens.list() == []  # nothing stored
    async with services.db.read() as conn:
        assert (await conn.execute(select(api_tokens_t))).all() == []

    with pytest.raises(AuthenticationRequired):
        await tokens.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B"))
    other_node = await Services.open(settings, clock=clock)
    try:
        with pytest.raises(AuthenticationRequired):
            await other_node.tokens.authenticate(token)
    finally:
        await other_node.close()

    replaced = tokens.register_ephemeral("in-process-bridge", "gateway")
    with pytest.raises(AuthenticationRequired):
        await tokens.authenticate(token)
    assert (await tokens.authenticate(replaced)).scope == "gateway"
    second = tokens.register_ephemeral("second", "bridge")
    assert tokens.match_ephemeral(second) is not None
    tokens.drop_ephemeral("in-process-bridge")
    tokens.drop_ephemeral("never-registered")
    with pytest.raises(AuthenticationRequired):
        await tokens.authenticate(replaced)
    assert (await tokens.authenticate(second)).name == "second"
    with pytest.raises(BadRequest):
        tokens.register_ephemeral("x", "root")
    with pytest.raises(InvalidName):
        tokens.register_ephemeral("bad name", "bridge")
