"""Settings: defaults < TOML file < OPENMFA_* environment < explicit overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backend.config import CONFIG_FILE_NAME, Settings, default_home, load_settings
from backend.errors import ConfigurationError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No OPENMFA_* variable of the caller leaks in; HOME points somewhere harmless."""
    for name in list(os.environ):
        if name.startswith("OPENMFA_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))


def write_config(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / CONFIG_FILE_NAME
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults ---------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings()

    assert settings.home == tmp_path / "user-home" / ".local" / "share" / "openmfa"
    assert settings.database_url == ""
    assert settings.resolved_database_url == (f"sqlite+aiosqlite:///{settings.home / 'openmfa.db'}")
    assert settings.uses_sqlite
    assert settings.resolved_key_file == settings.home / "server.key"
    assert settings.public_url == ""
    assert settings.resolved_public_url == "http://127.0.0.1:8080"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.issuer == "OpenMFA"
    assert (settings.log_level, settings.log_format) == ("info", "json")
    # OWASP's argon2id minimum, not the library defaults.
    assert (
        settings.argon2_memory_kib,
        settings.argon2_time_cost,
        settings.argon2_parallelism,
    ) == (19456, 2, 1)
    assert settings.signature_skew_seconds == 300


def test_default_home_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_home() == tmp_path / "xdg" / "openmfa"
    assert load_settings().home == tmp_path / "xdg" / "openmfa"


def test_openmfa_home_names_the_data_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENMFA_HOME", str(tmp_path / "data"))
    settings = load_settings()
    assert settings.home == tmp_path / "data"
    assert settings.resolved_database_url.endswith(str(tmp_path / "data" / "openmfa.db"))
    assert settings.resolved_key_file == tmp_path / "data" / "server.key"


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


def test_postgres_url_is_not_sqlite(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, database_url="postgresql+asyncpg://db/openmfa")
    assert not settings.uses_sqlite
    assert settings.resolved_database_url == "postgresql+asyncpg://db/openmfa"


# -- the TOML file and the layering -----------------------------------------------------------


def test_toml_file_in_home_is_read(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        'port = 9090\nissuer = "Example Corp"\nlog_format = "text"\n'
        'public_url = "https://mfa.example.com/"\nkey_file = "/etc/openmfa/server.key"\n',
    )
    settings = load_settings(home=tmp_path)
    assert settings.port == 9090
    assert settings.issuer == "Example Corp"
    assert settings.log_format == "text"
    assert settings.public_url == "https://mfa.example.com"  # trailing slash dropped
    assert settings.resolved_key_file == Path("/etc/openmfa/server.key")


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(tmp_path, 'port = 9090\nissuer = "From File"\n')
    monkeypatch.setenv("OPENMFA_HOME", str(tmp_path))
    monkeypatch.setenv("OPENMFA_PORT", "9191")

    settings = load_settings()

    assert settings.port == 9191  # environment wins
    assert settings.issuer == "From File"  # file value kept where env says nothing


def test_explicit_overrides_beat_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_config(tmp_path, "port = 9090\n")
    monkeypatch.setenv("OPENMFA_PORT", "9191")
    assert load_settings(home=tmp_path, port=9292).port == 9292
    # None means "not given": the layer below shows through.
    assert load_settings(home=tmp_path, port=None).port == 9191


def test_explicit_home_beats_openmfa_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENMFA_HOME", str(tmp_path / "env-home"))
    write_config(tmp_path / "cli-home", "port = 9393\n")
    settings = load_settings(home=tmp_path / "cli-home")
    assert settings.home == tmp_path / "cli-home"
    assert settings.port == 9393  # and the config file is looked up in that home


def test_explicit_config_file(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text("port = 9494\n", encoding="utf-8")
    write_config(tmp_path / "home", "port = 1111\n")
    assert load_settings(config_file=path, home=tmp_path / "home").port == 9494


def test_openmfa_config_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "named.toml"
    path.write_text("port = 9595\n", encoding="utf-8")
    monkeypatch.setenv("OPENMFA_CONFIG", str(path))
    assert load_settings(home=tmp_path / "home").port == 9595


def test_missing_default_file_is_fine_but_a_named_one_is_not(tmp_path: Path) -> None:
    assert load_settings(home=tmp_path / "empty").port == 8080
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigurationError, match=f"settings file {missing} does not exist"):
        load_settings(config_file=missing, home=tmp_path)


def test_a_missing_file_named_by_openmfa_config_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A typo in OPENMFA_CONFIG must not silently start the server on the defaults."""
    missing = tmp_path / "typo.toml"
    monkeypatch.setenv("OPENMFA_CONFIG", str(missing))
    with pytest.raises(ConfigurationError, match=f"settings file {missing} does not exist"):
        load_settings(home=tmp_path)


def test_environment_values_are_converted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENMFA_HASH_WORKERS", "4")
    monkeypatch.setenv("OPENMFA_SHUTDOWN_GRACE_SECONDS", "2.5")
    monkeypatch.setenv("OPENMFA_KEY_FILE", str(tmp_path / "k"))
    settings = load_settings(home=tmp_path)
    assert settings.hash_workers == 4
    assert settings.shutdown_grace_seconds == 2.5
    assert settings.key_file == tmp_path / "k"


# -- bad values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("OPENMFA_PORT", "eighty", "port"),
        ("OPENMFA_PORT", "0", "port"),
        ("OPENMFA_PORT", "65536", "port"),
        ("OPENMFA_LOG_LEVEL", "verbose", "log_level"),
        ("OPENMFA_LOG_FORMAT", "xml", "log_format"),
        ("OPENMFA_PUBLIC_URL", "mfa.example.com", "public_url"),
        ("OPENMFA_ARGON2_MEMORY_KIB", "1024", "argon2_memory_kib"),
        ("OPENMFA_ARGON2_TIME_COST", "1", "argon2_time_cost"),
        ("OPENMFA_HASH_WORKERS", "0", "hash_workers"),
        ("OPENMFA_SIGNATURE_SKEW_SECONDS", "5", "signature_skew_seconds"),
        ("OPENMFA_MAX_BODY_BYTES", "10", "max_body_bytes"),
    ],
)
def test_bad_environment_values_name_the_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(home=tmp_path)
    message = str(caught.value)
    assert message.startswith("invalid settings: ")
    assert f"{field}: " in message


def test_every_bad_value_is_reported_at_once(tmp_path: Path) -> None:
    write_config(tmp_path, 'port = "x"\nlog_level = "loud"\n')
    with pytest.raises(ConfigurationError) as caught:
        load_settings(home=tmp_path)
    assert "port: " in str(caught.value)
    assert "log_level: " in str(caught.value)


def test_public_url_message_is_plain(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="public_url must start with http:// or https://"):
        load_settings(home=tmp_path, public_url="ftp://x")


@pytest.mark.parametrize("key", ["prot", "database", "Port", "server.port"])
def test_unknown_keys_in_the_file_are_refused(tmp_path: Path, key: str) -> None:
    write_config(tmp_path, f'"{key}" = 1\n')
    with pytest.raises(ConfigurationError) as caught:
        load_settings(home=tmp_path)
    assert key in str(caught.value)
    assert "Extra inputs are not permitted" in str(caught.value)


def test_tables_in_the_file_are_refused(tmp_path: Path) -> None:
    write_config(tmp_path, "[server]\nport = 1\n")
    with pytest.raises(ConfigurationError, match="server"):
        load_settings(home=tmp_path)


def test_unknown_overrides_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="colour"):
        load_settings(home=tmp_path, colour="blue")


def test_broken_toml_says_which_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "port = = 1\n")
    with pytest.raises(ConfigurationError, match=f"cannot read settings file {path}"):
        load_settings(home=tmp_path)


def test_a_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / CONFIG_FILE_NAME
    path.write_bytes(b'issuer = "\xe9cole"\n')  # Latin-1, not UTF-8
    with pytest.raises(ConfigurationError, match=f"cannot read settings file {path}"):
        load_settings(home=tmp_path)


def test_settings_model_refuses_unknown_fields_directly() -> None:
    with pytest.raises(ValueError, match="Extra inputs"):
        Settings.model_validate({"nonsense": 1})


def test_public_url_defaults_to_this_servers_address(tmp_path: Path) -> None:
    assert load_settings(home=tmp_path, port=9090).resolved_public_url == "http://127.0.0.1:9090"
    assert load_settings(home=tmp_path, host="0.0.0.0").resolved_public_url == (  # noqa: S104
        "http://127.0.0.1:8080"
    )
    assert (
        load_settings(home=tmp_path, host="::1", port=81).resolved_public_url == "http://[::1]:81"
    )
    explicit = load_settings(home=tmp_path, port=9090, public_url="https://mfa.example.com/")
    assert explicit.resolved_public_url == "https://mfa.example.com"


def test_home_cannot_be_set_in_the_settings_file(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE_NAME).write_text('home = "/elsewhere"\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="OPENMFA_HOME"):
        load_settings(home=tmp_path)


@pytest.mark.parametrize("issuer", ["", "Acme:VPN", "x" * 65])
def test_issuer_must_make_an_unambiguous_otpauth_label(tmp_path: Path, issuer: str) -> None:
    with pytest.raises(ConfigurationError, match="issuer"):
        load_settings(home=tmp_path, issuer=issuer)
