"""``openmfa config show``: every setting with its source, and no secret in the output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from backend.config import Settings, load_settings
from backend.doctor.settings_view import MASK, describe, is_secret_field, mask_url
from tests.support.process import Cli

SECRET_WORDS = ("password", "passwd", "secret", "token", "key", "credential")


def test_every_settings_field_that_names_a_credential_is_masked_or_points_to_a_file() -> None:
    # Walks the real model: a new field such as ``smtp_password`` is masked by its name, and a
    # field that holds a credential under another name would have to be added to the rule.
    for name in Settings.model_fields:
        if any(word in name for word in SECRET_WORDS):
            assert is_secret_field(name) or name.endswith(("_file", "_id")), name


def test_a_model_with_secret_fields_shows_none_of_them(tmp_path: Path) -> None:
    class Extended(BaseModel):
        home: Path
        smtp_password: str
        api_token: str
        radius_secret: str
        signing_key: str
        apns_key_id: str
        database_url: str

    values = {
        "home": tmp_path,
        "smtp_password": "pw-SENTINEL-1",
        "api_token": "tok-SENTINEL-2",
        "radius_secret": "sec-SENTINEL-3",
        "signing_key": "key-SENTINEL-4",
        "apns_key_id": "ABCDEFGHIJ",
        "database_url": "postgresql+asyncpg://openmfa:db-SENTINEL-5@db.example/openmfa",
    }
    views = describe(Extended.model_validate(values), None)
    shown = " ".join(v.value for v in views)
    assert "SENTINEL" not in shown
    by_name = {v.name: v for v in views}
    for name in ("smtp_password", "api_token", "radius_secret", "signing_key"):
        assert by_name[name].value == MASK
        assert by_name[name].secret
    assert by_name["apns_key_id"].value == "ABCDEFGHIJ"  # an identifier, not a secret
    assert by_name["database_url"].value == (
        f"postgresql+asyncpg://openmfa:{MASK}@db.example/openmfa"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p%40ss@h:5432/d", f"postgresql://u:{MASK}@h:5432/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        (
            "sqlite+aiosqlite:////var/lib/openmfa/openmfa.db",
            "sqlite+aiosqlite:////var/lib/openmfa/openmfa.db",
        ),
    ],
)
def test_urls_lose_only_their_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_every_setting_is_listed_with_its_source(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "openmfa.toml").write_text('issuer = "Example"\nport = 9000\n')
    cli = Cli(
        home,
        OPENMFA_PORT="9100",
        OPENMFA_DATABASE_URL="postgresql+asyncpg://openmfa:hunter2-SENTINEL@db/openmfa",
    )
    result = cli("config", "show", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(Settings.model_fields)
    assert rows["issuer"] == {
        "name": "issuer",
        "value": "Example",
        "source": f"file {home / 'openmfa.toml'}",
        "secret": False,
    }
    assert rows["port"]["value"] == "9100"
    assert rows["port"]["source"] == "environment OPENMFA_PORT"
    assert rows["log_level"]["source"] == "default"
    assert rows["home"]["source"] == "environment OPENMFA_HOME"
    assert "hunter2" not in result.stdout
    table = cli("--home", str(home), "config", "show").stdout
    assert "hunter2" not in table
    assert any(
        line.split()[:2] == ["home", str(home)] and line.endswith("option --home")
        for line in table.splitlines()
    )
    assert any(
        line.split() == ["port", "9100", "environment", "OPENMFA_PORT"]
        for line in table.splitlines()
    )


def test_the_values_are_the_ones_the_server_would_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMFA_RADIUS_PORT", "1645")
    settings = load_settings(None, home=tmp_path)
    views = {v.name: v for v in describe(settings, None)}
    for name in Settings.model_fields:
        if not views[name].secret:
            value = getattr(settings, name)
            expected = (
                ""
                if value is None
                else (str(value).lower() if isinstance(value, bool) else str(value))
            )
            derived = getattr(settings, f"resolved_{name}", None)
            if not expected and derived:
                expected = str(derived)
                assert views[name].source == "default, derived"
            assert views[name].value == mask_url(expected), name
    assert views["radius_port"].source == "environment OPENMFA_RADIUS_PORT"


def test_a_bad_settings_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "openmfa.toml").write_text("port = 'x'\n")
    stderr = Cli(tmp_path).fails("config", "show")
    assert "port" in stderr
