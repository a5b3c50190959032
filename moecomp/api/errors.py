"""Errors the services raise, and the handlers that turn them into the contract's JSON shapes.

Validation -> 422 ``{"detail": [{"loc", "msg", "type"}]}`` (FastAPI's shape, also for checks pydantic
cannot make); any other 4xx -> ``{"detail": "human message"}``; nothing unexpected leaks as a 500 body.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from moecomp.persistence.database import is_transient

log = logging.getLogger(__name__)
DB_RETRY_AFTER_S = 5


class ApiError(Exception):
    """A refusal with an HTTP status and a message a person can act on."""

    status_code = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class NotFound(ApiError):
    status_code = 404


class Unauthorized(ApiError):
    status_code = 401

    def __init__(self, detail: str = "missing or invalid API key") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    """A valid key of the wrong kind: a worker credential on a team route, a team key on a worker route."""

    status_code = 403


class Conflict(ApiError):
    status_code = 409


class Gone(ApiError):
    status_code = 410


class PayloadTooLarge(ApiError):
    status_code = 413


class UnsupportedMediaType(ApiError):
    status_code = 415


class RangeNotSatisfiable(ApiError):
    status_code = 416


class TooManyRequests(ApiError):
    """A refusal the caller can retry later; ``Retry-After`` says after how many seconds."""

    status_code = 429

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class Invalid(Exception):
    """Input that pydantic accepted but a service refuses; rendered like a pydantic error at ``loc``."""

    def __init__(self, loc: Sequence[str | int], msg: str, input: Any = None, type: str = "value_error") -> None:
        super().__init__(msg)
        self.errors = [{"type": type, "loc": list(loc), "msg": msg, "input": input}]


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as strings: JSON has no such numbers, yet Python's parser accepts them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Invalid)
    return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors))}, status_code=422)


async def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422, able to echo an input of NaN or Infinity (its handler fails on them: a 500)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """The database down or restarting is the service being unavailable for a moment, not a bug: 503."""
    assert isinstance(exc, DBAPIError)
    if not is_transient(exc):
        return await _unexpected(request, exc)
    log.warning("database unreachable on %s %s: %s", request.method, request.url.path, exc.orig)
    detail = "the database is unreachable; retry in a few seconds"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(DB_RETRY_AFTER_S)})


async def _disk_full(request: Request, exc: Exception) -> JSONResponse:
    """A full disk (an upload, say) is the server's storage running out, not a bug: 507, and the service stays up."""
    assert isinstance(exc, OSError)
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return await _unexpected(request, exc)
    log.error("disk full on %s %s: %s", request.method, request.url.path, exc)
    detail = "the server's disk is full; nothing was kept from this request. Retry once space has been freed."
    return JSONResponse({"detail": detail}, status_code=507)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(OSError, _disk_full)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Invalid, _invalid)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(Exception, _unexpected)


def invalid_request(loc: Sequence[str | int], msg: str) -> RequestValidationError:
    """For routes that must refuse before a service runs (same shape as Invalid)."""
    return RequestValidationError([{"type": "value_error", "loc": tuple(loc), "msg": msg, "input": None}])
