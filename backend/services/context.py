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


@dataclass(frozen=True, slots=True)
class SignInContext:
    """Where an authentication comes from, as the gateway reports it. Never holds a secret."""

    client_name: str = ""
    client_ip: str = ""
    nas_identifier: str = ""
    display: str = ""
