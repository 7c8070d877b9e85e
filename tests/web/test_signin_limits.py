"""Sign-in limits under concurrent guesses: the per-address limit is claimed before argon2id,
and an unknown name costs exactly the one argon2id check a known one does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from backend.config import Settings
from tests.support.clock import FakeClock
from tests.support.web import WebHarness, csrf_from, sign_in

GUESSES = 10


async def _posted_at_once(web: WebHarness, form: dict[str, str], cookies: httpx.Cookies) -> None:
    limits = httpx.Limits(max_connections=GUESSES, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=web.url, timeout=60.0, limits=limits, cookies=cookies
    ) as http:
        answers = await asyncio.gather(
            *(http.post("/portal/sign-in", data=form) for _ in range(GUESSES))
        )
    assert sorted({a.status_code for a in answers}) == [401, 429]


def test_concurrent_guesses_from_one_address_check_at_most_its_limit(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    limited = settings.model_copy(
        update={"web_sign_in_address_limit": 3, "web_sign_in_address_window_seconds": 600}
    )
    with WebHarness(limited, clock) as web:
        web.add_user("alice", otp_max_failures=100)
        browser = web.browser()
        page = browser.get("/portal/sign-in")
        form = {"csrf_token": csrf_from(page.text), "username": "alice", "password": "guess"}
        hasher = web.server_services.hasher
        checked_before = hasher.counts["verify"]

        asyncio.run(_posted_at_once(web, form, browser.cookies))

        assert hasher.counts["verify"] - checked_before == 3
        details = [row.detail for row in web.audit("web.sign_in")]
        assert details.count("portal: wrong-password") == 3
        assert details.count("portal: address-limited") == GUESSES - 3


def test_a_right_password_leaves_the_address_budget_as_it_was(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    limited = settings.model_copy(update={"web_sign_in_address_limit": 2})
    with WebHarness(limited, clock) as web:
        web.add_user("alice")
        assert sign_in(web.browser(), "alice", "wrong").status_code == 401
        for _ in range(3):  # successes are not failures
            assert sign_in(web.browser(), "alice").status_code == 303
        assert sign_in(web.browser(), "alice", "wrong").status_code == 401
        assert sign_in(web.browser(), "alice").status_code == 429


def test_an_unknown_name_costs_one_argon2_check_like_a_known_one(web: WebHarness) -> None:
    web.add_user("alice")
    web.add_user("nopass", password=None)
    hasher = web.server_services.hasher
    for name in ("alice", "nobody", "nopass"):
        before = hasher.counts["verify"]
        assert sign_in(web.browser(), name, "a wrong password").status_code == 401
        assert hasher.counts["verify"] - before == 1, name


async def _codes_at_once(
    web: WebHarness, form: dict[str, str], cookies: httpx.Cookies, path: str = "/admin/sign-in/code"
) -> None:
    limits = httpx.Limits(max_connections=GUESSES, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=web.url, timeout=60.0, limits=limits, cookies=cookies
    ) as http:
        answers = await asyncio.gather(
            *(http.post(path, data={**form, "code": f"{n:06d}"}) for n in range(GUESSES))
        )
    assert sorted({a.status_code for a in answers}) == [401, 429]


def test_concurrent_codes_at_the_admin_second_step_check_at_most_the_address_limit(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    limited = settings.model_copy(update={"web_sign_in_address_limit": 3})
    with WebHarness(limited, clock) as web:
        web.add_user("root", admin=True, otp_max_failures=100)
        phone = web.device("root")
        assert phone.answer(web.start("root")["id"], "approve") == "approved"  # now active
        browser = web.browser()
        assert sign_in(browser, "root", area="admin").status_code == 303
        verify = browser.get("/admin/sign-in/verify")
        assert "Code from your authenticator app" in verify.text

        asyncio.run(_codes_at_once(web, {"csrf_token": csrf_from(verify.text)}, browser.cookies))

        details = [row.detail for row in web.audit("web.sign_in")]
        assert details.count("admin: code: wrong-code") == 3
        assert details.count("admin: address-limited") == GUESSES - 3


def test_concurrent_codes_at_the_portal_step_up_check_at_most_the_address_limit(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    limited = settings.model_copy(update={"web_sign_in_address_limit": 3})
    with WebHarness(limited, clock) as web:
        web.add_user("alice", otp_max_failures=100)
        phone = web.device("alice")
        assert phone.answer(web.start("alice")["id"], "approve") == "approved"  # now active
        browser = web.browser()
        assert sign_in(browser, "alice").status_code == 303
        page = browser.get("/portal/step-up")
        assert "Code from your authenticator app" in page.text
        form = {"csrf_token": csrf_from(page.text), "next": "/portal/"}

        asyncio.run(_codes_at_once(web, form, browser.cookies, "/portal/step-up/code"))

        details = [row.detail for row in web.audit("web.sign_in")]
        assert details.count("portal: step-up: code wrong-code") == 3
        assert details.count("portal: step-up: address-limited") == GUESSES - 3
