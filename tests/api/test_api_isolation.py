"""Isolation: every endpoint that touches a team's data, against every kind of caller.

Callers: the owner's key, another team's key, a wrong key (the owner's prefix with a wrong secret) and a
revoked key, each as a Bearer header and as the dashboard cookie, and no key at all. Only the owner sees
its jobs; another team gets exactly what a missing id gets (so ids cannot be probed); a wrong, revoked or
missing key gets 401, and the dashboard pages send it to the sign-in page (they read the cookie only).

Keys of no team too: a worker credential and an admin key get 403 (saying which key the route needs) on every
team route and the sign-in page on every dashboard page; the worker routes (/v1/worker/...) take only a worker
credential, as a Bearer header only: a team key or an admin key there gets 403, a cookie, a wrong, revoked or
missing key 401. The worker registry (/v1/workers) shows a team only its own jobs on the workers, an admin key
all of them, and refuses a worker credential (403).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select

from moecomp.api.app import create_app
from moecomp.api.dashboard.router import signed_in
from moecomp.api.deps import COOKIE_NAME, NEEDS, WRONG_KIND, get_fleet_viewer, get_team, get_worker_key
from moecomp.persistence import jobs, workers
from moecomp.persistence.database import Database
from moecomp.persistence.keys import create_api_key, revoke_api_key
from moecomp.persistence.models import Job, JobStatus, Team, Upload
from moecomp.persistence.service_keys import Role, create_service_key
from moecomp.settings import Settings
from tests.api.helpers import add_artifact, count, job_body, set_status
from tests.api.test_api_events import add_events
from tests.api.test_api_uploads import TAR, model_tar

CONTENT = b"checkpoint bytes " * 1000
REPLAY_KEY = "isolation-1"
UNAUTHORIZED = {"detail": "missing or invalid API key"}


@dataclass
class World:
    """Team a's data (a finished job with events and an artifact, a queued job, an upload) and every key."""

    keys: dict[str, str]  # owner, other, wrong, revoked, worker, admin
    ids: dict[str, str]  # job, live, running, artifact, upload
    etags: dict[str, str] = field(default_factory=dict)  # what the owner was sent: job, listing, artifact

    def missing(self) -> dict[str, str]:
        """Ids of the same shapes that exist nowhere."""
        return {name: uuid.uuid4().hex for name in self.ids}


def _key(db: Database, team: str) -> str:
    with db.session() as session:
        return create_api_key(session, team)


@pytest.fixture
def world(client: TestClient, db: Database, settings: Settings) -> World:
    owner, other, revoked = _key(db, "team-a"), _key(db, "team-b"), _key(db, "team-a")
    with db.session() as session:
        revoke_api_key(session, revoked.split("_")[1])
    auth = {"Authorization": f"Bearer {owner}"}
    job = client.post("/v1/jobs", json=job_body(), headers=auth | {"Idempotency-Key": REPLAY_KEY}).json()["id"]
    add_events(db, job, 1, 3)
    artifact = add_artifact(db, settings, job, CONTENT)
    set_status(db, job, JobStatus.succeeded)
    live = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    running = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    with db.session() as session:  # a worker's attempt holds it, as the worker routes need
        assert jobs.claim(session, running, LEASE_WORKER, 30.0, 3, node=NODE) is not None
        workers.beat(session, NODE, workers.Report(host="gpu-host-1", version="0", gpus=[]))
        worker_key = create_service_key(session, Role.worker, "gpu-host-1")
        admin_key = create_service_key(session, Role.admin, "ops")
    uploaded = client.post("/v1/models", content=model_tar(), headers=auth | TAR)
    assert uploaded.status_code == 201, uploaded.text
    upload = uploaded.json()["id"]
    keys = {"owner": owner, "other": other, "wrong": owner[:-4] + "AAAA", "revoked": revoked}
    world = World(keys | {"worker": worker_key, "admin": admin_key}, {})
    world.ids = {"job": job, "live": live, "running": running, "artifact": artifact["id"], "upload": upload}
    for name, url in [("job", f"/v1/jobs/{job}"), ("listing", "/v1/jobs"), ("artifact", artifact_url(world.ids))]:
        world.etags[name] = client.get(url, headers=auth).headers.get("etag", '"none"')
    return world


