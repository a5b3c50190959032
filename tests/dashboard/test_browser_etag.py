"""The dashboard's once-a-second polls revalidate: the browser itself sends If-None-Match with the listing's ETag.

No dashboard code asks for it: the API's ETag and ``Cache-Control: private, no-cache`` make a browser keep
the last answer and ask with its tag, so an unchanged listing comes back as a body-less 304.
"""

from __future__ import annotations

import time
from typing import Any

from tests.dashboard.conftest import Service, sign_in


def test_the_jobs_page_polls_with_the_etag_of_the_last_listing(page: Any, service: Service) -> None:
    answered: list[tuple[str, str | None]] = []  # (ETag answered, If-None-Match asked with), in order
    page.on(
        "response",
        lambda r: (
            "/v1/jobs?" in r.url
            and answered.append((r.all_headers().get("etag", ""), r.request.all_headers().get("if-none-match")))
        ),
    )
    service.submit([])
    sign_in(page, service.key)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(asked is not None for _etag, asked in answered) < 2:
        page.wait_for_timeout(200)
    revalidations = [(i, asked) for i, (_etag, asked) in enumerate(answered) if asked is not None]
    assert len(revalidations) >= 2, answered
    for i, asked in revalidations:  # each poll names a tag the server gave before it
        assert asked in {etag for etag, _asked in answered[:i]}, answered
