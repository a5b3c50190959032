"""The real service for browser tests: `moecomp serve` in embedded mode (API + one worker, SQLite) on a
free port, Debian's Chromium driven by Playwright, and a folder for screenshots.

One service and one browser per test session: the jobs the tests submit run on the real worker, one
at a time, so later tests (compare) reuse the jobs earlier fixtures started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.worker.procs import MOECOMP, free_port, service_env, wait_job, wait_ready

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# Small enough for a shared 2-core CPU: a job (compress + evaluate + artifacts) takes well under a minute.
SMALL_CALIBRATION = {"samples": 8, "seq_len": 128}
SMALL_EVALUATION = {"seq_len": 128, "max_tokens": 2048, "fidelity_tokens": 1024}
TINY_SPEED = {"prefill_tokens": 64, "decode_tokens": 8, "decode_prompt_tokens": 16, "warmup": 0, "repeats": 1}


@dataclass
class Service:
    url: str
    key: str
    data_dir: Path
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def submit(self, stages: list[dict[str, Any]], calibration: dict[str, int] | None = None, **evaluation: Any) -> str:
        body = {
            "model": {"kind": "local", "path": str(ROOT / "moecomp" / "assets" / "models" / "tiny-mixtral")},
            "recipe": {"stages": stages, "calibration": calibration or SMALL_CALIBRATION},
            "evaluation": {**SMALL_EVALUATION, **evaluation},
        }
        with self.client() as client:
            response = client.post("/v1/jobs", json=body)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def wait_final(self, job_id: str, timeout: float = 480) -> dict[str, Any]:
        with self.client() as client:
            final = ("succeeded", "failed", "cancelled")
            return wait_job(client, job_id, lambda j: j["status"] in final, timeout=timeout)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets `serve` stop its worker; whatever is left after 30 s is killed as a group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    base = tmp_path_factory.mktemp("dashboard")
    data, log, port = base / "data", base / "serve.log", free_port()
    env = service_env(data, heartbeat_s="1")
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*MOECOMP, "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=base,
        )
    try:
        wait_ready(url, timeout=120, log=log)
        yield Service(url=url, key=(data / "local-key").read_text().strip(), data_dir=data, log=log)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Chromium is missing: run scripts/install_chromium.sh (Debian's package; never a download)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


SHOTS_TAKEN = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def screenshots(pytestconfig: pytest.Config) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pytestconfig.stash[SHOTS_TAKEN] = True
    return SCREENSHOTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where this run's screenshots are, even when output is captured (-q without -s)."""
    if terminalreporter.config.stash.get(SHOTS_TAKEN, False):
        shots = sorted(SCREENSHOTS.glob("*.png"))
        terminalreporter.write_line(f"dashboard screenshots in {SCREENSHOTS}: {', '.join(p.name for p in shots)}")


@pytest.fixture
def page(browser: Any, service: Service) -> Iterator[Any]:
    """A fresh browser context (no cookie yet); fails the test on any uncaught error in the page's JS."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True, base_url=service.url)
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda error: errors.append(str(error)))
    # HTTP refusals the tests provoke (401 on a wrong key, 422 on a bad recipe) are logged by the browser as
    # "Failed to load resource"; the JS's own errors are what must not happen.
    new_page.on(
        "console",
        lambda m: errors.append(m.text) if m.type == "error" and not m.text.startswith("Failed to load") else None,
    )
    yield new_page
    context.close()
    assert not errors, f"errors in the page: {errors}"


def sign_in(page: Any, key: str, path: str = "/dashboard") -> None:
    """Through the sign-in form, as a person does: open a page, get sent to sign in, come back."""
    page.goto(path)
    page.fill("#key", key)
    page.press("#key", "Enter")
    page.wait_for_url(f"**{path}")


@pytest.fixture(scope="session")
def api_jobs(service: Service) -> list[str]:
    """Two jobs on the bundled model submitted over the API at once (they run one after the other):
    expert drop (scores heatmap) and block drop with a speed measurement (the speedup chart).
    No zero-shot task: lm-eval took 1.5 min per model for 16 examples on this shared CPU."""
    return [
        service.submit([{"method": "expert_drop", "keep": 6}]),
        service.submit([{"method": "block_drop", "drop": 2}], speed=True, speed_settings=TINY_SPEED),
    ]
