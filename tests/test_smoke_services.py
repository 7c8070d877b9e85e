"""The core flow through the services, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from backend.domain import totp
from backend.domain.stepup import ADMINISTRATOR
from backend.services import Services
from backend.services.context import Actor, SignInContext
from tests.support.clock import FakeClock

pytestmark = pytest.mark.anyio
ADMIN = Actor("test:admin")


async def test_oath_code_accepted_once_then_replay_refused(
    services: Services, clock: FakeClock
) -> None:
    await services.users.add(ADMIN, "Alice")
    oath = await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
    code = totp.current_code(oath.seed, clock())

    first = await services.otp.verify(ADMIN, "ALICE", code, SignInContext())
    again = await services.otp.verify(ADMIN, "alice", code, SignInContext())

    assert (first.accepted, first.reason) == (True, "ok")
    assert (again.accepted, again.reason) == (False, "replayed")
    devices = await services.devices.list_for_user("alice")
    assert [d.state for d in devices] == ["active"]
