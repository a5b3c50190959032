"""Rendering of the page shells: one base layout, one fragment per page, values HTML-escaped."""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from string import Template

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

NAV = (
    ("jobs", "/dashboard", "Jobs"),
    ("new", "/dashboard/new", "New job"),
    ("compare", "/dashboard/compare", "Compare"),
    ("workers", "/dashboard/workers", "Workers"),
)


@cache
def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


def _nav(page: str) -> str:
    current = ' aria-current="page"'
    links = [f'<li><a href="{href}"{current if key == page else ""}>{label}</a></li>' for key, href, label in NAV]
    return "\n".join(links)


def render_page(page: str, title: str, *, signed_in: bool = True, **values: str) -> str:
    """The page ``page`` (templates/<page>.html) inside base.html; every value is escaped here."""
    escaped = {key: html.escape(value, quote=True) for key, value in values.items()}
    body = _template(f"{page}.html").substitute(escaped)
    return _template("base.html").substitute(
        title=html.escape(title),
        page=page,
        body=body,
        nav=_nav(page) if signed_in else "",
        signout="" if not signed_in else _template("signout.html").template,
    )


def static_file(path: str) -> Path | None:
    """The file under static/ named by ``path``, or None if it is missing or lies outside static/."""
    candidate = (STATIC / path).resolve()
    if not candidate.is_file() or not candidate.is_relative_to(STATIC.resolve()):
        return None
    return candidate
