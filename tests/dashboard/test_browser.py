"""The dashboard in a real browser (Debian's Chromium through Playwright) against the real service:
`moecomp serve` in embedded mode with its worker, running real jobs on the bundled tiny Mixtral.

Tests run in file order and share the service; jobs submitted by a fixture are reused by later tests.
Screenshots go to test-artifacts/screenshots/ (git-ignored; the folder is printed).
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from moecomp.assets import DEMO_MODEL as TINY_MIXTRAL
from tests.dashboard.conftest import SMALL_CALIBRATION, Service, sign_in

pytestmark = pytest.mark.slow

RELOAD_MARK = "window.__notReloaded = true"


def job_count(service: Service) -> int:
    with service.client() as client:
        return len(client.get("/v1/jobs", params={"limit": 100}).json()["items"])


def test_sign_in_refuses_a_wrong_key_then_sets_an_httponly_strict_cookie(page: Any, service: Service) -> None:
    page.goto("/dashboard/compare")
    assert "/dashboard/login" in page.url
    page.fill("#key", "mc_00000000_" + "x" * 40)
    page.click("button[type=submit]")
    assert page.locator("#login-error").inner_text().endswith("That API key is not valid (or was revoked).")
    assert page.context.cookies() == []
    page.focus("#key")
    page.keyboard.type(service.key)
    page.keyboard.press("Tab")  # the focus order reaches the submit button next
    assert page.evaluate("document.activeElement.type") == "submit"
    page.keyboard.press("Enter")
    page.wait_for_url("**/dashboard/compare")  # back where the person was going
    (cookie,) = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("moecomp_key", True, "Strict")
    assert page.evaluate("document.cookie") == ""  # out of reach of scripts


def test_a_bad_recipe_shows_the_servers_error_beside_the_field(page: Any, service: Service, screenshots: Path) -> None:
    sign_in(page, service.key, "/dashboard/new")
    page.wait_for_selector("#new-job[data-ready]")
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('#new-job input, #new-job select')]
             .filter((el) => el.type !== 'hidden' && el.labels.length === 0 && !el.getAttribute('aria-label'))
             .map((el) => el.id)"""
    )
    assert unlabelled == []
    before = job_count(service)
    page.select_option("#add-method", "expert_drop")
    page.click("#add-stage")
    page.fill("#f-recipe-stages-0-keep", "0")
    page.click("#submit-job")

    keep_error = page.locator("#f-recipe-stages-0-keep-error")
    keep_error.wait_for()
    assert "greater than or equal to 1" in keep_error.inner_text()
    assert page.get_attribute("#f-recipe-stages-0-keep", "aria-invalid") == "true"
    assert "f-recipe-stages-0-keep-error" in page.get_attribute("#f-recipe-stages-0-keep", "aria-describedby")
    summary = page.locator("#form-errors")
    assert summary.is_visible() and page.evaluate("document.activeElement.id") == "form-errors"
    assert "Stage 1: expert drop › Keep: Input should be greater than or equal to 1" in summary.inner_text()
    assert "/dashboard/new" in page.url and job_count(service) == before  # nothing was created
    page.screenshot(path=str(screenshots / "new-job-errors.png"), full_page=True)

    # Fixed, but the model now lies outside the allowed roots: the old error goes, the new one shows.
    page.fill("#f-recipe-stages-0-keep", "6")
    page.fill("#f-model-path", "/etc")
    page.click("#submit-job")
    path_error = page.locator("#f-model-path-error")
    path_error.wait_for()
    assert path_error.inner_text().strip() != ""
    assert page.get_attribute("#f-model-path", "aria-invalid") == "true"
    assert keep_error.is_hidden() and page.get_attribute("#f-recipe-stages-0-keep", "aria-invalid") is None
    assert job_count(service) == before


