"""``openmfa config show``: each effective setting, where it came from, secrets masked.

The sources follow :func:`backend.config.load_settings`: an explicit option (``--home``),
then ``OPENMFA_<NAME>`` in the environment, then the settings file, then the default.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from backend.config import CONFIG_FILE_NAME, ENV_PREFIX

MASK = "********"
# A field whose name says it holds a credential is shown masked. Fields that hold where a
# credential lives (``*_file``) or a public identifier (``*_id``) are not secrets themselves.
_SECRET_NAME = re.compile(r".*(password|passwd|secret|token|key|credential).*")
_NOT_SECRET = re.compile(r".*_(file|id)")
# A URL field may carry a password in its user part (postgresql://user:PASSWORD@host/db).
_URL_WITH_CREDENTIALS = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@]*:)(?P<password>[^@]*)(?=@)")


@dataclass(frozen=True, slots=True)
class SettingView:
    """One setting as shown: its name, its value as text (masked when secret), its source."""

    name: str
    value: str
    source: str
    secret: bool


def is_secret_field(name: str) -> bool:
    """True for a field whose value is itself a credential (see the module's rule)."""
    return bool(_SECRET_NAME.fullmatch(name)) and not _NOT_SECRET.fullmatch(name)


def mask_url(value: str) -> str:
    """``value`` with the password of any ``scheme://user:password@`` part replaced."""
    return _URL_WITH_CREDENTIALS.sub(lambda m: m.group("head") + MASK, value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def settings_file(config_file: Path | None, home: Path) -> tuple[Path, bool]:
    """The settings file :func:`load_settings` reads, and whether it was named on purpose."""
    named = config_file or (
        Path(os.environ[ENV_PREFIX + "CONFIG"]) if os.environ.get(ENV_PREFIX + "CONFIG") else None
    )
    return (named or home / CONFIG_FILE_NAME), named is not None


def describe(
    settings: BaseModel, config_file: Path | None, options: dict[str, str] | None = None
) -> list[SettingView]:
    """Every field of ``settings`` with its effective value and source.

    ``options`` maps a field to the command-line option that set it (``{"home": "--home"}``).
    Works on any settings model, so a test can walk one with fields of its own.
    """
    options = options or {}
    home = Path(str(getattr(settings, "home", ".")))
    path, _ = settings_file(config_file, home)
    in_file: dict[str, Any] = {}
    if path.is_file():
        in_file = tomllib.loads(path.read_text(encoding="utf-8"))
    views = []
    for name in type(settings).model_fields:
        env_name = ENV_PREFIX + name.upper()
        if name in options:
            source = f"option {options[name]}"
        elif env_name in os.environ:
            source = f"environment {env_name}"
        elif name in in_file:
            source = f"file {path}"
        else:
            source = "default"
        secret = is_secret_field(name)
        value = _text(getattr(settings, name))
        derived = getattr(settings, f"resolved_{name}", None)
        if not value and derived:
            # Left empty, the setting takes a value derived from others (home, host, port):
            # show that, since it is what the server uses.
            value, source = _text(derived), f"{source}, derived"
        value = MASK if secret and value else mask_url(value)
        views.append(SettingView(name, value, source, secret))
    return views
