"""Rules for free text that comes from outside (names, display texts, form fields)."""

from __future__ import annotations

#: Line breaks and tabs are fine in free text (a multi-line form field, a wrapped display).
_ALLOWED_CONTROLS = frozenset("\t\n\r")


def has_control_character(value: str) -> bool:
    """True when ``value`` holds a C0 control character (but tab and line breaks) or DEL.

    PostgreSQL cannot store NUL at all, and none of them belongs in a name, a display text
    or an audit row, where they could fake line structure or terminal escapes.
    """
    return any((ch < " " or ch == "\x7f") and ch not in _ALLOWED_CONTROLS for ch in value)
