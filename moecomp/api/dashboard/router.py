"""Routes of the dashboard: sign-in and sign-out, page shells, and the static JS/CSS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import APIKeyCookie

from moecomp.api.dashboard.pages import render_page, static_file
from moecomp.api.deps import COOKIE_NAME, SessionDep, SettingsDep
from moecomp.api.errors import NotFound
from moecomp.persistence.keys import team_for_key
from moecomp.settings import Settings

router = APIRouter(prefix="/dashboard", include_in_schema=False)

COOKIE_MAX_AGE_S = 12 * 3600
# Everything the pages load comes from this origin; no inline script, no third party.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_cookie = APIKeyCookie(name=COOKIE_NAME, auto_error=False)


def signed_in(session: SessionDep, cookie: Annotated[str | None, Depends(_cookie)]) -> bool:
    return bool(cookie) and team_for_key(session, cookie) is not None


SignedInDep = Annotated[bool, Depends(signed_in)]


def _page(content: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(content, status_code=status_code, headers=SECURITY_HEADERS)


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/dashboard/login?next={target}", status_code=303)


def _safe_next(target: str | None) -> str:
    """Only a path inside the dashboard: never an absolute URL another site could use as a redirect."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboard") or "\\" in (target or ""):
        return "/dashboard"
    return parts.path + (f"?{parts.query}" if parts.query else "")


def model_suggestions(settings: Settings) -> list[str]:
    """Model folders (with config.json) directly under the allowed roots, offered in the new-job form."""
    found: list[str] = []
    for root in settings.allowed_model_roots:
        root = Path(root).resolve()
        if (root / "config.json").is_file():
            found.append(str(root))
        if root.is_dir():
            found.extend(str(p.parent) for p in sorted(root.glob("*/config.json")))
    return found


@router.get("/login", response_class=HTMLResponse)
def login_page(next: str = "/dashboard") -> HTMLResponse:
    html = render_page("login", "Sign in", signed_in=False, next=_safe_next(next), error="", error_hidden="hidden")
    return _page(html)


@router.post("/login")
def login(
    request: Request, session: SessionDep, key: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/dashboard"
) -> Response:
    """Check the key like the API does, then hand it to the browser as an HttpOnly, SameSite=Strict cookie."""
    key = key.strip()
    if team_for_key(session, key) is None:
        html = render_page(
            "login",
            "Sign in",
            signed_in=False,
            next=_safe_next(next),
            error="That API key is not valid (or was revoked).",
            error_hidden="",
        )
        return _page(html, status_code=401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        key,
        max_age=COOKIE_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response


@router.get("", response_class=HTMLResponse)
def jobs_page(request: Request, ok: SignedInDep) -> Response:
    return _page(render_page("jobs", "Jobs")) if ok else _to_login(request)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, ok: SignedInDep) -> Response:
    # The job itself is read by the page's JS with the team's cookie: another team's id shows "no such job".
    return _page(render_page("job", f"Job {job_id[:8]}", job_id=job_id)) if ok else _to_login(request)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, ok: SignedInDep) -> Response:
    return _page(render_page("compare", "Compare")) if ok else _to_login(request)


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, ok: SignedInDep) -> Response:
    return _page(render_page("workers", "Workers")) if ok else _to_login(request)


@router.get("/new", response_class=HTMLResponse)
def new_job_page(request: Request, ok: SignedInDep, settings: SettingsDep) -> Response:
    if not ok:
        return _to_login(request)
    models = model_suggestions(settings)
    return _page(render_page("new", "New job", models=json.dumps(models), default_model=models[0] if models else ""))


@router.get("/static/{path:path}")
def static(path: str) -> FileResponse:
    found = static_file(path)
    if found is None:
        raise NotFound("no such file")
    media = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}.get(found.suffix)
    return FileResponse(
        found, media_type=media, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    )
