"""The jobs page warns when jobs are queued and no worker is alive: `serve --no-worker` (embedded), one job."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moecomp import __version__
from tests.dashboard.conftest import MOECOMP, Service, _stop, sign_in
from tests.worker.procs import free_port, service_env, wait_ready


@pytest.fixture
def workerless(tmp_path: Path) -> Iterator[Service]:
    data, log, port = tmp_path / "data", tmp_path / "serve.log", free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        cmd = [*MOECOMP, "serve", "--no-worker", "--port", str(port)]
        proc = subprocess.Popen(
            cmd, env=service_env(data), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_ready(url, timeout=60, log=log)  # ready without a worker: it started none
        yield Service(url=url, key=(data / "local-key").read_text().strip(), data_dir=data, log=log)
    finally:
        _stop(proc)


def test_the_jobs_page_warns_when_jobs_wait_and_no_worker_lives(browser: Any, workerless: Service) -> None:
    context = browser.new_context(base_url=workerless.url)
    page = context.new_page()
    try:
        sign_in(page, workerless.key)
        page.wait_for_selector("#jobs-summary:has-text('No jobs match.')")
        assert page.is_hidden("#no-worker")  # nothing waits: no warning
        workerless.submit([])
        banner = page.wait_for_selector("#no-worker", state="visible", timeout=15_000)
        assert "no worker is alive" in banner.inner_text()
    finally:
        context.close()


def test_the_workers_page_lists_the_worker_with_its_host_gpus_version_and_current_job(
    page: Any, service: Service
) -> None:
    sign_in(page, service.key, "/dashboard/workers")
    with service.client() as client:  # the registry as the page reads it: the embedded worker, on this host
        [worker] = [w for w in client.get("/v1/workers").json()["items"] if w["alive"]]
    row = page.wait_for_selector(f"tr[data-worker='{worker['name']}']")
    text = row.inner_text()
    assert worker["host"] == socket.gethostname() and worker["host"] in text
    assert worker["version"] == __version__ and __version__ in text
    assert worker["gpus"] == [] and "CPU only" in text  # this machine has no GPU
    assert "alive" in text
    # A running job of this team is named by its id, linked to its page, and no longer once it has ended.
    # Calibration long enough for the page (which polls every 3 s) to see the job running: on the small default the
    # whole job took 1.4 s on an idle machine and the page never showed it (a 240 s timeout).
    job_id = service.submit([{"method": "expert_drop", "keep": 6}], calibration={"samples": 512, "seq_len": 256})
    job_link = f"tr[data-worker='{worker['name']}'] a[href='/dashboard/jobs/{job_id}']"
    assert page.wait_for_selector(job_link, timeout=240_000).inner_text() == job_id[:8]
    service.wait_final(job_id)
    page.wait_for_selector(job_link, state="detached", timeout=15_000)
    page.goto(f"/dashboard/jobs/{job_id}")  # the job says which host ran it
    host = page.wait_for_selector("dt:text-is('Host') + dd")
    assert host.inner_text() == worker["host"]
