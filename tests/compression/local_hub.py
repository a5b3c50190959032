"""A hub on 127.0.0.1 serving one model folder as one repository: the three routes huggingface_hub 1.x's
snapshot_download asks (revision info, file tree, resolve with HEAD and GET), enough to download for real
without the internet. ``requests`` records what was asked."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class LocalHub:
    repo: str
    files: dict[str, bytes]
    requests: list[tuple[str, str]] = field(default_factory=list)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def _answer(self, body: bytes | None, headers: dict[str, str]) -> None:
                hub.requests.append((self.command, self.path))
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            def _route(self) -> None:
                path = self.path.split("?")[0]
                if path.startswith(f"/api/models/{hub.repo}/revision/"):
                    info = {"id": hub.repo, "sha": COMMIT, "siblings": [{"rfilename": n} for n in hub.files]}
                    return self._answer(json.dumps(info).encode(), {"Content-Type": "application/json"})
                if path.startswith(f"/api/models/{hub.repo}/tree/"):
                    tree = [{"type": "file", "path": n, "size": len(b), "oid": "0" * 40} for n, b in hub.files.items()]
                    return self._answer(json.dumps(tree).encode(), {"Content-Type": "application/json"})
                prefix = f"/{hub.repo}/resolve/{COMMIT}/"
                data = hub.files.get(path[len(prefix) :]) if path.startswith(prefix) else None
                etag = f'"{hashlib.sha256(data).hexdigest()}"' if data is not None else ""
                return self._answer(data, {"X-Repo-Commit": COMMIT, "ETag": etag})

            do_GET = do_HEAD = _route

        return Handler

    def file_gets(self) -> list[str]:
        """Files whose contents were sent."""
        prefix = f"/{self.repo}/resolve/{COMMIT}/"
        return [path[len(prefix) :] for method, path in self.requests if method == "GET" and path.startswith(prefix)]


@contextmanager
def local_hub(monkeypatch: pytest.MonkeyPatch, repo: str, folder: Path, extra: dict[str, bytes]) -> Iterator[LocalHub]:
    """``folder``'s files (plus ``extra``) as ``repo``, with huggingface_hub pointed at it."""
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} | extra
    hub = LocalHub(repo, files)
    server = ThreadingHTTPServer(("127.0.0.1", 0), hub.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
