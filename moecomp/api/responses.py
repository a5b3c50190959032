"""JSON responses for the hot, polled routes.

A sync handler's return value is validated again by FastAPI on the thread pool: one more hop per
request, and each hop waits for a thread (and, on a busy machine, for the scheduler). The schemas
were built by the handler already, so the polled routes return them serialized; the routes keep
``response_model`` for the OpenAPI document.
"""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
