"""Reading form fields (the CSRF check has already parsed and bounded the form)."""

from __future__ import annotations

from starlette.requests import Request

from backend.domain.text import has_control_character
from backend.errors import BadRequest
from webportal.csrf import read_form


async def field(request: Request, name: str, max_length: int = 1024) -> str:
    """A text field of the posted form ("" when absent); files, oversized values and control
    characters refused."""
    value = (await read_form(request)).get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"the field {name} must be text")
    if len(value) > max_length:
        raise BadRequest(f"the field {name} has at most {max_length} characters")
    if has_control_character(value):
        raise BadRequest(f"the field {name} holds control characters")
    return value
