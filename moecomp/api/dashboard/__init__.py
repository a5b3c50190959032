"""The dashboard: server-rendered page shells at /dashboard whose vanilla JS module reads the /v1 API.

Nothing is built at run time and nothing comes from a CDN: templates/ holds the HTML, static/ the JS,
CSS and nothing else. The API key lives in the HttpOnly cookie ``moecomp_key``; the JS never sees it.
"""

from moecomp.api.dashboard.router import router

__all__ = ["router"]
