"""Finding 11 of issue 13: an app request is bound to the device that signed it.

The signed bytes name the ``X-OpenMFA-Device`` id, and a public key belongs to one device
only, so a request signed by one device cannot be re-sent as another's (the review removed
one device with a DELETE signed by another that had registered the same key).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import column, insert, select, table, text

from backend.config import Settings
from backend.domain import signing
from backend.domain.stepup import ADMINISTRATOR
from backend.store import migrations
from backend.store.database import Database
from backend.store.tables import UtcDateTime, challenges_t, devices_t
from tests.support.api import ADMIN, ApiHarness, assert_problem, new_key, signed_request
from tests.support.clock import FakeClock
from tests.support.piapp import PiLab

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def activate(api: ApiHarness, user: str, key: object, public: str) -> httpx.Response:
    return signed_request(
        api.http,
        "POST",
        "/app/v1/activate",
        key,  # type: ignore[arg-type]
        "activation",
        {"code": api.activation_code(user), "public_key": public, "platform": "android"},
    )


def live_devices(api: ApiHarness, user: str) -> list[str]:
    return [device.id for device in api.run(api.services.devices.list_for_user(user))]


@sqlite_only
def test_a_public_key_already_registered_is_refused_and_audited(api: ApiHarness) -> None:
    api.add_user("alice")
    api.add_user("mallory")
    key, public = new_key()
    first = activate(api, "alice", key, public)
    assert first.status_code == 201, first.text

    for user in ("alice", "mallory"):  # the same user again, or anyone else
        again = activate(api, user, key, public)
        problem = assert_problem(again, 409, "conflict")
        assert "public key" in problem["detail"]
        rows = [row for row in api.refusals() if row.request_id == problem["request_id"]]
        assert [row.result for row in rows] == ["conflict"]

    assert live_devices(api, "alice") == [first.json()["device_id"]]
    assert live_devices(api, "mallory") == []


@sqlite_only
def test_the_key_of_a_removed_device_is_not_registered_again(api: ApiHarness) -> None:
    api.add_user("alice")
    key, public = new_key()
    first = activate(api, "alice", key, public)
    device_id = first.json()["device_id"]
    removed = signed_request(api.http, "DELETE", "/app/v1/device", key, device_id)
    assert removed.status_code == 204, removed.text

    assert_problem(activate(api, "alice", key, public), 409, "conflict")


@sqlite_only
def test_a_request_signed_without_the_device_id_is_refused(api: ApiHarness) -> None:
    """The old canonical form (OPENMFA-V1) did not name the device: it is no longer taken."""
    api.add_user("alice")
    key, public = new_key()
    device_id = activate(api, "alice", key, public).json()["device_id"]
    timestamp, nonce = str(int(time.time())), "n" * 20
    old_form = "\n".join(
        ("OPENMFA-V1", "DELETE", "/app/v1/device", timestamp, nonce, hashlib.sha256().hexdigest())
    ).encode()
    headers = {
        signing.HEADER_DEVICE: device_id,
        signing.HEADER_TIMESTAMP: timestamp,
        signing.HEADER_NONCE: nonce,
        signing.HEADER_SIGNATURE: signing.b64u_encode(key.sign(old_form)),
    }

    response = api.http.delete("/app/v1/device", headers=headers)

    assert_problem(response, 401, "bad-signature")
    assert live_devices(api, "alice") == [device_id]


@sqlite_only
def test_a_delete_signed_by_one_device_resent_with_anothers_id_is_refused(
    api: ApiHarness,
) -> None:
    api.add_user("alice")
    key_a, public_a = new_key()
    key_b, public_b = new_key()
    device_a = activate(api, "alice", key_a, public_a).json()["device_id"]
    device_b = activate(api, "alice", key_b, public_b).json()["device_id"]
    headers = signing.sign_request(
        key_a, device_a, "DELETE", "/app/v1/device", b"", int(time.time())
    )

    replayed = api.http.delete(
        "/app/v1/device", headers={**headers, signing.HEADER_DEVICE: device_b}
    )

    assert_problem(replayed, 401, "bad-signature")
    assert sorted(live_devices(api, "alice")) == sorted([device_a, device_b])
    # The genuine request still works: the refusal spent nothing.
    assert api.http.delete("/app/v1/device", headers=headers).status_code == 204
    assert live_devices(api, "alice") == [device_b]


@sqlite_only
@pytest.mark.parametrize("device", ["dev a", "x" * 65, "dév", "dev_a;b"])
def test_a_malformed_device_header_is_refused(api: ApiHarness, device: str) -> None:
    key, _ = new_key()
    headers = signing.sign_request(key, "dev_x", "GET", "/app/v1/challenges", b"", int(time.time()))
    headers[signing.HEADER_DEVICE] = device
    raw = {name: value.encode("utf-8") for name, value in headers.items()}
    response = api.http.get("/app/v1/challenges", headers=raw)
    problem = assert_problem(response, 401, "bad-signature")
    assert "device" in problem["detail"]


# -- the privacyIDEA Authenticator's RSA keys: the same rule ------------------------------------


@sqlite_only
def test_a_pipush_rollout_with_a_phone_key_already_registered_is_refused(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    with PiLab(settings, clock, tmp_path) as lab:
        first = lab.enrol("alice")
        offer = lab.api.run(
            lab.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, "alice")
        )
        second = lab.phone(key=first.key)
        second.scan(offer.uri)

        response = second.rollout()

        assert response.status_code == 409, response.text
        assert "public key" in response.json()["result"]["error"]["message"]
        assert [row.result for row in lab.api.refusals()] == ["conflict"]
        device = lab.api.run(lab.api.services.devices.get(offer.device_id))
        assert (device.state, device.public_key) == ("pending", None)


# -- the migration -------------------------------------------------------------------------------


#: The devices table as revision 0005 has it (the current model has later columns).
DEVICES_AT_0005 = table(
    "devices",
    *(column(c) for c in ("id", "user_id", "kind", "name", "platform", "public_key", "seed_enc")),
    column("state"),
    column("created_at", UtcDateTime()),
)


def test_upgrading_keeps_a_shared_key_with_the_oldest_device_and_marks_who_started(
    database_url: str,
) -> None:
    """Revision 0006 adds the unique key index: devices that share a key before it keep it
    on the oldest only (the others, if live, are removed); and challenges started by a
    stored token are marked as that token's."""
    config = migrations.alembic_config(database_url)
    command.downgrade(config, "0005")
    key = b"k" * 32

    async def before_then_after() -> tuple[list[tuple[str, str, bool]], list[tuple[str, Any]]]:
        db = Database(database_url)
        try:
            async with db.write() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO users (id, name_key, name, display_name, email, is_admin, "
                        "disabled, blocked, blocked_reason, pin_failures, otp_failures, "
                        "created_at) VALUES (1, 'alice', 'alice', '', '', false, false, false, "
                        "'', 0, 0, CURRENT_TIMESTAMP)"
                    )
                )
                for month, (device_id, state) in enumerate(
                    (("dev_old", "active"), ("dev_new", "pending"), ("dev_lost", "lost")), 1
                ):
                    await conn.execute(
                        insert(DEVICES_AT_0005).values(
                            id=device_id,
                            user_id=1,
                            kind="app",
                            name="",
                            platform="ios",
                            public_key=key,
                            seed_enc=b"s",
                            state=state,
                            created_at=datetime(2026, month, 1, tzinfo=UTC),
                        )
                    )
                await conn.execute(
                    text(
                        "INSERT INTO api_tokens (id, name, token_hash, scope, created_at) "
                        "VALUES (7, 'vpn', 'h', 'gateway', CURRENT_TIMESTAMP)"
                    )
                )
                for challenge_id, token_id in (("ch_gw", 7), ("ch_web", None)):
                    await conn.execute(
                        text(
                            "INSERT INTO challenges (id, user_id, method, state, created_at, "
                            "expires_at, client_name, client_ip, nas_identifier, display, "
                            "token_id) VALUES (:id, 1, 'push', 'expired', CURRENT_TIMESTAMP, "
                            "CURRENT_TIMESTAMP, '', '', '', '', :token)"
                        ),
                        {"id": challenge_id, "token": token_id},
                    )
            await asyncio.to_thread(migrations.upgrade, database_url)
            async with db.read() as conn:
                devices = (
                    await conn.execute(
                        select(devices_t.c.id, devices_t.c.state, devices_t.c.public_key)
                    )
                ).all()
                challenges = (
                    await conn.execute(select(challenges_t.c.id, challenges_t.c.started_by))
                ).all()
        finally:
            await db.dispose()
        return (
            sorted((d.id, d.state, d.public_key is not None) for d in devices),
            sorted((c.id, c.started_by) for c in challenges),
        )

    devices, challenges = asyncio.run(before_then_after())

    assert devices == [
        ("dev_lost", "lost", False),
        ("dev_new", "removed", False),
        ("dev_old", "active", True),
    ]
    assert challenges == [("ch_gw", "token:7"), ("ch_web", None)]
    command.downgrade(config, "0005")  # and back down cleanly, then up again
    migrations.upgrade(database_url)
