"""User-Name as a gateway sends it -> OpenMFA user name, per the client's :class:`NameRule`.

Gateways pass on whatever the person typed: ``CONTOSO\\alice`` (down-level logon name, what
RD Gateway and RRAS send), ``alice@contoso.com`` (UPN), or a bare ``alice``. OpenMFA knows
users by their bare name, so by default the domain is stripped; ``keep`` sends the name as
typed; ``map`` rewrites chosen realms with a template, e.g. partners' accounts
``bob@partner.example`` -> ``bob.partner``.
"""

from __future__ import annotations

import re

from radius_bridge.model import NameRule

#: C0 and C1 controls, DEL and the Unicode line breaks: none belongs in a RADIUS text
#: attribute, and each can forge or hide a line in a log, the audit trail or a table.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control(text: str) -> bool:
    """True if ``text`` holds a control character (see :data:`_CONTROL`)."""
    return _CONTROL.search(text) is not None


def printable(text: str, limit: int = 128) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``), cut
    to ``limit`` characters: safe to put in a log line or an audit row."""
    escaped = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return escaped[:limit]


def split_name(user_name: str) -> tuple[str, str]:
    """``(bare name, realm)``: ``DOMAIN\\user`` and ``user@realm`` both give the realm; a
    name with both (``CONTOSO\\alice@contoso.com``) gives the UPN suffix, the more specific.
    The realm is ``""`` when there is none."""
    realm = ""
    bare = user_name
    if "\\" in bare:
        realm, _, bare = bare.rpartition("\\")
    if "@" in bare:
        bare, _, realm = bare.rpartition("@")
    return bare, realm


def normalise(user_name: str, rule: NameRule) -> str:
    """The OpenMFA user name for ``user_name`` under ``rule``. May return ``""`` (e.g. for
    ``@contoso.com``); the flow rejects that as an invalid name."""
    if rule.format == "keep":
        return user_name
    bare, realm = split_name(user_name)
    if not bare:
        return ""
    if rule.format == "map" and realm:
        wanted = realm.casefold()
        for mapped_realm, template in rule.realm_map:
            if mapped_realm.casefold() == wanted:
                # str.replace, not str.format: a brace elsewhere in the template must not
                # turn a user name into a KeyError.
                return template.replace("{user}", bare).replace("{realm}", realm)
    return bare
