"""A cap on request bodies, so that no request makes the API hold an arbitrarily large body in memory.

FastAPI reads a JSON body whole before validating it, so the schemas' length bounds only apply once it is in
memory. This ASGI middleware refuses a declared Content-Length over the cap at once, and stops a chunked body
as soon as it passes the cap (413, ``{"detail": ...}``). Model uploads and workers' artifact
chunks stream to disk under their own limits.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1024**2  # a job request is a few KiB; the largest the schemas allow is well under this


class BodyLimit:
    def __init__(
        self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, exempt: tuple[str, ...] = (), exempt_under: str = "\0"
    ) -> None:
        self.app, self.max_bytes, self.exempt, self.exempt_under = app, max_bytes, exempt, exempt_under
        self.message = f"request body larger than {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.exempt or path.startswith(self.exempt_under):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised inside the handler's body read: FastAPI passes an HTTPException through as its response.
                raise HTTPException(status_code=413, detail=self.message)
            return message

        await self.app(scope, limited, send)
