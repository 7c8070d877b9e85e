"""The packaged ``/etc/openmfa/openmfa.toml`` (backend/config_sample.py) lists every setting."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from backend.config import Settings, load_settings
from backend.config_sample import NOT_IN_FILE, render


def _commented_settings(text: str) -> dict[str, str]:
    """``name -> value text`` of every ``# name = value`` line."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"# ([a-z0-9_]+) = ?(.*)", line)
        if match:
            found[match[1]] = match[2].strip()
    return found


def test_every_setting_is_listed_once_with_its_default() -> None:
    text = render()
    listed = _commented_settings(text)
    assert set(listed) == set(Settings.model_fields) - NOT_IN_FILE
    for name in listed:
        assert text.count(f"# {name} = ") == 1, name
    assert listed["port"].startswith("8080")
    assert listed["log_level"].startswith('"info"')
    assert listed["key_file"] == "# not set by default"  # shown, never with a bogus value


def test_uncommented_it_loads_as_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each line with a value, uncommented as it stands, is valid TOML and gives the model's
    # defaults: the file can be edited line by line without a surprise.
    for name in [n for n in os.environ if n.startswith("OPENMFA_")]:
        monkeypatch.delenv(name)
    lines = [
        line[2:]
        for line in render().splitlines()
        if re.fullmatch(r"# [a-z0-9_]+ = .*", line) and "not set by default" not in line
    ]
    path = tmp_path / "openmfa.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    values = tomllib.loads(path.read_text(encoding="utf-8"))
    assert len(values) == len(lines)
    settings = load_settings(path, home=tmp_path)
    defaults = Settings(home=tmp_path)
    for name in values:
        assert getattr(settings, name) == getattr(defaults, name), name


@pytest.mark.parametrize("name", ["public_url", "radius_port", "hash_queue_limit"])
def test_the_comments_beside_a_field_come_along(name: str) -> None:
    text = render()
    above = text.split(f"# {name} = ")[0].rstrip().splitlines()[-1]
    assert above.startswith("# ")
    assert " = " not in above
