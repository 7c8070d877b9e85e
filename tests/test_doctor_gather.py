"""The doctor's fact gathering in process, on SQLite and PostgreSQL: a healthy database and
key pass, an unreachable database is one error, and nothing the doctor reads is changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from backend.config import Settings
from backend.crypto import SecretBox
from backend.doctor.checks import Finding
from backend.doctor.gather import Context, data_dir, run_checks
from backend.push.vapid import VapidKey
from backend.services import Services
from backend.store.tables import meta_t
from tests.fakes.tls import make_tls
from tests.support.process import free_port

pytestmark = pytest.mark.anyio


def by_check(findings: list[Finding]) -> dict[str, list[Finding]]:
    grouped: dict[str, list[Finding]] = {}
    for finding in findings:
        grouped.setdefault(finding.check, []).append(finding)
    return grouped


async def test_a_migrated_database_with_its_key_passes(
    services: Services, settings: Settings
) -> None:
    quiet = settings.model_copy(update={"radius_port": 0})
    found = by_check(await run_checks(quiet, "test"))
    assert [f.level for f in found["database"]] == ["ok"]
    assert [f.level for f in found["server key"]] == ["ok"]
    assert "matches the database" in found["server key"][0].message
    assert [f.level for f in found["radius clients"]] == ["ok"]
    if not settings.uses_sqlite:
        # PostgreSQL's clock is compared with ours: on one machine they agree.
        assert any("agrees with the database server" in f.message for f in found["clock"])


async def test_the_vapid_key_is_checked_against_the_server_key(
    services: Services, settings: Settings
) -> None:
    quiet = settings.model_copy(update={"radius_port": 0})
    found = by_check(await run_checks(quiet, "test"))
    assert [f.level for f in found["push Web Push"]] == ["ok", "ok", "warning"]
    assert "opens with the server key" in found["push Web Push"][0].message
    async with services.db.write() as conn:  # a key sealed with some other server key
        other = VapidKey.generate().seal(SecretBox(b"\x02" * 32))
        await conn.execute(
            update(meta_t).where(meta_t.c.key == "webpush_vapid_key").values(value=other)
        )
    found = by_check(await run_checks(quiet, "test"))
    assert found["push Web Push"][0].level == "error"


async def test_an_unreachable_database_is_one_error_and_the_rest_still_runs(
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = Settings(
        home=tmp_path,
        database_url=f"postgresql+asyncpg://openmfa:pw-SENTINEL@127.0.0.1:{port}/openmfa",
        radius_port=0,
    )
    findings = await run_checks(settings, "test")
    found = by_check(findings)
    [database] = found["database"]
    assert database.level == "error"
    assert "does not answer" in database.message
    assert "SENTINEL" not in " ".join(f.message + f.fix for f in findings)
    assert found["radius clients"][0].level == "skip"
    assert "clock" in found  # the later checks ran


async def test_the_doctor_creates_no_key(services: Services, settings: Settings) -> None:
    key = settings.resolved_key_file
    key.unlink()
    found = by_check(await run_checks(settings.model_copy(update={"radius_port": 0}), "test"))
    [finding] = found["server key"]
    assert finding.level == "error"
    assert "restore" in finding.fix
    assert not key.exists()


async def test_a_geoip_file_that_is_not_a_database_is_an_error(tmp_path: Path) -> None:
    garbage = tmp_path / "GeoLite2-City.mmdb"
    garbage.write_bytes(b"not a MaxMind database")
    settings = Settings(home=tmp_path, geoip_database=garbage, radius_port=0)
    [finding] = by_check(await run_checks(settings, "test"))["geoip"]
    assert finding.level == "error"
    assert str(garbage) in finding.message


async def test_a_check_that_breaks_is_an_error_and_the_others_still_run(tmp_path: Path) -> None:
    async def exploding(ctx: Context) -> list[Finding]:
        raise RuntimeError("postgresql://u:pw-SENTINEL@h/d is odd")

    settings = Settings(home=tmp_path, radius_port=0)
    findings = await run_checks(settings, "test", (exploding, data_dir))
    assert [f.check for f in findings] == ["settings", "exploding", "data directory"]
    assert findings[1].level == "error"
    assert "RuntimeError" in findings[1].message
    assert "SENTINEL" not in findings[1].message


async def test_the_https_certificate_is_loaded_as_the_server_loads_it(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    good = Settings(
        home=tmp_path, tls_cert_file=tls.cert_file, tls_key_file=tls.key_file, radius_port=0
    )
    [finding] = by_check(await run_checks(good, "test"))["tls"]
    # The test CA's certificates are short-lived: "ends in N day(s)" is the honest answer.
    assert finding.level in ("ok", "warning"), finding
    assert "CN=" in finding.message
    other = make_tls(tmp_path / "other")  # a key that belongs to another certificate
    bad = good.model_copy(update={"tls_key_file": other.key_file})
    [finding] = by_check(await run_checks(bad, "test"))["tls"]
    assert finding.level == "error"
    assert "does not belong" in finding.message
