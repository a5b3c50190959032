"""The new-job form is built from GET /v1/methods as it is when the page loads: a stage registered in the server's
process (tests/stage_plugin.py, one registration row) is offered and rendered, and its 422s land beside its field;
the supported families are listed with what they refuse.

The app runs in this process (uvicorn on a thread, SQLite, no worker: no job runs) so that the test can register the
stage in the server's own table, and take it out again, without any hook in the service.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moecomp.compression.adapters import FAMILIES
from moecomp.compression.methods.registry import registered_stage
from moecomp.persistence.database import Database
from moecomp.persistence.keys import create_api_key
from moecomp.persistence.migrate import upgrade
from moecomp.settings import Settings
from tests.dashboard.conftest import sign_in
from tests.live_server import live_server
from tests.stage_plugin import METHOD, DropListedExpertsConfig


@pytest.fixture
def app_url_and_key(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The app on a free port in a thread of this process, and a team key for it."""
    settings = Settings(data_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'moecomp.db'}")
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    with db.session() as session:
        key = create_api_key(session, "team-a")
    db.engine.dispose()
    with live_server(settings) as url:
        yield url, key


@pytest.fixture
def new_job_page(browser: Any, app_url_and_key: tuple[str, str]) -> Iterator[Any]:
    url, key = app_url_and_key
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, key, "/dashboard/new")
    page.wait_for_selector("#new-job[data-ready]")
    yield page
    context.close()
    assert not errors, f"errors in the page: {errors}"


def offered(page: Any) -> list[str]:
    return page.eval_on_selector_all("#add-method option", "options => options.map((o) => o.value)")


def test_a_stage_registered_in_the_servers_process_is_offered_and_rendered(new_job_page: Any) -> None:
    page = new_job_page
    assert METHOD not in offered(page)
    with registered_stage(DropListedExpertsConfig):
        page.reload()
        page.wait_for_selector("#new-job[data-ready]")
        assert offered(page)[-1] == METHOD
        assert page.locator(f"#add-method option[value={METHOD}]").inner_text() == "drop listed experts (trimming)"
        page.select_option("#add-method", METHOD)
        page.click("#add-stage")
        legend = page.locator("#stages legend .stage-method").inner_text()
        assert legend == "Stage 1: drop listed experts"
        assert page.locator("#stages label", has_text="Experts").count() == 1  # its own field, from its schema
        # The server's 422s land beside that field: its config's bound, then its check against the model's shape.
        for value, message in (("-1", "greater than or equal to 0"), ("8", "below the experts (8)")):
            page.fill("#f-recipe-stages-0-experts", value)
            page.click("#submit-job")
            page.wait_for_selector(f"#f-recipe-stages-0-experts-error:has-text('{message}')")
    page.reload()
    page.wait_for_selector("#new-job[data-ready]")
    assert METHOD not in offered(page)


def test_the_form_lists_the_supported_families_with_their_refusals(new_job_page: Any, screenshots: Path) -> None:
    page = new_job_page
    listed = page.eval_on_selector_all("#families li", "items => items.map((li) => li.dataset.family)")
    assert listed == sorted(FAMILIES)
    assert page.is_visible("#families li[data-family=mixtral]")
    gpt_oss = page.locator("#families li[data-family=gpt_oss]").inner_text()
    assert "refuses slimming:llmcompressor:" in gpt_oss and "dequantizes mxfp4 checkpoints first" in gpt_oss
    assert "refuses awq:llmcompressor:" in page.locator("#families li[data-family=qwen3_next]").inner_text()
    assert "refuses" not in page.locator("#families li[data-family=mixtral]").inner_text()
    page.locator("#new-job fieldset").first.screenshot(path=str(screenshots / "new-job-families.png"))
