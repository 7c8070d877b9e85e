"""Helpers every endpoint uses: bounded body reading, JSON validation, the services handle."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from backend.domain.text import has_control_character
from backend.errors import BadRequest, PayloadTooLarge

if TYPE_CHECKING:
    from backend.services import Services

ModelT = TypeVar("ModelT", bound=BaseModel)


def services_of(request: Request) -> Services:
    """The container the lifespan opened."""
    services: Services = request.app.state.services
    return services


async def read_body(request: Request) -> bytes:
    """The raw body, refusing more than ``max_body_bytes`` without reading it all."""
    limit = services_of(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body may have at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body may have at most {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request.state.body = body
    return body


def parse_json(body: bytes, model: type[ModelT]) -> ModelT:
    """Validate a JSON body; the error names each bad field.

    Text with control characters (:func:`~backend.domain.text.has_control_character`) is
    refused here, once for every JSON endpoint.
    """
    if not body:
        raise BadRequest("a JSON body is required")
    return _validated(model, body, json=True)


def parse_data(data: object, model: type[ModelT]) -> ModelT:
    """:func:`parse_json` for JSON already decoded (a call in a wait-channel frame)."""
    return _validated(model, data, json=False)


def _validated(model: type[ModelT], data: object, json: bool) -> ModelT:
    try:
        parsed = (
            model.model_validate_json(data)  # type: ignore[arg-type]
            if json
            else model.model_validate(data)
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise BadRequest(f"invalid JSON body: {problems}") from exc
    bad = _field_with_control_character(parsed.model_dump(), "")
    if bad is not None:
        raise BadRequest(f"invalid JSON body: {bad or 'body'}: control characters are not allowed")
    return parsed


def _field_with_control_character(value: object, path: str) -> str | None:
    """The dotted path of the first text holding a control character, or ``None``."""
    if isinstance(value, str):
        return path if has_control_character(value) else None
    items: list[tuple[str, object]] = []
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        items = [(str(i), v) for i, v in enumerate(value)]
    for key, item in items:
        found = _field_with_control_character(item, f"{path}.{key}" if path else key)
        if found is not None:
            return found
    return None


def json_response(model: BaseModel, status_code: int = 200) -> JSONResponse:
    """Serialise a response model."""
    return JSONResponse(model.model_dump(mode="json"), status_code=status_code)


def target_of(request: Request) -> str:
    """Path and query exactly as sent: what the app signed."""
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    target = raw_path.decode("latin-1")
    return target + ("?" + query.decode("latin-1") if query else "")
