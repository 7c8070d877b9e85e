"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.api.http import json_response, services_of
from backend.api.schemas import Health
from backend.errors import OpenMFAError


async def healthz(request: Request) -> Response:
    """The process is up and serving."""
    return json_response(Health(status="ok"))


async def readyz(request: Request) -> Response:
    """The database answers; 503 otherwise."""
    try:
        async with services_of(request).db.read() as conn:
            await conn.execute(text("SELECT 1"))
    except (OpenMFAError, OSError) as exc:
        return json_response(Health(status="unavailable", detail=str(exc)), status_code=503)
    return json_response(Health(status="ok"))


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
