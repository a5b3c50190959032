"""Job events: pages after a seq, and the Server-Sent Events stream that ends once the job is final."""

from __future__ import annotations

import json
import threading
import time

from fastapi.testclient import TestClient

from moecomp.persistence.database import Database
from moecomp.persistence.models import JobEvent, JobStatus, utcnow
from tests.api.helpers import job_body, set_status


def add_events(db: Database, job_id: str, first: int, n: int) -> None:
    with db.session() as session:
        for seq in range(first, first + n):
            data = {"step": seq, "total": 8} if seq % 2 else {"text": f"event {seq}"}
            kind = "progress" if seq % 2 else "message"
            session.add(JobEvent(job_id=job_id, seq=seq, time=utcnow(), kind=kind, stage="expert_drop", data=data))
        session.commit()


def parse_sse(text: str) -> list[dict[str, str]]:
    frames = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        frames.append(fields)
    return frames


def test_events_page_after_seq(client: TestClient, auth: dict[str, str], db: Database) -> None:
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    add_events(db, job_id, 1, 5)
    page = client.get(f"/v1/jobs/{job_id}/events", params={"after": 1, "limit": 3}, headers=auth).json()
    assert [e["seq"] for e in page["items"]] == [2, 3, 4] and page["last_seq"] == 4
    assert page["items"][0]["kind"] == "message" and page["items"][0]["data"] == {"text": "event 2"}
    assert page["items"][1] | {"time": None} == {
        "seq": 3,
        "time": None,
        "level": "info",
        "kind": "progress",
        "stage": "expert_drop",
        "data": {"step": 3, "total": 8},
    }
    rest = client.get(f"/v1/jobs/{job_id}/events", params={"after": 4}, headers=auth).json()
    assert [e["seq"] for e in rest["items"]] == [5]
    empty = client.get(f"/v1/jobs/{job_id}/events", params={"after": 5}, headers=auth).json()
    assert empty == {"items": [], "last_seq": 5}
    for after in (-1, 2**70):
        bad = client.get(f"/v1/jobs/{job_id}/events", params={"after": after}, headers=auth)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "after"]


def test_stream_of_a_final_job_sends_everything_then_end(
    client: TestClient, auth: dict[str, str], db: Database
) -> None:
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    add_events(db, job_id, 1, 3)
    set_status(db, job_id, JobStatus.succeeded)
    response = client.get(f"/v1/jobs/{job_id}/events/stream", headers=auth)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    frames = parse_sse(response.text)
    assert [(f.get("id"), f["event"]) for f in frames] == [
        ("1", "progress"),
        ("2", "message"),
        ("3", "progress"),
        (None, "end"),
    ]
    assert json.loads(frames[1]["data"])["data"] == {"text": "event 2"}
    assert json.loads(frames[-1]["data"]) == {"status": "succeeded", "last_seq": 3}


def test_stream_resumes_after_last_event_id(client: TestClient, auth: dict[str, str], db: Database) -> None:
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    add_events(db, job_id, 1, 4)
    set_status(db, job_id, JobStatus.failed)
    response = client.get(f"/v1/jobs/{job_id}/events/stream", headers={**auth, "Last-Event-ID": "2"})
    assert [f.get("id") for f in parse_sse(response.text)] == ["3", "4", None]
    by_query = client.get(f"/v1/jobs/{job_id}/events/stream", params={"after": 3}, headers=auth)
    assert [f.get("id") for f in parse_sse(by_query.text)] == ["4", None]


def test_stream_follows_a_running_job_until_it_ends(client: TestClient, auth: dict[str, str], db: Database) -> None:
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    set_status(db, job_id, JobStatus.running)
    add_events(db, job_id, 1, 1)

    def worker() -> None:  # what a worker does meanwhile: more events, then the end
        time.sleep(0.8)
        add_events(db, job_id, 2, 2)
        time.sleep(0.6)
        set_status(db, job_id, JobStatus.succeeded)

    thread = threading.Thread(target=worker)
    thread.start()
    started = time.monotonic()
    with client.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=auth) as response:
        text = "".join(response.iter_text())
    thread.join()
    assert [(f.get("id"), f["event"]) for f in parse_sse(text)] == [
        ("1", "progress"),
        ("2", "message"),
        ("3", "progress"),
        (None, "end"),
    ]
    assert 1.2 < time.monotonic() - started < 10
