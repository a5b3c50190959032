"""JSON responses for the hot, polled routes, and the refusals routes declare in the OpenAPI document.

A sync handler's return value is validated again by FastAPI on the thread pool: one more hop per
request, and each hop waits for a thread (and, on a busy machine, for the scheduler). The schemas
were built by the handler already, so the polled routes return them serialized; the routes keep
``response_model`` for the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel

from moecomp.api.schemas import DetailPublic

_REFUSALS = {
    400: "The body is not readable as JSON.",
    401: "Missing, unknown or revoked API key.",
    404: "Not found for this team (another team's ids are not found either).",
    409: "The job's state does not allow it: cancel an ended job, delete a queued or running one.",
    410: "The artifact expired (settings.retention_days after its job ended) and its file was removed.",
    413: "The body (or the unpacked upload) is larger than the server's limit.",
    415: "The body is not a tar archive.",
    416: "The byte range lies outside the file.",
    429: "Too many requests; retry after the Retry-After header's seconds.",
    507: "The server's disk is full; nothing was kept from this request.",
}
# FastAPI declares 422 itself only for routes with declared parameters.
VALIDATION = {
    "description": "Validation Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the ``{"detail": ...}`` refusals (errors.ApiError) a route may answer."""
    return {code: {"model": DetailPublic, "description": _REFUSALS[code]} for code in codes}
