"""The app on a real uvicorn in a thread of the test process, for tests that need a real HTTP server (a streamed
body, a browser, the CLI) and still want to reach into the server's own process (the stage table, the database)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from moecomp.api.app import create_app
from moecomp.settings import Settings
from tests.worker.procs import free_port

START_TIMEOUT_S = 30


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """Its base URL while it runs; stopped on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the in-process app did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