def artifact_url(ids: dict[str, str]) -> str:
    return f"/v1/artifacts/{ids['artifact']}/content"


# What an endpoint is to a caller of another team: OWNED names one of team a's things by id (another team
# gets what a missing id gets); TEAM works on the caller's own team (it must not show team a's jobs);
# PAGE is a dashboard page (signed in by cookie; OWNED_PAGE names an id); PUBLIC needs no key; WORKER needs a
# worker credential.
OWNED, TEAM, PAGE, OWNED_PAGE, PUBLIC, WORKER = "owned", "team", "page", "owned page", "public", "worker"
LEASE_WORKER = "gpu-host-1:4242"
NODE = "gpu-host-1:4200"  # the worker main process whose pool process runs the running job
CHUNK_BODY = b"a log line\n"


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    route: str  # the path template the app declares (test_the_matrix_covers_every_route compares them)
    url: Callable[[dict[str, str]], str]
    kind: str
    headers: Callable[[World], dict[str, str]] = lambda w: {}
    json: Callable[[dict[str, str]], Any] | None = None
    content: bytes | None = None
    foreign: int = 404  # the status a missing id (and so another team's id) gets
    served: int = 200  # WORKER: the status its rightful caller gets
    admin_ok: bool = False  # TEAM: an admin key is served too (and shown everything)
    shows: Callable[[Response, World], bool] | None = None  # TEAM: does the answer reveal team a's jobs?


def _listed(response: Response, world: World) -> bool:
    return bool({job["id"] for job in response.json()["items"]} & {world.ids["job"], world.ids["live"]})


def _runs(response: Response, world: World) -> bool:
    """Does the worker registry name team a's running job?"""
    return any(world.ids["running"] in worker["jobs"] for worker in response.json()["items"])


def _upload_job(ids: dict[str, str]) -> dict[str, Any]:
    return {"model": {"kind": "upload", "upload_id": ids["upload"]}, "recipe": {"stages": []}}


JOB = "/v1/jobs/{job_id}"
CONTENT_ROUTE = "/v1/artifacts/{artifact_id}/content"
UPLOAD_CONTENT = "/v1/worker/uploads/{upload_id}/content"
ATTEMPT = "/v1/worker/jobs/{job_id}/attempts/{attempt}"
LEASE = {"X-Moecomp-Worker": LEASE_WORKER}
CHUNK_HEADERS = LEASE | {
    "X-Artifact-Kind": "log",
    "X-Checksum-Sha256": hashlib.sha256(CHUNK_BODY).hexdigest(),
    "Content-Range": f"bytes 0-{len(CHUNK_BODY) - 1}/{len(CHUNK_BODY)}",
}


def _attempt(ids: dict[str, str]) -> str:
    return f"/v1/worker/jobs/{ids['running']}/attempts/1"


def _upload_content(ids: dict[str, str]) -> str:
    return f"/v1/worker/uploads/{ids['upload']}/content"


