"""Conditional GETs for the polled routes: a strong ETag over the exact JSON body; If-None-Match -> 304.

The tag is a hash of the bytes the response would carry, so it changes whenever anything in the response
does (status, progress, stage, error, timestamps, the page's items and cursor) and never otherwise: no
column has to remember to bump a version. A 304 still costs the route its queries, but no body goes out
and the client parses nothing; browsers revalidate with If-None-Match on their own (Cache-Control below).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import Header, Response
from pydantic import BaseModel

# private: answers are per team, never for a shared cache; no-cache: a browser asks again every time.
CACHE_CONTROL = "private, no-cache"
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified: If-None-Match names the current ETag; no body."}
}

IfNoneMatch = Annotated[
    str | None,
    Header(max_length=4096, description="ETags from earlier answers, comma-separated (or `*`): 304 if one is current."),
]


def etag_of(body: bytes) -> str:
    return f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match's weak comparison (RFC 9110 13.1.2): W/ is ignored, and ``*`` matches any current body."""
    if not if_none_match:
        return False
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in (t.strip() for t in if_none_match.split(",")))


def conditional_json(model: BaseModel, if_none_match: str | None) -> Response:
    """``model`` as JSON with its ETag, or an empty 304 when the client already holds this very body."""
    body = model.__pydantic_serializer__.to_json(model)
    headers = {"ETag": etag_of(body), "Cache-Control": CACHE_CONTROL}
    if etag_matches(if_none_match, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
