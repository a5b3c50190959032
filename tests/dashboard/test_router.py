"""The dashboard's server side on the real app and a real (SQLite) database: sign-in, cookie, pages, static files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from moecomp.api.app import create_app
from moecomp.assets import DEMO_MODEL, MODELS
from moecomp.persistence.database import Database
from moecomp.persistence.keys import create_api_key, revoke_api_key
from moecomp.persistence.migrate import upgrade
from moecomp.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    upgrade(url)
    return Settings(data_dir=tmp_path / "var", database_url=url, allowed_model_roots=[MODELS])


@pytest.fixture
def key(settings: Settings) -> str:
    db = Database(settings.resolved_database_url)
    with db.session() as session:
        made = create_api_key(session, "dash")
    db.engine.dispose()
    return made


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as test_client:
        yield test_client


def test_login_sets_an_httponly_samesite_strict_cookie_that_the_api_accepts(client: TestClient, key: str) -> None:
    response = client.post("/dashboard/login", data={"key": key, "next": "/dashboard/compare"}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/compare"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"moecomp_key={key};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http on loopback; set behind https
    assert client.get("/v1/jobs").status_code == 200  # the cookie alone authenticates /v1
    assert client.get("/dashboard", follow_redirects=False).status_code == 200


def test_a_wrong_or_revoked_key_is_refused_at_sign_in(client: TestClient, key: str, settings: Settings) -> None:
    wrong = client.post("/dashboard/login", data={"key": key[:-2] + "xx"}, follow_redirects=False)
    assert wrong.status_code == 401
    assert "not valid" in wrong.text and "set-cookie" not in wrong.headers
    db = Database(settings.resolved_database_url)
    with db.session() as session:
        revoke_api_key(session, key)
    db.engine.dispose()
    assert client.post("/dashboard/login", data={"key": key}, follow_redirects=False).status_code == 401


@pytest.mark.parametrize("target", ["https://evil.example/x", "//evil.example", "/v1/jobs", "/\\evil.example"])
def test_sign_in_only_redirects_inside_the_dashboard(client: TestClient, key: str, target: str) -> None:
    response = client.post("/dashboard/login", data={"key": key, "next": target}, follow_redirects=False)
    assert response.headers["location"] == "/dashboard"


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/new", "/dashboard/compare", "/dashboard/jobs/abc"])
def test_pages_send_a_signed_out_browser_to_the_sign_in_page(client: TestClient, path: str) -> None:
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/dashboard/login?next={path}"


def test_sign_out_clears_the_cookie(client: TestClient, key: str) -> None:
    client.post("/dashboard/login", data={"key": key})
    response = client.post("/dashboard/logout", follow_redirects=False)
    assert response.status_code == 303
    assert 'moecomp_key=""' in response.headers["set-cookie"] and "Max-Age=0" in response.headers["set-cookie"]
    client.cookies.clear()
    assert client.get("/v1/jobs").status_code == 401


def test_pages_escape_what_they_echo_and_forbid_inline_script(client: TestClient, key: str) -> None:
    client.post("/dashboard/login", data={"key": key})
    page = client.get('/dashboard/jobs/"><img src=x onerror=alert(1)>')
    assert page.status_code == 200
    assert "<img src=x" not in page.text and "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp


def test_the_new_job_page_offers_the_bundled_model(client: TestClient, key: str) -> None:
    client.post("/dashboard/login", data={"key": key})
    page = client.get("/dashboard/new")
    assert f'data-default-model="{DEMO_MODEL.resolve()}"' in page.text


def test_static_files_are_served_with_types_and_nothing_outside_static(client: TestClient) -> None:
    js = client.get("/dashboard/static/js/main.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert client.get("/dashboard/static/css/dashboard.css").headers["content-type"].startswith("text/css")
    for path in ["../router.py", "..%2Frouter.py", "js/../../router.py", "nope.js"]:
        assert client.get(f"/dashboard/static/{path}").status_code == 404


def test_the_static_files_load_nothing_from_elsewhere() -> None:
    static = Path(__file__).resolve().parents[2] / "moecomp" / "api" / "dashboard"
    for file in static.rglob("*"):
        if file.suffix in {".js", ".css", ".html"}:
            text = file.read_text()
            assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), file
            assert "https://" not in text, file
