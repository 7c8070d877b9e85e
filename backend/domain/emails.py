"""E-mail addresses: the one rule for every address the server accepts (users, settings).

A plain ASCII ``local@domain``, matched whole (``re.fullmatch``): a dot-atom local part of at
most 64 characters (RFC 5321), a domain of host-name labels, at most 254 characters in all.
No display names, quoted local parts, address literals, comments or lists: what an
administrator types for a person or a mailbox, and nothing that could end a header line or
add a recipient (``a@b\\r\\nBcc: x@y``). Non-ASCII addresses need SMTPUTF8 end to end and can
hide look-alike characters, so they are refused too.
"""

from __future__ import annotations

import re

MAX_LENGTH = 254  # the longest forward path SMTP carries (RFC 5321 4.5.3.1.3), less "<>"
MAX_LOCAL = 64

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def email_problem(address: str) -> str | None:
    """Why ``address`` is not an acceptable e-mail address, or ``None`` when it is."""
    if not address:
        return "it is empty"
    if len(address) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} characters"
    if not address.isascii() or not address.isprintable():
        return "it holds a control character, a space or a non-ASCII character"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "it is not of the form name@domain"
    if len(local) > MAX_LOCAL:
        return f"the part before @ is longer than {MAX_LOCAL} characters"
    if not _LOCAL.fullmatch(local):
        return "the part before @ holds a character an address cannot have"
    if not _DOMAIN.fullmatch(domain):
        return "the part after @ is not a domain name"
    return None


def is_email(address: str) -> bool:
    """True when ``address`` passes :func:`email_problem`."""
    return email_problem(address) is None