ENDPOINTS = [
    Endpoint("list jobs", "GET", "/v1/jobs", lambda i: "/v1/jobs", TEAM, shows=_listed),
    Endpoint(
        "list jobs, owner's ETag",
        "GET",
        "/v1/jobs",
        lambda i: "/v1/jobs",
        TEAM,
        headers=lambda w: {"If-None-Match": w.etags["listing"]},
        shows=lambda r, w: r.status_code == 304 or _listed(r, w),
    ),
    Endpoint(
        "replay of the owner's Idempotency-Key",
        "POST",
        "/v1/jobs",
        lambda i: "/v1/jobs",
        TEAM,
        headers=lambda w: {"Idempotency-Key": REPLAY_KEY},
        json=lambda i: job_body(),
        shows=lambda r, w: r.json()["id"] == w.ids["job"],
    ),
    Endpoint(
        "job on the owner's upload", "POST", "/v1/jobs", lambda i: "/v1/jobs", OWNED, json=_upload_job, foreign=422
    ),
    Endpoint("get job", "GET", JOB, lambda i: f"/v1/jobs/{i['job']}", OWNED),
    Endpoint(
        "get job, owner's ETag",
        "GET",
        JOB,
        lambda i: f"/v1/jobs/{i['job']}",
        OWNED,
        headers=lambda w: {"If-None-Match": w.etags["job"]},
    ),
    Endpoint("events", "GET", JOB + "/events", lambda i: f"/v1/jobs/{i['job']}/events", OWNED),
    Endpoint("events stream", "GET", JOB + "/events/stream", lambda i: f"/v1/jobs/{i['job']}/events/stream", OWNED),
    Endpoint("artifacts", "GET", JOB + "/artifacts", lambda i: f"/v1/jobs/{i['job']}/artifacts", OWNED),
    Endpoint("download", "GET", CONTENT_ROUTE, artifact_url, OWNED),
    Endpoint("download HEAD", "HEAD", CONTENT_ROUTE, artifact_url, OWNED),
    Endpoint("download range", "GET", CONTENT_ROUTE, artifact_url, OWNED, headers=lambda w: {"Range": "bytes=0-9"}),
    Endpoint(
        "download, owner's ETag",
        "GET",
        CONTENT_ROUTE,
        artifact_url,
        OWNED,
        headers=lambda w: {"If-None-Match": w.etags["artifact"]},
    ),
    Endpoint(
        "upload a model", "POST", "/v1/models", lambda i: "/v1/models", TEAM, headers=lambda w: TAR, content=model_tar()
    ),
    Endpoint("methods", "GET", "/v1/methods", lambda i: "/v1/methods", TEAM),
    Endpoint("worker: upload's bytes", "GET", UPLOAD_CONTENT, _upload_content, WORKER),
    Endpoint("worker: upload's bytes HEAD", "HEAD", UPLOAD_CONTENT, _upload_content, WORKER),
    Endpoint(
        "worker: artifact offset",
        "GET",
        ATTEMPT + "/artifacts/{name}",
        lambda i: _attempt(i) + "/artifacts/job.log",
        WORKER,
        headers=lambda w: LEASE,
    ),
    Endpoint(
        "worker: artifact chunk",
        "PUT",
        ATTEMPT + "/artifacts/{name}",
        lambda i: _attempt(i) + "/artifacts/job.log",
        WORKER,
        headers=lambda w: CHUNK_HEADERS,
        content=CHUNK_BODY,
    ),
    Endpoint(
        "worker: prune",
        "POST",
        ATTEMPT + "/prune",
        lambda i: _attempt(i) + "/prune",
        WORKER,
        headers=lambda w: LEASE,
        served=204,
    ),
    Endpoint("workers", "GET", "/v1/workers", lambda i: "/v1/workers", TEAM, shows=_runs, admin_ok=True),
    # These two change the queued job, so they come last: cancel it, then delete it (an ended job).
    Endpoint("cancel", "POST", JOB + "/cancel", lambda i: f"/v1/jobs/{i['live']}/cancel", OWNED),
    Endpoint("delete", "DELETE", JOB, lambda i: f"/v1/jobs/{i['live']}", OWNED),
    Endpoint("jobs page", "GET", "/dashboard", lambda i: "/dashboard", PAGE),
    Endpoint("new job page", "GET", "/dashboard/new", lambda i: "/dashboard/new", PAGE),
    Endpoint("job page", "GET", "/dashboard/jobs/{job_id}", lambda i: f"/dashboard/jobs/{i['job']}", OWNED_PAGE),
    Endpoint("compare page", "GET", "/dashboard/compare", lambda i: f"/dashboard/compare?model={i['job']}", OWNED_PAGE),
    Endpoint("workers page", "GET", "/dashboard/workers", lambda i: "/dashboard/workers", PAGE),
    Endpoint("static file", "GET", "/dashboard/static/{path:path}", lambda i: "/dashboard/static/js/api.js", PUBLIC),
]


@dataclass(frozen=True)
class Caller:
    key: str | None  # a key of World.keys
    via: str  # "bearer" | "cookie" | "none"

    @property
    def team(self) -> str | None:
        """owner / other for a valid key, else None."""
        return self.key if self.key in ("owner", "other") else None

    def __str__(self) -> str:
        return f"{self.key}-{self.via}" if self.key else "no-key"


CALLERS = [
    Caller(key, via)
    for key in ("owner", "other", "wrong", "revoked", "worker", "admin")
    for via in ("bearer", "cookie")
]
CALLERS.append(Caller(None, "none"))
TEAM_KEYS, SERVICE_KEYS = ("owner", "other"), ("worker", "admin")


