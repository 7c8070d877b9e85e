"""An imported 60-second hardware token over RADIUS: ``password,code`` through the real bridge
(pyrad as the gateway) is accepted with the token's code from ``oathtool -s 60`` and rejected
with the 30-second code of the same key."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from pyrad import packet as pyrad_packet

from backend.domain.stepup import ADMINISTRATOR
from tests.support.api import ADMIN
from tests.support.bridge import RadiusLab

SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
RADIUS_SECRET = "import-test-secret-0"
PASSWORD = "correct horse battery"

pytestmark = pytest.mark.skipif(shutil.which("oathtool") is None, reason="needs oathtool")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadiusLab]:
    with RadiusLab(tmp_path_factory.mktemp("radius-lab")) as running:
        try:
            yield running
        finally:
            running.close_pyrad_clients()


def oathtool(at: datetime, period: int) -> str:
    moment = at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return subprocess.run(
        ["oathtool", "--totp", "-s", str(period), "-N", moment, "-b", SECRET],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def differing_moment(start: datetime) -> datetime:
    """A moment whose 30 s code is none of the codes a 60 s token accepts around it."""
    at = start.replace(second=10, microsecond=0)
    sixty, thirty = pyotp.TOTP(SECRET, interval=60), pyotp.TOTP(SECRET, interval=30)
    while thirty.at(at) in {sixty.generate_otp(int(at.timestamp()) // 60 + d) for d in (-1, 0, 1)}:
        at += timedelta(minutes=5)
    return at


def test_an_imported_60_second_token_over_radius(lab: RadiusLab) -> None:
    lab.client("hwtoken-gw", ["127.0.0.1"], RADIUS_SECRET, mode="otp", primary="local")
    lab.unenrolled_user("hwuser", password=PASSWORD)
    tokens = (
        "upn,serial number,secret key,time interval,manufacturer,model\n"
        f"hwuser,RAD-60,{SECRET},60,Feitian,c200\n"
    ).encode()
    lab.api.run(lab.api.services.imports.import_tokens(ADMIN, ADMINISTRATOR, tokens))
    lab.api.clock.now = differing_moment(datetime.now(UTC) + timedelta(hours=2))
    client = lab.pyrad("127.0.0.1", RADIUS_SECRET)

    def send(password: str) -> int:
        request = client.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name="hwuser")
        request["User-Password"] = request.PwCrypt(password)
        return int(client.SendPacket(request).code)

    assert send(f"{PASSWORD},{oathtool(lab.api.clock.now, 30)}") == pyrad_packet.AccessReject
    assert send(f"{PASSWORD},{oathtool(lab.api.clock.now, 60)}") == pyrad_packet.AccessAccept