def test_every_method_of_the_api_renders_as_a_labelled_stage(page: Any, service: Service) -> None:
    with service.client() as client:
        methods = client.get("/v1/methods").json()["methods"]
    sign_in(page, service.key, "/dashboard/new")
    page.wait_for_selector("#new-job[data-ready]")
    for method in methods:
        page.select_option("#add-method", method["name"])
        page.click("#add-stage")
    legends = page.locator("#stages legend .stage-method").all_inner_texts()
    assert legends == [f"Stage {i + 1}: {m['name'].replace('_', ' ')}" for i, m in enumerate(methods)]
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('#stages input, #stages select')]
             .filter((el) => el.labels.length === 0).map((el) => el.id)"""
    )
    assert unlabelled == []
    # Each stage's defaults are the API's: what the form would send equals what the API says.
    for i, method in enumerate(methods):
        for name, value in method["defaults"].items():
            field = page.locator(f"#f-recipe-stages-{i}-{name}")
            if field.count() and isinstance(value, bool):
                assert field.is_checked() == value, (method["name"], name)
            elif field.count() and isinstance(value, int | float | str):
                assert field.input_value() == str(value), (method["name"], name)


def test_stages_are_stacked_and_reordered_with_the_keyboard_alone(page: Any, service: Service) -> None:
    sign_in(page, service.key, "/dashboard/new")
    page.wait_for_selector("#new-job[data-ready]")
    active = "() => document.activeElement.id || document.activeElement.className"
    for method in ("block_drop", "expert_drop"):
        page.focus("#add-method")
        page.select_option("#add-method", method)  # a select changes with the arrow keys; the value is what counts
        page.keyboard.press("Tab")
        assert page.evaluate(active) == "add-stage"
        page.keyboard.press("Enter")
        assert page.evaluate(active) == "stage-method"  # focus moves to the new stage's heading
    page.keyboard.press("Tab")
    assert page.evaluate(active) == "f-recipe-stages-1-mode"  # then into its fields, in order
    page.focus("button[aria-label='Move stage 2 up']")
    page.keyboard.press("Enter")
    legends = page.locator("#stages legend .stage-method").all_inner_texts()
    assert legends == ["Stage 1: expert drop", "Stage 2: block drop"]
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == "Move stage 1 down"
    for _ in range(2):
        page.focus("button[aria-label^='Remove stage']")
        page.keyboard.press("Enter")
    assert page.locator("#stages li").count() == 0 and page.evaluate(active) == "add-stage"


def test_the_jobs_list_follows_jobs_live_to_succeeded(
    page: Any, service: Service, api_jobs: list[str], screenshots: Path
) -> None:
    sign_in(page, service.key)
    page.evaluate(RELOAD_MARK)
    seen: dict[str, set[str]] = {job: set() for job in api_jobs}
    partial_progress = False
    deadline = time.monotonic() + 480  # a shared, busy CPU
    while time.monotonic() < deadline:
        for job in api_jobs:
            row = page.locator(f"tr[data-job-id='{job}']")
            if row.count():
                seen[job].add(row.get_attribute("data-status") or "")
                now = int(row.locator("[role=progressbar]").get_attribute("aria-valuenow") or 0)
                if 0 < now < 100 and not partial_progress:
                    page.screenshot(path=str(screenshots / "jobs-running.png"), full_page=True)
                    partial_progress = True
        if all("succeeded" in s or "failed" in s for s in seen.values()):
            break
        page.wait_for_timeout(200)
    assert all("succeeded" in s for s in seen.values()), seen
    assert any(s & {"queued", "running"} for s in seen.values()), seen  # watched while it was still going
    assert partial_progress
    assert page.evaluate("window.__notReloaded") is True

    first = page.locator(f"tr[data-job-id='{api_jobs[0]}']")
    assert " ".join(first.locator(".status").inner_text().split()) == "✓ Succeeded"  # icon + text, not colour alone
    assert first.locator("[role=progressbar]").get_attribute("aria-valuenow") == "100"
    assert "expert drop keep 6" in first.inner_text()
    order = page.eval_on_selector_all("#jobs-body tr", "rows => rows.map((r) => r.dataset.jobId)")
    assert order.index(api_jobs[1]) < order.index(api_jobs[0])  # newest first
    page.select_option("#filter-status", "failed")
    page.wait_for_function("() => document.querySelectorAll('#jobs-body tr').length === 0")
    page.select_option("#filter-status", "")
    page.wait_for_selector(f"tr[data-job-id='{api_jobs[0]}']")
    rows = page.locator("#jobs-body tr").count()
    page.select_option("#filter-model", index=1)  # the bundled model: every job so far
    page.wait_for_timeout(1500)
    assert page.locator("#jobs-body tr").count() == rows
    page.screenshot(path=str(screenshots / "jobs.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    page.screenshot(path=str(screenshots / "jobs-phone.png"), full_page=True)


def submit_from_the_form(page: Any) -> None:
    page.wait_for_selector("#new-job[data-ready]")
    page.select_option("#add-method", "expert_drop")
    page.click("#add-stage")
    page.fill("#f-recipe-stages-0-keep", "6")
    page.select_option("#add-method", "layer_drop")
    page.click("#add-stage")
    page.fill("#f-recipe-stages-1-drop", "2")
    page.click("button[aria-label='Move stage 2 up']")  # stages are applied in the order shown
    assert page.locator("#stages > li").first.locator("legend").inner_text().startswith("Stage 1: layer drop")
    page.fill("#f-recipe-calibration-samples", str(SMALL_CALIBRATION["samples"]))
    page.fill("#f-recipe-calibration-seq_len", str(SMALL_CALIBRATION["seq_len"]))
    page.fill("#f-evaluation-seq_len", "128")
    page.fill("#f-evaluation-max_tokens", "2048")
    page.fill("#f-evaluation-fidelity_tokens", "1024")
    page.fill("#f-evaluation-gate-max_perplexity_increase_pct", "1000")
    page.click("#submit-job")
    page.wait_for_url("**/dashboard/jobs/*")


def test_a_job_from_the_form_runs_live_to_a_report_with_charts_and_a_checked_download(
    page: Any, service: Service, screenshots: Path, tmp_path: Path
) -> None:
    sign_in(page, service.key, "/dashboard/new")
    submit_from_the_form(page)
    job_id = page.url.rsplit("/", 1)[1]
    page.evaluate(RELOAD_MARK)
    with service.client() as client:
        submitted = client.get(f"/v1/jobs/{job_id}").json()
    assert [s["method"] for s in submitted["recipe"]["stages"]] == ["layer_drop", "expert_drop"]

    page.wait_for_selector("#job-status [data-status=succeeded]", timeout=480_000)
    page.wait_for_selector("#report[data-ready]")
    assert page.evaluate("window.__notReloaded") is True
    assert page.get_attribute("#job-progress [role=progressbar]", "aria-valuenow") == "100"
    stages = page.eval_on_selector_all("#stage-list li", "items => items.map((li) => li.dataset.stage)")
    assert {"layer_drop", "expert_drop", "evaluate"} <= set(stages), stages
    for stage in ("layer_drop", "expert_drop"):
        bar = page.locator(f"#stage-list li[data-stage={stage}] [role=progressbar]")
        assert bar.get_attribute("aria-valuenow") == "100"
        assert "layer" in bar.get_attribute("aria-valuetext")
    assert page.locator("#event-log li").count() >= 5
    assert "job succeeded" in page.locator("#event-log").inner_text()
    assert page.locator("#cancel-button").is_hidden()
    assert "/dashboard/compare?model=" in page.get_attribute("#compare-link", "href")

    # The figures, each with its "% of original".
    ppl = page.locator("tr[data-figure='perplexity.bundled:heldout.ppl']")
    assert ppl.locator("td.pct").inner_text().endswith("%")
    assert page.locator("tr[data-figure='footprint.disk_bytes'] td.pct").inner_text() != "—"
    # The charts: the expert-score heatmap (6 scored layers x 8 experts, 2 dropped in each; the 2 layers
    # whose MoE layer drop removed first are rows saying so) and the layer similarities, 2 dropped marked.
    heat = page.locator("#report svg.chart:has(.heat-cell)")
    cells, crossed = heat.locator(".heat-cell").count(), heat.locator(".heat-cell.dropped").count()
    assert (cells, crossed) == (6 * 8, 6 * 2)
    assert heat.locator(".heat-row.removed").count() == 2
    bars = page.locator("#report svg.chart:has(.bar-item)")
    assert bars.locator(".bar-item").count() == 8 and bars.locator(".bar-item.marked").count() == 2
    assert page.locator("#report svg.chart:has(.point) .point").count() == 2  # original + this job

    row = page.locator("#artifacts-body tr[data-kind=checkpoint]")
    listed_sha = row.locator(".sha256").inner_text().strip()
    assert row.locator(".fetch-command").inner_text() == f"moecomp download {job_id} --kind checkpoint --out ."
    with page.expect_download() as download_info:
        row.locator("a.download").click()
    saved = tmp_path / "checkpoint.tar"
    download_info.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == listed_sha
    page.screenshot(path=str(screenshots / "job.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(screenshots / "job-phone.png"), full_page=True)


# Every state the running stage's row passes through, recorded as the page draws it (reports may come
# faster than a test could poll for them).
RECORD_RUNNING_STAGES = """window.__running = [];
new MutationObserver(() => {
  for (const li of document.querySelectorAll('#stage-list li[data-state=running]')) {
    const text = (sel) => li.querySelector(sel)?.textContent ?? null;
    const view = {stage: li.dataset.stage, bar: text('.bar-text'), elapsed: text('.stage-elapsed'),
                  eta: text('.stage-eta')};
    if (JSON.stringify(window.__running.at(-1)) !== JSON.stringify(view)) window.__running.push(view);
  }
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});"""
ETA = re.compile(r"estimating…|almost done|about (\d+ min )?\d+ s left")
ELAPSED = re.compile(r"(\d+ min )?\d+ s elapsed")


def test_a_running_jobs_page_shows_its_stage_at_layer_k_of_n_with_elapsed_time_and_time_left(
    page: Any, service: Service, screenshots: Path
) -> None:
    """At phone width. Calibration on 128 x 256 tokens makes the expert-drop pass over the 8 layers last a
    few seconds, so it reports between its first and last layer (at most two reports a second a stage)."""
    page.set_viewport_size({"width": 390, "height": 844})
    page.add_init_script(RECORD_RUNNING_STAGES)
    sign_in(page, service.key)
    job_id = service.submit([{"method": "expert_drop", "keep": 6}], calibration={"samples": 128, "seq_len": 256})
    page.goto(f"/dashboard/jobs/{job_id}")
    page.wait_for_function(
        "() => /left$/.test(document.querySelector('#stage-list li[data-state=running] .stage-eta')?.textContent)",
        timeout=120_000,
    )
    page.screenshot(path=str(screenshots / "job-running-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.wait_for_selector("#job-status [data-status=succeeded]", timeout=120_000)

    running = page.evaluate("window.__running")
    layers = [v for v in running if v["stage"] == "expert_drop" and re.search(r"layer [1-7] of 8$", v["bar"])]
    assert layers, running
    assert all(ETA.fullmatch(v["eta"]) and ELAPSED.fullmatch(v["elapsed"]) for v in running), running
    assert layers[0]["eta"] == "estimating…"  # layer 1 of 8: one step seen, no rate yet
    assert any(v["eta"] != "estimating…" for v in layers), layers  # then a time left, from the pass's own rate
    steps = [v for v in running if v["stage"] == "evaluate"]
    assert steps and all(re.search(r"step [1-5] of 6 \((baseline|candidate) \w+\)$", v["bar"]) for v in steps), steps

    # Done: every stage says how long it took and none says how long it has left. The status (polled) can show
    # "succeeded" a moment before the event stream delivers the last stage's final step: wait for the stream.
    all_done = "() => [...document.querySelectorAll('#stage-list li')].every((li) => li.dataset.state === 'done')"
    page.wait_for_function(all_done, timeout=15_000)
    stages = page.eval_on_selector_all("#stage-list li", "items => items.map((li) => li.dataset.state)")
    assert stages and set(stages) == {"done"}, stages
    assert page.locator("#stage-list .stage-eta").count() == 0
    took = page.locator("#stage-list li[data-stage=expert_drop] .stage-duration").inner_text()
    assert re.fullmatch(r"took (\d+ min )?\d+ s", took), took
    page.screenshot(path=str(screenshots / "job-stages-phone.png"), full_page=True)


def test_compare_draws_quality_against_memory_and_speedup(
    page: Any, service: Service, api_jobs: list[str], screenshots: Path
) -> None:
    for job in api_jobs:
        assert service.wait_final(job)["status"] == "succeeded"
    sign_in(page, service.key, "/dashboard/compare")
    page.wait_for_selector("#compare-page[data-ready]")
    for job in api_jobs:
        assert page.is_checked(f"#pick-{job}")
    memory = page.locator("#chart-memory svg")
    labels = memory.locator(".point").evaluate_all("points => points.map((p) => p.dataset.label)")
    assert "original" in labels and {j[:8] for j in api_jobs} <= set(labels)
    assert memory.locator(".point .reference").count() == 1
    speed = page.locator("#chart-speed svg")
    speed_labels = speed.locator(".point").evaluate_all("points => points.map((p) => p.dataset.label)")
    assert speed_labels[0] == "original" and api_jobs[1][:8] in speed_labels  # the job measured for speed
    page.select_option("#compare-quality", "accuracy")  # no job ran a zero-shot task: said plainly
    page.wait_for_selector("#chart-memory svg .chart-empty")
    page.select_option("#compare-quality", "perplexity")
    page.uncheck(f"#pick-{api_jobs[0]}")
    page.wait_for_function(
        "(label) => ![...document.querySelectorAll('#chart-memory .point')].some((p) => p.dataset.label === label)",
        arg=api_jobs[0][:8],
    )
    page.check(f"#pick-{api_jobs[0]}")
    page.wait_for_function("() => document.querySelectorAll('#chart-memory .point').length >= 3")
    page.screenshot(path=str(screenshots / "compare.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_the_event_log_falls_back_to_polling_when_the_stream_is_refused(
    page: Any, service: Service, api_jobs: list[str]
) -> None:
    job_id = api_jobs[0]
    assert service.wait_final(job_id)["status"] == "succeeded"
    page.route("**/events/stream*", lambda route: route.fulfill(status=503, body="no streams here"))
    sign_in(page, service.key, f"/dashboard/jobs/{job_id}")
    page.wait_for_function("() => document.querySelector('#event-log').textContent.includes('job succeeded')")
    with service.client() as client:
        events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
    assert page.locator("#event-log li").count() == len(events)  # each once, none lost


def test_a_job_can_be_cancelled_from_its_page(page: Any, service: Service) -> None:
    job_id = service.submit([{"method": "expert_drop", "keep": 6}])
    sign_in(page, service.key, f"/dashboard/jobs/{job_id}")
    page.click("#cancel-button")
    page.wait_for_selector("#job-status [data-status=cancelled]", timeout=180_000)
    assert page.locator("#cancel-button").is_hidden()
    assert service.wait_final(job_id)["status"] == "cancelled"


def test_a_model_folder_uploads_from_the_form_and_fills_its_id(page: Any, service: Service, tmp_path: Path) -> None:
    archive = tmp_path / "model.tar"
    with tarfile.open(archive, "w") as tar:
        for file in sorted(TINY_MIXTRAL.iterdir()):
            tar.add(file, arcname=file.name)
    sign_in(page, service.key, "/dashboard/new")
    page.wait_for_selector("#new-job[data-ready]")
    page.select_option("#f-model-kind", "upload")
    page.set_input_files("#f-model-upload-file", str(archive))
    page.click("#upload-button")
    page.wait_for_function("() => document.querySelector('#f-model-upload_id').value !== ''")
    upload_id = page.input_value("#f-model-upload_id")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert digest in page.inner_text("#upload-status")
    with service.client() as client:  # the id is usable: a job on it is accepted (then cancelled)
        body = {"model": {"kind": "upload", "upload_id": upload_id}, "recipe": {"stages": []}}
        job = client.post("/v1/jobs", json=body)
        assert job.status_code == 201, job.text
        client.post(f"/v1/jobs/{job.json()['id']}/cancel")


def test_older_jobs_page_in_on_request(page: Any, service: Service) -> None:
    with service.client() as client:  # cancelled while queued: listed, but no work for the worker
        for _ in range(51):
            job_id = service.submit([])
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        total = len(client.get("/v1/jobs", params={"limit": 200}).json()["items"])
    sign_in(page, service.key)
    page.wait_for_function("() => document.querySelectorAll('#jobs-body tr').length === 50")
    page.click("#more-jobs")
    page.wait_for_function("(n) => document.querySelectorAll('#jobs-body tr').length === n", arg=min(total, 100))
    page.select_option("#filter-status", "cancelled")  # a filter starts again from the newest page
    page.wait_for_function("() => document.querySelectorAll('#jobs-body tr').length === 50")