def call(client: TestClient, world: World, caller: Caller, endpoint: Endpoint, ids: dict[str, str]) -> Response:
    headers = dict(endpoint.headers(world))  # a copy: some endpoints share a module constant
    client.cookies.clear()
    if caller.via == "bearer":
        headers["Authorization"] = f"Bearer {world.keys[caller.key or '']}"
    elif caller.via == "cookie":
        client.cookies.set(COOKIE_NAME, world.keys[caller.key or ""])
    return client.request(
        endpoint.method,
        endpoint.url(ids),
        headers=headers,
        json=endpoint.json(ids) if endpoint.json else None,
        content=endpoint.content,
        follow_redirects=False,
    )


def anonymized(response: Response, ids: dict[str, str]) -> tuple[int, str, str | None, str | None]:
    """What a caller can see of an answer, with the ids it asked about blanked out."""
    text = response.text
    for value in ids.values():  # pages show an id's first 8 characters too
        text = text.replace(value, "<id>").replace(value[:8], "<id8>")
    return response.status_code, text, response.headers.get("content-type"), response.headers.get("www-authenticate")


def _succeeded(response: Response) -> bool:
    return 200 <= response.status_code < 300 or response.status_code == 304


def problems_with(client: TestClient, world: World, caller: Caller, endpoint: Endpoint) -> list[str]:
    """How the answer to ``caller`` breaks isolation (empty when it holds)."""
    response = call(client, world, caller, endpoint, world.ids)
    got = f"{endpoint.name} as {caller}: {response.status_code} {response.text[:200]}"
    page = endpoint.kind in (PAGE, OWNED_PAGE)
    if endpoint.kind == WORKER:
        ok = _service_route_ok(response, endpoint, caller)
    elif endpoint.admin_ok and caller.key == "admin":
        ok = _succeeded(response) and (endpoint.shows is None or endpoint.shows(response, world))
    elif endpoint.kind == PUBLIC:
        ok = response.status_code == 200
    elif not page and caller.key in SERVICE_KEYS:  # a valid key of no team: refused, saying what is needed
        ok = response.status_code == 403 and (
            endpoint.method == "HEAD" or response.json() == {"detail": WRONG_KIND[Role(caller.key)]}
        )
    elif page and (caller.via != "cookie" or caller.team is None):
        ok = response.status_code == 303 and response.headers["location"].startswith("/dashboard/login?next=")
    elif not page and caller.team is None:
        body_ok = endpoint.method == "HEAD" or response.json() == UNAUTHORIZED
        ok = response.status_code == 401 and body_ok and response.headers["www-authenticate"] == "Bearer"
    elif caller.team == "owner" or endpoint.kind in (TEAM, PAGE):
        ok = _succeeded(response) and (
            endpoint.shows is None or endpoint.shows(response, world) == (caller.team == "owner")
        )
    else:  # another team naming team a's things: exactly what a missing id gets
        missing = world.missing()
        answer = call(client, world, caller, endpoint, missing)
        expected = endpoint.foreign if endpoint.kind == OWNED else 200
        ok = response.status_code == expected and anonymized(response, world.ids) == anonymized(answer, missing)
        got += f" vs a missing id's {answer.status_code} {answer.text[:200]}"
    return [] if ok else [got]


def _service_route_ok(response: Response, endpoint: Endpoint, caller: Caller) -> bool:
    """A worker route: served to a worker credential (as a Bearer header), 403 to another valid key (as a Bearer
    header), 401 to everyone else; the refusals name the key the route needs."""
    needs = NEEDS[Role(endpoint.kind)]
    head = endpoint.method == "HEAD"
    if caller.via == "bearer" and caller.key == endpoint.kind:
        return response.status_code == endpoint.served
    if caller.via == "bearer" and caller.key in TEAM_KEYS + SERVICE_KEYS:
        return response.status_code == 403 and (head or needs in response.json()["detail"])
    return (
        response.status_code == 401
        and response.headers["www-authenticate"] == "Bearer"
        and (head or response.json() == {"detail": f"missing or invalid key: this route needs {needs}"})
    )


