"""Building the push transports from the settings: what is on, what polls, what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.config import Settings, load_settings
from backend.errors import ConfigurationError
from backend.push.dispatcher import close_transports
from backend.push.factory import build_transports, push_summary
from backend.services import Services
from tests.fakes.apns import make_apns_key
from tests.fakes.fcm import make_service_account

pytestmark = pytest.mark.anyio


def _settings(tmp_path: Path, **push: object) -> Settings:
    return load_settings(config_file=None, home=tmp_path, **push)


def _apns(tmp_path: Path) -> dict[str, object]:
    key = make_apns_key(tmp_path / "apns")
    return {
        "apns_key_file": key.p8_path,
        "apns_key_id": key.key_id,
        "apns_team_id": key.team_id,
        "apns_topic": "org.openmfa.test",
    }


async def test_nothing_configured_means_polling_for_every_platform(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert await build_transports(settings) == {}
    assert push_summary(settings) == [
        "APNs not configured: iOS devices are served by polling",
        "FCM not configured: Android devices are served by polling",
        "Web Push on: VAPID subject https://127.0.0.1, 4 allowed push service origin(s); "
        "the web app needs HTTPS: set public_url to its https:// address",
    ]
    off = _settings(tmp_path, webpush_enabled=False)
    assert push_summary(off)[2] == (
        "Web Push off (webpush_enabled = false): web devices are served by polling"
    )


async def test_both_transports_are_built_from_their_settings(tmp_path: Path) -> None:
    account = make_service_account(tmp_path / "fcm", "https://127.0.0.1:9/token")
    settings = _settings(
        tmp_path, **_apns(tmp_path), fcm_service_account_file=account, fcm_workers=2
    )
    transports = await build_transports(settings)
    try:
        assert sorted(transports) == ["apns", "fcm"]
        assert [t.name for t in transports.values()] == ["apns", "fcm"]
    finally:
        await close_transports(transports)
    assert push_summary(settings) == [
        "APNs on: topic org.openmfa.test, Apple's endpoint",
        "FCM on: https://fcm.googleapis.com, 2 worker thread(s)",
        "Web Push on: VAPID subject https://127.0.0.1, 4 allowed push service origin(s); "
        "the web app needs HTTPS: set public_url to its https:// address",
    ]


@pytest.mark.parametrize(
    ("push", "message"),
    [
        ({"apns_key_id": "ABCDEFGHIJ"}, "APNs is half configured: apns_key_id set but"),
        ({"apns_url": "https://127.0.0.1:9"}, "apns_url set without the APNs key"),
        ({"fcm_url": "https://127.0.0.1:9"}, "fcm_url set without fcm_service_account_file"),
    ],
)
async def test_half_a_configuration_is_refused(
    tmp_path: Path, push: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        await build_transports(_settings(tmp_path, **push))


async def test_a_bad_key_file_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    apns = _apns(tmp_path)
    garbage = tmp_path / "key.p8"
    garbage.write_text("not a key")
    apns |= {"apns_key_file": garbage}
    with pytest.raises(ConfigurationError, match="is not an APNs auth key"):
        await build_transports(_settings(tmp_path, **apns))


async def test_a_bad_service_account_closes_what_was_built_and_stops_the_start(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "service-account.json"
    broken.write_text("{not json")
    settings = _settings(tmp_path, **_apns(tmp_path), fcm_service_account_file=broken)
    with pytest.raises(ConfigurationError, match="is not valid JSON"):
        await build_transports(settings)


async def test_services_refuse_to_open_with_a_bad_push_configuration_unless_push_is_off(
    settings: Settings, tmp_path: Path
) -> None:
    broken = tmp_path / "service-account.json"
    broken.write_text("[]")
    bad = settings.model_copy(update={"fcm_service_account_file": broken})
    with pytest.raises(ConfigurationError, match="is not a JSON object"):
        await Services.open(bad)
    # CLI commands open the services without push: a broken key does not stop them.
    services = await Services.open(bad, push=False)
    try:
        assert services.push is None
    finally:
        await services.close()
