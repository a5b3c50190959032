"""JSON responses for the hot, polled routes, and the refusals routes declare in the OpenAPI document.

A sync handler's return value is validated again by FastAPI on the thread pool: one more hop per
request, and each hop waits for a thread (and, on a busy machine, for the scheduler). The schemas
were built by the handler already, so the polled routes return them serialized; the routes keep
``response_model`` for the OpenAPI document.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from moecomp.api.conditional import etag_matches
from moecomp.api.errors import RangeNotSatisfiable
from moecomp.api.schemas import DetailPublic
from moecomp.worker.tar_stream import Body

_REFUSALS = {
    400: "The body is not readable as JSON.",
    401: "Missing, unknown or revoked API key.",
    403: "A valid key of another kind: a worker credential or admin key on a team route, a team key elsewhere.",
    404: "Not found for this team (another team's ids are not found either).",
    409: "The job's state does not allow it: cancel an ended job, delete a queued or running one; a worker whose "
    "lease on the job is lost.",
    410: "The artifact expired (settings.retention_days after its job ended) and its file was removed.",
    413: "The body (or the unpacked upload) is larger than the server's limit.",
    415: "The body is not a tar archive.",
    416: "The byte range lies outside the file.",
    429: "Too many requests; retry after the Retry-After header's seconds.",
    507: "The server's disk is full; nothing was kept from this request.",
}
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
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


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte (inclusive) of a single Range header, None for none; 416 when it is not one
    satisfiable byte range (RFC 9110 14.1.2: a suffix longer than the file, or an end past it, is cut to it)."""
    if header is None:
        return None
    match = RANGE_RE.match(header.strip())
    unsatisfiable = RangeNotSatisfiable(
        "Range must be one satisfiable byte range, e.g. bytes=0-1023", headers={"Content-Range": f"bytes */{size}"}
    )
    if match is None or match.groups() == ("", ""):
        raise unsatisfiable
    start, end = match.groups()
    if start == "":  # suffix range: the last N bytes
        if int(end) == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - int(end)), size - 1
    if int(start) >= size or (end != "" and int(end) < int(start)):
        raise unsatisfiable
    return int(start), size - 1 if end == "" else min(int(end), size - 1)


def content_response(
    request: Request,
    body: Body,
    sha256: str,
    *,
    range_header: str | None,
    if_none_match: str | None,
    filename: str,
    media_type: str,
) -> Response:
    """``body``, named by its sha256 (the ETag): 304 when the client holds it, else the download (a Range
    honoured, 206); HEAD answers the headers alone."""
    etag = f'"{sha256}"'
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    return download_response(
        body,
        parse_range(range_header, body.size),
        head=request.method == "HEAD",
        filename=filename,
        media_type=media_type,
        headers={"ETag": etag, "X-Checksum-Sha256": sha256},
    )


def download_response(
    body: Body, span: tuple[int, int] | None, *, head: bool, filename: str, media_type: str, headers: dict[str, str]
) -> Response:
    """``body`` (or the inclusive ``span`` of it, 206) streamed in chunks, as an attachment; HEAD gets no body."""
    start, end = span if span is not None else (0, body.size - 1)
    headers = headers | {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)}
    headers["Content-Disposition"] = _attachment(filename)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{body.size}"
    status = 200 if span is None else 206
    if head:
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(body.chunks(start, end), status_code=status, headers=headers, media_type=media_type)


def _attachment(filename: str) -> str:
    quoted = quote(filename)
    return f'attachment; filename="{filename}"' if quoted == filename else f"attachment; filename*=utf-8''{quoted}"
