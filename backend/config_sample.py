"""A commented ``openmfa.toml`` listing every setting with its default.

Generated from :class:`backend.config.Settings` and the comments beside its fields in
``backend/config.py``, so a setting added there appears here without a second list to keep in
step. The Debian package installs the result as ``/etc/openmfa/openmfa.toml``
(``python -m backend.config_sample``).
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic.fields import FieldInfo

from backend import config
from backend.config import ENV_PREFIX, Settings

# Set only through the environment or --home: the settings file lives in the data directory.
NOT_IN_FILE = frozenset({"home"})

_HEADER = """\
# OpenMFA settings (docs/configuration.md). Every setting is listed with its default,
# commented out; uncomment a line to change it. Each one can also be given in the
# environment as {prefix}<NAME> (upper case), which wins over this file.
# The data directory (database, server key) is not set here but by {prefix}HOME."""


def _field_comments() -> dict[str, list[str]]:
    """Each field's comment lines: those directly above it, then its trailing comment."""
    source = inspect.getsource(config)
    lines = source.splitlines()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    comments: dict[str, list[str]] = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        row = node.lineno - 2  # 0-based index of the line above the field
        while row >= 0 and lines[row].strip().startswith("#"):
            above.insert(0, lines[row].strip())
            row -= 1
        line = lines[node.end_lineno - 1 if node.end_lineno else node.lineno - 1]
        _, hash_, trailing = line.partition("  # ")
        if hash_ and "noqa" not in trailing and "type:" not in trailing:
            above.append("# " + trailing.strip())
        comments[node.target.id] = above
    return comments


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    # A TOML basic string has JSON's escapes for the characters a default can hold.
    return json.dumps(str(value))


def _allowed(field: FieldInfo) -> str:
    """The values a field takes, when the model restricts them: choices or bounds."""
    if get_origin(field.annotation) is Literal:
        return "one of " + ", ".join(_toml_value(v) for v in get_args(field.annotation))
    limits: dict[str, object] = {}
    for rule in field.metadata:
        for attribute in ("ge", "gt", "le", "lt"):
            if getattr(rule, attribute, None) is not None:
                limits[attribute] = getattr(rule, attribute)
    if "ge" in limits and "le" in limits:
        return f"{limits['ge']} to {limits['le']}"
    words = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
    return ", ".join(f"{words[key]} {value}" for key, value in limits.items())


def render() -> str:
    """The sample file's text."""
    comments = _field_comments()
    out = [_HEADER.format(prefix=ENV_PREFIX)]
    for name, field in Settings.model_fields.items():
        if name in NOT_IN_FILE:
            continue
        out.append("")
        in_heading = False
        for comment in comments.get(name, []):
            # A section heading in the model ("# -- push ... --", maybe over several lines)
            # stays one, set apart from the field below it.
            in_heading = in_heading or comment.startswith("# --")
            out.append(comment)
            if in_heading and comment.endswith("--"):
                out.append("")
                in_heading = False
        hint = _allowed(field)
        default = field.get_default(call_default_factory=True)
        if default is None:
            out.append(f"# {name} =  # not set by default")
        else:
            out.append(f"# {name} = {_toml_value(default)}" + (f"  # {hint}" if hint else ""))
    return "\n".join(out) + "\n"


def main() -> None:
    """Print the sample file, or write it to the path given as the only argument."""
    import sys

    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(render(), encoding="utf-8")
    else:
        sys.stdout.write(render())


if __name__ == "__main__":
    main()
