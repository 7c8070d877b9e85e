"""Primary ldap against a real Active Directory (the Samba DC of tests/support/samba_dc.py):
radclient and pyrad as gateways, the bridge over UDP, the backend over HTTP, the LDAP adapter
binding to the DC over LDAPS verified with the test CA.

Right password + code: Accept. A wrong password: Reject, and no push is sent. An account
disabled, expired, told to change its password or locked in AD: Reject, with the reason in
the audit log.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from pyrad import packet as pyrad_packet
from sqlalchemy import update

from backend.authenticator.client import AppClient
from backend.directory.settings import DirectorySettings
from backend.store.tables import users_t
from tests.support.api import ADMIN
from tests.support.bridge import RadiusLab
from tests.support.freeradius import radclient, radclient_binary
from tests.support.process import wait_for
from tests.support.samba_dc import SambaDC

pytestmark = pytest.mark.skipif(radclient_binary() is None, reason="radclient not installed")

SECRET = "bridge-test-secret-0"
ACCEPT, REJECT, CHALLENGE = (
    pyrad_packet.AccessAccept,
    pyrad_packet.AccessReject,
    pyrad_packet.AccessChallenge,
)
RADCLIENT = "127.0.0.1"  # radclient sends from here
PUSH_GATEWAY = "127.0.0.81"  # pyrad, push mode
CODE_GATEWAY = "127.0.0.82"  # pyrad, challenge mode


@dataclass
class Corp:
    lab: RadiusLab
    dc: SambaDC
    directory_id: int

    def user(self, enrolled: bool = True) -> tuple[str, str, AppClient | None]:
        """A new AD user, synced here (tied by objectGUID), with a phone when ``enrolled``."""
        name = self.dc.new_name("vpn")
        password = f"Pw-{uuid.uuid4().hex[:12]}!"
        self.dc.add_user(name, password)
        phone = self.lab.user(name) if enrolled else None
        if not enrolled:
            self.lab.unenrolled_user(name)
        key = name.casefold()
        guid = self.dc.guid(name)

        async def tie() -> None:
            async with self.lab.api.services.db.write() as conn:
                await conn.execute(
                    update(users_t)
                    .where(users_t.c.name_key == key)
                    .values(directory_id=self.directory_id, external_id=guid)
                )

        self.lab.api.run(tie())
        return name, password, phone

    def reasons(self, name: str) -> list[str]:
        """The directory outcomes audited for ``name``, oldest first."""
        rows = self.lab.audit(name.casefold(), "password.verify")
        return [r.detail.split(": ", 1)[1].split(" ")[0] for r in reversed(rows)]


@pytest.fixture(scope="module")
def corp(samba_dc: SambaDC, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corp]:
    with RadiusLab(tmp_path_factory.mktemp("radius-lab")) as lab:
        view = lab.api.run(
            lab.api.services.directories.add(
                ADMIN,
                DirectorySettings(
                    name="corp",
                    urls=(samba_dc.url,),
                    ca_pem=samba_dc.ca_file.read_text(),
                    bind_dn=samba_dc.bind_dn,
                    base_dn=samba_dc.base_dn,
                    kind="ad",
                ),
                samba_dc.bind_password,
            )
        )
        common = {"primary": "ldap", "directory": "corp", "failmode": "safe"}
        lab.client("asa-radclient", [RADCLIENT], SECRET, mode="otp", **common)
        lab.client("asa-push", [PUSH_GATEWAY], SECRET, mode="push", **common)
        lab.client("asa-challenge", [CODE_GATEWAY], SECRET, mode="challenge", **common)
        yield Corp(lab, samba_dc, view.id)
        lab.close_pyrad_clients()


def send(corp: Corp, source: str, user: str, password: str, timeout: float = 10) -> object:
    client = corp.lab.pyrad(source, SECRET, timeout=timeout)
    request = client.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name=user)
    request["User-Password"] = request.PwCrypt(password)
    return client.SendPacket(request)


def test_radclient_password_comma_code(corp: Corp) -> None:
    name, password, phone = corp.user()
    assert phone is not None
    right = radclient(
        corp.lab.port,
        SECRET,
        {"User-Name": f"CORP\\{name}", "User-Password": f"{password},{phone.code()}"},
        timeout=10,
    )
    assert right.code == "Access-Accept", right.output
    wrong = radclient(
        corp.lab.port,
        SECRET,
        {"User-Name": name, "User-Password": f"not-{password},{phone.code()}"},
        timeout=10,
    )
    assert wrong.code == "Access-Reject", wrong.output
    assert wrong.get("Reply-Message") is None  # before the password is proven: no reason
    assert corp.reasons(name) == ["ok", "wrong-password"]
    # The code of the rejected request was never checked: the password came first.
    assert len(corp.lab.audit(name.casefold(), "otp.verify")) == 1


def test_pyrad_challenge_mode_password_then_code(corp: Corp) -> None:
    name, password, phone = corp.user()
    assert phone is not None
    asked = send(corp, CODE_GATEWAY, name, password)
    assert asked.code == CHALLENGE  # type: ignore[attr-defined]
    state = asked["State"][0]  # type: ignore[index]
    client = corp.lab.pyrad(CODE_GATEWAY, SECRET)
    request = client.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name=name)
    request["User-Password"] = request.PwCrypt(phone.code())
    request["State"] = state
    assert client.SendPacket(request).code == ACCEPT


def test_push_mode_right_password_pushes_wrong_one_does_not(corp: Corp) -> None:
    name, password, phone = corp.user()
    assert phone is not None
    wrong = send(corp, PUSH_GATEWAY, name, "Wrong-Passw0rd!")
    assert wrong.code == REJECT  # type: ignore[attr-defined]
    assert phone.pending() == []
    assert corp.lab.audit(name.casefold(), "auth.start") == []  # no push was ever started
    with ThreadPoolExecutor(max_workers=1) as executor:
        held = executor.submit(send, corp, PUSH_GATEWAY, name, password, 30)
        wait_for(lambda: len(phone.pending()) == 1, 15, "the push to reach the phone")
        phone.answer(phone.pending()[0]["id"], "approve")
        assert held.result(timeout=30).code == ACCEPT  # type: ignore[attr-defined]
    assert corp.reasons(name) == ["wrong-password", "ok"]


@pytest.mark.parametrize("state", ["disabled", "expired", "must-change", "locked"])
def test_accounts_ad_refuses_are_rejected_with_the_reason(corp: Corp, state: str) -> None:
    name, password, phone = corp.user()
    assert phone is not None
    if state == "disabled":
        corp.dc.disable(name)
    elif state == "expired":
        corp.dc.expire(name)
    elif state == "must-change":
        corp.dc.must_change(name)
    else:
        corp.dc.lock_out(name)
    answer = radclient(
        corp.lab.port,
        SECRET,
        {"User-Name": name, "User-Password": f"{password},{phone.code()}"},
        timeout=10,
    )
    assert answer.code == "Access-Reject", answer.output
    assert corp.reasons(name) == [state]
    assert phone.pending() == []
    assert corp.lab.audit(name.casefold(), "otp.verify") == []  # the code was never checked


def test_only_users_of_the_clients_directory(corp: Corp) -> None:
    """A local user with a local password cannot pass a primary-ldap client."""
    corp.lab.unenrolled_user("localonly", password="a local passw0rd")
    answer = radclient(
        corp.lab.port,
        SECRET,
        {"User-Name": "localonly", "User-Password": "a local passw0rd,123456"},
        timeout=10,
    )
    assert answer.code == "Access-Reject"
    rows = corp.lab.audit("localonly", "password.verify")
    assert [r.detail.split(" ")[0] for r in rows] == ["not-in-directory"]
