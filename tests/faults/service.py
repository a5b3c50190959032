"""The deployment a fault test breaks: settings shared by an API (`moecomp serve`) and workers, each a process."""

from __future__ import annotations

import subprocess
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import make_url

from moecomp.persistence.database import Database
from moecomp.persistence.keys import create_api_key
from moecomp.persistence.migrate import upgrade
from tests.faults.proxy import TcpProxy
from tests.worker.procs import free_port, kill_group, process, service_env, wait_ready

# Enough calibration that each of tiny-mixtral's 8 layers takes a noticeable time (~0.2 s on an idle machine),
# and an evaluation of about two seconds: every phase of a job lasts long enough to be caught from the outside.
RECIPE = {"stages": [{"method": "expert_drop", "keep": 4}], "calibration": {"samples": 32, "seq_len": 256}}
EVALUATION = {"perplexity": ["bundled:heldout"], "seq_len": 128, "max_tokens": 2048, "fidelity": False}


def as_env(settings: dict[str, str]) -> dict[str, str]:
    return {f"MOECOMP_{name.upper()}": value for name, value in settings.items()}


class Service:
    """Settings shared by every process of the deployment, an API that can be killed and started again,
    and workers; everything started is SIGKILLed (as a process group) at the end."""

    def __init__(self, tmp_path: Path, database_url: str, broker_url: str) -> None:
        self.tmp, self.port = tmp_path, free_port()
        self.database_url = database_url
        queue = f"moecomp-{uuid.uuid4().hex[:8]}"  # other test runs may share the Redis database
        # Stale after 6 s, not the 3 s of the end-to-end tests: on a loaded machine (a load of 10 on 2 cores) a
        # heartbeat was once late by more than 3 s, and the reaper rightly gave a live job a third attempt.
        settings = {"heartbeat_s": "0.5", "stale_after_s": "6", "queue": queue, "device": "cpu"}
        self.env = service_env(tmp_path / "data", database_url=database_url, broker_url=broker_url, **settings)
        upgrade(database_url)
        db = Database(database_url)
        with db.session() as s:
            self.key = create_api_key(s, "faults")
        db.engine.dispose()
        self.api: subprocess.Popen[bytes] | None = None
        self.procs = ExitStack()  # each process is SIGKILLed as a group when the stack closes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, **settings: str) -> None:
        """Change settings for the processes started from now on."""
        self.env.update(as_env(settings))

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, **kwargs)

    def start(self, *args: str, log: str, **settings: str) -> subprocess.Popen[bytes]:
        """A moecomp command in its own process group, with these settings on top of the shared ones."""
        env = {**self.env, **as_env(settings)}
        return self.procs.enter_context(process(env, *args, log=self.tmp / log))

    def start_api(self, **settings: str) -> None:
        self.api = self.start("serve", "--port", str(self.port), log="api.log", **settings)
        wait_ready(self.url, log=self.tmp / "api.log")

    def kill_api(self) -> None:
        assert self.api is not None
        kill_group(self.api)

    def worker(self, name: str, **settings: str) -> subprocess.Popen[bytes]:
        return self.start("worker", "--concurrency", "1", "--hostname", f"{name}@faults", log=f"{name}.log", **settings)

    def submit(
        self, client: httpx.Client, model: Path, recipe: dict | None = None, evaluation: dict | None = None
    ) -> str:
        body = {"model": {"kind": "local", "path": str(model)}, "recipe": recipe or RECIPE}
        body["evaluation"] = evaluation or EVALUATION
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.tmp.glob("*.log")))

    def close(self) -> None:
        self.procs.close()


def through(proxy: TcpProxy, database_url: str) -> str:
    """``database_url`` with its host and port replaced by the proxy's."""
    return make_url(database_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def upstream(database_url: str) -> tuple[str, int]:
    url = make_url(database_url)
    return url.host or "127.0.0.1", url.port or 5432


def events_of(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]


def runs_started(events: list[dict[str, Any]]) -> list[str]:
    """The worker's 'attempt N on ...' messages: one per run of the job."""
    return [e["data"]["text"] for e in events if str(e["data"].get("text", "")).startswith("attempt ")]
