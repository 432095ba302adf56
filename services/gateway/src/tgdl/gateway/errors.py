"""Every 4xx/5xx answer is an `ErrorBody`: a code, a readable detail, a suggestion."""

from __future__ import annotations

import logging
from typing import Any

import nats.errors
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tgdl.contracts.api import ErrorBody
from tgdl.contracts.errors import SUGGESTIONS, ErrorCode

log = logging.getLogger("tgdl.gateway")


class ApiError(Exception):
    """An answer other than success; `extra` adds fields next to the ErrorBody's."""

    def __init__(self, status: int, error: str, detail: str | dict | list,
                 suggestion: str | None = None, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.body = ErrorBody(error=error, detail=detail, suggestion=suggestion)
        self.extra = extra or {}
        self.headers = headers


def error_response(status: int, body: ErrorBody, extra: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    content = {**(extra or {}), **body.model_dump()}
    return JSONResponse(content, status_code=status, headers=headers)


# --- validation errors in words ----------------------------------------------------------

_BOUNDS = {"less_than_equal": ("le", "<="), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "greater_than": ("gt", ">")}
_PLAIN = {
    "missing": "is required",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "extra_forbidden": "is not an accepted field",
    "string_type": "must be a string",
}


def _problem(err: dict[str, Any]) -> str:
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind == "json_invalid":
        return NOT_JSON
    loc = [str(p) for p in err.get("loc", ())]
    where = ".".join(loc[1:]) or (loc[0] if loc else "request")
    if where == "body" and kind in ("missing", "model_attributes_type", "dict_type"):
        return "body: must be a JSON object sent with Content-Type: application/json"
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        what = f"must be {op} {ctx.get(key)}"
    elif kind == "too_short":
        what = f"must hold at least {ctx.get('min_length')} item(s)"
    elif kind == "too_long":
        what = f"must hold at most {ctx.get('max_length')} item(s)"
    elif kind == "string_pattern_mismatch":
        what = f"must match {ctx.get('pattern')}"
    elif kind == "enum":  # pydantic says "Input should be ...": name what was sent
        what = f"{err.get('input')!r} is not one of {ctx.get('expected')}"
    elif kind == "value_error":
        what = str(err.get("msg", "")).removeprefix("Value error, ")
    else:
        what = _PLAIN.get(kind) or str(err.get("msg", "is invalid"))
    return f"{where}: {what}"


# --- outages: 503 naming what is down, never a 500 ---------------------------------------

RETRY_AFTER = "2"  # seconds; both servers come back within that under `tgdl run`


def database_unavailable(detail: str) -> ApiError:
    return ApiError(503, "database_unavailable", f"PostgreSQL is unreachable: {detail}",
                    "Retry in a moment; check that PostgreSQL is running and reachable "
                    "(GET /healthz shows it).",
                    extra={"unavailable": "postgres"}, headers={"Retry-After": RETRY_AFTER})


def nats_unavailable(detail: str = "the gateway is not connected to NATS right now") -> ApiError:
    return ApiError(503, "nats_unavailable", detail,
                    "Retry in a moment; check that nats-server is running and reachable "
                    "(GET /healthz shows it).",
                    extra={"unavailable": "nats"}, headers={"Retry-After": RETRY_AFTER})


def read_model_behind(what: str, stale: str) -> ApiError:
    """`what` is missing from a read model that cannot be current (`stale` says why):
    not a 404, since it may exist already."""
    return ApiError(503, "read_model_behind", f"{what}, which cannot be current: {stale}",
                    "Retry in a moment: it may exist already. GET /healthz shows whether "
                    "NATS and PostgreSQL are up; the projector may be stopped or catching "
                    "up.", extra={"unavailable": "read_model"},
                    headers={"Retry-After": RETRY_AFTER})


# A NATS client that lost its server raises these; none of them is the request's fault.
NATS_OUTAGES: tuple[type[Exception], ...] = (
    nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError, nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError, nats.errors.NoServersError,
    nats.errors.FlushTimeoutError, nats.errors.UnexpectedEOF,
)


def invalid(detail: str) -> ApiError:
    return ApiError(422, "invalid_request", detail,
                    "Fix the field named in the detail and send the request again.")


NOT_JSON = "body is not valid JSON"


def not_json() -> ApiError:
    return ApiError(422, "invalid_request", NOT_JSON,
                    "Send one JSON object with Content-Type: application/json, e.g. "
                    '{"message_ids": [1, 2, 3]} to start a batch (GET /docs shows each body).')


# --- handlers ----------------------------------------------------------------------------

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 406: "not_acceptable", 413: "too_large",
          415: "unsupported_media_type", 429: "too_many_requests"}


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.body, exc.extra, exc.headers)


async def _on_nats_outage(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: NATS unavailable (%s)", request.method, request.url.path,
                type(exc).__name__)
    error = nats_unavailable()
    return error_response(error.status, error.body, error.extra, error.headers)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = list(dict.fromkeys(_problem(e) for e in exc.errors()))
    if problems == [NOT_JSON]:  # no field to name: say what a body looks like
        return error_response(422, not_json().body)
    return error_response(422, invalid("; ".join(problems)).body)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _CODES.get(exc.status_code, "server_error" if exc.status_code >= 500 else "error")
    allowed = (getattr(exc, "headers", None) or {}).get("Allow")
    suggestion = (f"This URL answers {allowed}; the API is described at /docs."
                  if exc.status_code == 405 and allowed else
                  "Check the URL; the API is described at /docs."
                  if exc.status_code in (404, 405) else
                  "Send the body as UTF-8 JSON with Content-Type: application/json."
                  if exc.status_code == 400 else None)
    body = ErrorBody(error=code, detail=str(exc.detail), suggestion=suggestion)
    return error_response(exc.status_code, body, headers=getattr(exc, "headers", None))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    body = ErrorBody(error=ErrorCode.internal.value,
                     detail="the gateway failed to handle this request",
                     suggestion=SUGGESTIONS[ErrorCode.internal])
    return error_response(500, body)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(HTTPException, _on_http)
    for outage in NATS_OUTAGES:
        app.add_exception_handler(outage, _on_nats_outage)
    app.add_exception_handler(Exception, _on_unexpected)
