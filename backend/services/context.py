"""Who is acting and from where: passed into every service call for the audit trail."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class Actor:
    """The caller: ``cli:<login>``, ``device:<id>``, ``gateway:<token name>``, ``admin:<name>``."""

    name: str
    source: str = ""
    request_id: str = ""
    # The web session acting (its stored digest), for a page of the portal or the console:
    # a change that ends the user's sessions keeps this one (see backend/domain/notices.py).
    session: str = ""


@dataclass(frozen=True, slots=True)
class SignInContext:
    """Where an authentication comes from, as the gateway reports it. Never holds a secret."""

    client_name: str = ""
    client_ip: str = ""
    nas_identifier: str = ""
    display: str = ""
