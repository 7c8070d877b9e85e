"""User and object names: what is allowed and how names compare (case-insensitively)."""

from __future__ import annotations

import re

from backend.errors import InvalidName

_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_OBJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def user_key(name: str) -> str:
    """The canonical form users are looked up by. Raises :class:`InvalidName`."""
    if not _USER_NAME.fullmatch(name):
        raise InvalidName(
            "user names are 1-128 characters: letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    return name.casefold()


def object_name(name: str, what: str) -> str:
    """Validate the name of a token, device or client."""
    if not _OBJECT_NAME.fullmatch(name):
        raise InvalidName(
            f"{what} names are 1-64 characters: letters, digits and . _ -, "
            "starting with a letter or digit"
        )
    return name
