"""docs/quickstart.md steps 6, 9 and 10 as the walk-through does them, with the default
policies: the fraud report of step 10 must still get its push past the push-fatigue guard
(issue 13: it was the fourth push in five minutes and was refused), and a fourth push is
refused as step 10 says."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.authenticator.client import AuthenticatorError
from backend.domain.stepup import ADMINISTRATOR
from tests.support.api import ADMIN as ADMIN_ACTOR
from tests.support.api import ApiHarness
from tests.support.database import migrated_sqlite


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return migrated_sqlite(tmp_path)


def test_the_quickstart_pushes_fit_the_fatigue_guard(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    # Step 6: a push, approved.
    first = api.start("alice")
    assert phone.answer(first["id"], "approve") == "approved"
    # Step 9: PIN for everyone, number matching for alice; one push shows both.
    api.set_policy("require_pin", True)
    api.run(api.services.users.set_pin(ADMIN_ACTOR, ADMINISTRATOR, "alice", "4711"))
    api.set_policy("number_matching", True, user="alice")
    second = api.start("alice")
    assert second["number"] is not None
    with pytest.raises(AuthenticatorError, match="pin-required"):
        phone.answer(second["id"], "approve", number=second["number"])
    assert phone.answer(second["id"], "approve", pin="4711", number=second["number"]) == "approved"
    # Step 10: the third push, reported as fraud (no PIN or number needed).
    third = api.start("alice")
    assert phone.answer(third["id"], "fraud") == "fraud"
    assert api.run(api.services.users.get("alice")).blocked
    api.run(api.services.access.unblock(ADMIN_ACTOR, "alice"))
    # What step 10 says of a fourth push within the five minutes.
    fourth = api.gateway.post(
        "/gateway/v1/authentications", json={"user": "alice", "method": "push"}
    )
    assert fourth.status_code == 429
    assert fourth.json()["type"].endswith("/push-limited")