def snapshot(db: Database) -> tuple[dict[str, str], int, int]:
    """Team a's jobs with their statuses, and how many jobs and uploads there are in all."""
    with db.session() as session:
        rows = session.execute(select(Job.id, Job.status).join(Team).where(Team.name == "team-a")).all()
    return dict(rows), count(db, Job), count(db, Upload)


@pytest.mark.parametrize("caller", CALLERS, ids=str)
def test_isolation_matrix(client: TestClient, db: Database, world: World, caller: Caller) -> None:
    before = snapshot(db)
    problems = [problem for endpoint in ENDPOINTS for problem in problems_with(client, world, caller, endpoint)]
    assert problems == []
    after = snapshot(db)
    if caller.team != "owner":  # nothing of team a changed, and no job of team a was added
        assert after[0] == before[0]
    if caller.team is None:  # a refused caller wrote nothing at all
        assert after[1:] == before[1:]


def _needs_a_key(dependant: Any) -> bool:
    key_checks = (get_team, signed_in, get_worker_key, get_fleet_viewer)
    return any(d.call in key_checks or _needs_a_key(d) for d in dependant.dependencies)


def test_the_matrix_covers_every_route_that_needs_a_key(client: TestClient) -> None:
    declared = {
        (method, context.path)
        for context in iter_route_contexts(client.app.routes)  # type: ignore[attr-defined]
        if isinstance(context.original_route, APIRoute) and _needs_a_key(context.original_route.dependant)
        for method in context.methods or ()
    }
    assert declared == {(e.method, e.route) for e in ENDPOINTS if e.kind != PUBLIC}


def test_another_teams_idempotency_key_neither_replays_nor_conflicts(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    first = client.post("/v1/jobs", json=job_body(keep=6), headers=auth | {"Idempotency-Key": "shared"})
    # Another body under the same key: for team a this is a 422; for team b it must be a new job.
    second = client.post("/v1/jobs", json=job_body(keep=4), headers=other_auth | {"Idempotency-Key": "shared"})
    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert second.json()["id"] != first.json()["id"] and second.json()["recipe"]["stages"][0]["keep"] == 4


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_another_teams_upload_cannot_be_named_by_path(
    client: TestClient, other_auth: dict[str, str], settings: Settings, world: World, where: str
) -> None:
    folder = settings.uploads_dir / world.ids["upload"] / "tiny"
    assert (folder / "config.json").is_file()
    root = settings.allowed_model_roots[1]
    if where == "symlink":
        (root / "link").symlink_to(folder)
    path = {"absolute": str(folder), "dotdot": f"{root}/../{folder.relative_to(root.parent)}", "symlink": "link"}
    body = {"model": {"kind": "local", "path": path[where]}, "recipe": {"stages": []}}
    response = client.post("/v1/jobs", json=body, headers=other_auth)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "model", "path"]


def test_metrics_need_no_key_and_show_no_team_data(client: TestClient, world: World) -> None:
    for caller in CALLERS:  # every route with and without a key, so each label set exists
        for endpoint in ENDPOINTS[:-2]:  # not cancel and delete: nothing needs to change here
            call(client, world, caller, endpoint, world.ids)
    client.cookies.clear()
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and 'route="/v1/jobs/{job_id}"' in metrics.text
    leaked = [
        value for value in [*world.ids.values(), *world.keys.values(), "team-a", "team-b"] if value in metrics.text
    ]
    assert leaked == []


def test_the_data_folder_stays_out_of_reach_under_an_allowed_root(
    settings: Settings, world: World, other_auth: dict[str, str]
) -> None:
    # A deployment whose model root holds the service's own data folder (e.g. roots ["/srv"], data /srv/moecomp).
    wide = settings.model_copy(update={"allowed_model_roots": [settings.data_dir.parent]})
    upload = settings.uploads_dir / world.ids["upload"] / "tiny"
    with TestClient(create_app(wide)) as client:
        for path in (upload, settings.data_dir.parent / "models" / ".." / upload.relative_to(settings.data_dir.parent)):
            body = {"model": {"kind": "local", "path": str(path)}, "recipe": {"stages": []}}
            response = client.post("/v1/jobs", json=body, headers=other_auth)
            assert response.status_code == 422, response.text
            assert response.json()["detail"][0]["loc"] == ["body", "model", "path"]
