"""Liveness of the gateway's two dependencies."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from tgdl.contracts.api import ErrorBody
from tgdl.gateway.errors import ApiError, error_response
from tgdl.gateway.services import Services, services

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(request: Request,
                  svc: Annotated[Services, Depends(services)]) -> JSONResponse:
    checks = {"nats": "ok" if svc.nc.is_connected else "down: not connected"}
    try:
        async with asyncio.timeout(2.0):
            await svc.pool.fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except ApiError as exc:  # an outage, already named by the database layer
        checks["postgres"] = f"down: {exc.body.detail}"
    except Exception as exc:
        checks["postgres"] = f"down: {type(exc).__name__}"
    up = all(v == "ok" for v in checks.values())
    if not getattr(request.state, "tgdl_authenticated", True):
        # Open to anyone when tokens are on: up or down, nothing about the deployment.
        return JSONResponse({"status": "up" if up else "down"}, status_code=200 if up else 503)
    if up:
        return JSONResponse(checks)
    down = ", ".join(k for k, v in checks.items() if v != "ok")
    body = ErrorBody(error="unhealthy", detail=checks,
                     suggestion=f"Check that {down} is running and reachable.")
    return error_response(503, body, extra=checks)
