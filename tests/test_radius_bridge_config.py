"""The standalone bridge's settings: arguments over environment over defaults, and one clear
message for every bad value (never the token)."""

from __future__ import annotations

from pathlib import Path

import pytest

from radius_bridge.config import (
    DEFAULT_LISTEN,
    BridgeConfigError,
    ListenAddress,
    load_bridge_settings,
    parse_host_port,
)


def token_file(tmp_path: Path, text: str = "omfa_secret-token\n", mode: int = 0o600) -> Path:
    path = tmp_path / "bridge.token"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1812", ListenAddress("127.0.0.1", 1812)),
        ("0.0.0.0:0", ListenAddress("0.0.0.0", 0)),  # noqa: S104 - parsed, not bound
        ("[::1]:1812", ListenAddress("::1", 1812)),
        ("[::]:18120", ListenAddress("::", 18120)),
        ("[2001:db8::1]", ListenAddress("2001:db8::1", 1812)),
        ("10.0.0.1", ListenAddress("10.0.0.1", 1812)),
    ],
)
def test_listen_addresses(text: str, expected: ListenAddress) -> None:
    assert parse_host_port(text, "listen address", 1812) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("::1:1812", "IPv6 address in brackets"),
        ("radius.example:1812", "is not an IP address"),
        ("127.0.0.1:x", "is not a number"),
        ("127.0.0.1:70000", "outside 0-65535"),
        ("[::1", "closing ']'"),
    ],
)
def test_bad_listen_addresses(text: str, message: str) -> None:
    with pytest.raises(BridgeConfigError, match=message):
        parse_host_port(text, "listen address", 1812)


def test_arguments_win_over_the_environment(tmp_path: Path) -> None:
    env = {
        "OPENMFA_BRIDGE_BACKEND": "http://env.example",
        "OPENMFA_BRIDGE_TOKEN": "omfa_from-env",
        "OPENMFA_BRIDGE_LISTEN": "127.0.0.1:1, [::1]:2",
        "OPENMFA_BRIDGE_REFRESH_SECONDS": "7",
    }
    from_env = load_bridge_settings(environ=env)
    assert from_env.backend_url == "http://env.example"
    assert from_env.token == "omfa_from-env"
    assert from_env.listen == (ListenAddress("127.0.0.1", 1), ListenAddress("::1", 2))
    assert from_env.refresh_seconds == 7
    assert not from_env.listen_is_default

    argued = load_bridge_settings(
        backend_url="https://mfa.example/",
        token_file=token_file(tmp_path),
        listen=["[::1]:1812"],
        refresh_seconds=2,
        environ=env,
    )
    assert argued.base_url == "https://mfa.example"
    assert argued.token == "omfa_secret-token"
    assert argued.listen == (ListenAddress("::1", 1812),)
    assert argued.refresh_seconds == 2
    assert "omfa_secret-token" not in repr(argued)


def test_defaults(tmp_path: Path) -> None:
    settings = load_bridge_settings(
        backend_url="http://127.0.0.1:8080", token_file=token_file(tmp_path), environ={}
    )
    assert [str(a) for a in settings.listen] == list(DEFAULT_LISTEN)
    assert settings.listen_is_default
    assert (settings.refresh_seconds, settings.max_held, settings.long_poll_seconds) == (
        5.0,
        20_000,
        50.0,
    )
    assert settings.clients_file is None
    assert settings.metrics_listen is None
    assert settings.cut_grace_seconds == 5.0


def test_cut_grace_from_the_environment_and_arguments(tmp_path: Path) -> None:
    env = {"OPENMFA_BRIDGE_CUT_GRACE_SECONDS": "2.5"}
    common: dict[str, object] = {"backend_url": "http://x", "token_file": token_file(tmp_path)}
    assert load_bridge_settings(environ=env, **common).cut_grace_seconds == 2.5  # type: ignore[arg-type]
    argued = load_bridge_settings(environ=env, cut_grace_seconds=0, **common)  # type: ignore[arg-type]
    assert argued.cut_grace_seconds == 0  # 0: the failmode answers at the first cut


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({}, {}, "backend URL is required"),
        ({"backend_url": "ftp://x"}, {"OPENMFA_BRIDGE_TOKEN": "t"}, "must start with http"),
        ({"backend_url": "http://x"}, {}, "a bridge token is required"),
        (
            {"backend_url": "http://x", "refresh_seconds": 0},
            {"OPENMFA_BRIDGE_TOKEN": "t"},
            "refresh seconds",
        ),
        (
            {"backend_url": "http://x", "metrics_listen": "localhost:9000"},
            {"OPENMFA_BRIDGE_TOKEN": "t"},
            "metrics address",
        ),
        (
            {"backend_url": "http://x", "listen": ["127.0.0.1:1", "127.0.0.1:1"]},
            {"OPENMFA_BRIDGE_TOKEN": "t"},
            "given twice",
        ),
        (
            {"backend_url": "http://x"},
            {"OPENMFA_BRIDGE_TOKEN": "t", "OPENMFA_BRIDGE_MAX_HELD": "lots"},
            "not a whole number",
        ),
        (
            {"backend_url": "http://x", "clients_file": Path("c.json")},
            {"OPENMFA_BRIDGE_TOKEN": "t", "OPENMFA_BRIDGE_CLIENTS_CACHE": "c.cache"},
            "nothing to cache",
        ),
        (
            {"backend_url": "http://x"},
            {"OPENMFA_BRIDGE_TOKEN": "t", "OPENMFA_BRIDGE_CUT_GRACE_SECONDS": "300"},
            "cut grace seconds",
        ),
        (
            {"backend_url": "http://x", "log_format": "xml"},
            {"OPENMFA_BRIDGE_TOKEN": "t"},
            "json or text",
        ),
    ],
)
def test_bad_settings_are_named(
    kwargs: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(BridgeConfigError, match=message):
        load_bridge_settings(environ=env, **kwargs)  # type: ignore[arg-type]


def test_token_files_must_be_private_and_not_empty(tmp_path: Path) -> None:
    with pytest.raises(BridgeConfigError, match="chmod 600") as readable:
        load_bridge_settings(
            backend_url="http://x", token_file=token_file(tmp_path, mode=0o644), environ={}
        )
    assert "omfa_secret-token" not in str(readable.value)
    with pytest.raises(BridgeConfigError, match="is empty"):
        load_bridge_settings(
            backend_url="http://x", token_file=token_file(tmp_path, "\n"), environ={}
        )
    with pytest.raises(BridgeConfigError, match="does not exist"):
        load_bridge_settings(backend_url="http://x", token_file=tmp_path / "nope", environ={})


# -- several backends (issue 18) -----------------------------------------------------------------


def test_several_backends_from_arguments_and_from_the_environment(tmp_path: Path) -> None:
    env = {
        "OPENMFA_BRIDGE_BACKEND": "https://mfa1.example, https://mfa2.example/",
        "OPENMFA_BRIDGE_TOKEN": "t",
    }
    from_env = load_bridge_settings(environ=env)
    assert from_env.backend_urls == ("https://mfa1.example", "https://mfa2.example/")
    assert from_env.base_urls == ("https://mfa1.example", "https://mfa2.example")
    assert from_env.backend_url == "https://mfa1.example"  # the preferred one

    # --backend repeated wins over the environment, in the order given.
    argued = load_bridge_settings(
        backend_url=["http://10.0.0.2:8080", "http://10.0.0.1:8080/openmfa"],
        token_file=token_file(tmp_path),
        environ=env,
    )
    assert argued.base_urls == ("http://10.0.0.2:8080", "http://10.0.0.1:8080/openmfa")


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        (["http://a.example", "http://a.example/"], "given twice"),
        (["http://a.example", "ftp://b.example"], "must start with http"),
        (["https://bridge:hunter2@a.example"], "user name or password"),
        (["https://a.example/?x=1"], "query or fragment"),
        (["https://a.example#top"], "query or fragment"),
        (["https://a.example:99999"], "malformed"),
        (["http://"], "must start with http"),
        ([f"http://n{i}.example" for i in range(17)], "at most 16"),
    ],
)
def test_bad_backend_urls_are_named_without_their_credentials(
    urls: list[str], message: str
) -> None:
    with pytest.raises(BridgeConfigError, match=message) as refused:
        load_bridge_settings(backend_url=urls, environ={"OPENMFA_BRIDGE_TOKEN": "t"})
    assert "hunter2" not in str(refused.value)


def test_the_help_tells_how_to_give_several_backends() -> None:
    from radius_bridge.cli import build_parser

    text = build_parser().format_help()
    assert "repeat" in text
    assert "--backend" in text
    args = build_parser().parse_args(["--backend", "http://a", "--backend", "http://b"])
    assert args.backend == ["http://a", "http://b"]
