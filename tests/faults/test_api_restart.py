"""The API killed (SIGKILL) and started again under clients that follow a running job's events.

A raw SSE client resumes once with `Last-Event-ID` and once with `?after=`; `moecomp watch` runs alongside
through both restarts. Every event arrives exactly once, in order, without a gap, and the stream ends with `end`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.faults.service import Service, events_of

pytestmark = pytest.mark.slow

Frame = dict[str, str]


def sse_frames(response: httpx.Response) -> Iterator[Frame]:
    """Server-Sent Events frames as {field: value}; comment lines (keepalives) are skipped."""
    frame: Frame = {}
    for line in response.iter_lines():
        if not line:
            if frame:
                yield frame
            frame = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            frame[field] = value.removeprefix(" ")


def read_stream(
    client: httpx.Client,
    job_id: str,
    until: Callable[[Frame], bool],
    kill: Callable[[], None] | None = None,
    **request: Any,
) -> list[Frame]:
    """The stream's frames up to ``until(frame)``; then ``kill`` the API under the open stream and keep
    reading what had arrived, until the stream breaks (or ends, when the job ended before the kill)."""
    received: list[Frame] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events/stream", **request) as response:
        assert response.status_code == 200, response.read()
        frames = sse_frames(response)
        for frame in frames:
            received.append(frame)
            if until(frame):
                break
        if kill is not None:
            kill()
            try:
                received.extend(frames)
            except httpx.TransportError:  # the server died mid-stream
                pass
    return received


def stage_is(stage: str) -> Callable[[Frame], bool]:
    return lambda frame: json.loads(frame["data"]).get("stage") == stage


def is_end(frame: Frame) -> bool:
    return frame["event"] == "end"


def last_id(frames: list[Frame]) -> str:
    return [f["id"] for f in frames if "id" in f][-1]


def test_event_stream_resumes_after_api_restarts(service: Service, tiny_mixtral_dir):
    service.start_api()
    service.worker("worker")
    with service.client(timeout=30) as client:
        job_id = service.submit(client, tiny_mixtral_dir)
        watch = service.start("watch", job_id, log="watch.log", url=service.url, key=service.key)

        def restart() -> None:
            service.kill_api()
            service.start_api()

        # Killed at the first layer, again at the evaluation; resumed as an EventSource does (the id of the
        # last event received, in Last-Event-ID), then as a script does (?after=). On a slow machine the job
        # may end while the API restarts: the next connection then brings the rest, and `end`.
        connections = [read_stream(client, job_id, stage_is("expert_drop"), kill=restart)]
        resume = {"Last-Event-ID": last_id(connections[-1])}
        connections.append(read_stream(client, job_id, stage_is("evaluate"), kill=restart, headers=resume))
        if not is_end(connections[-1][-1]):
            connections.append(read_stream(client, job_id, is_end, params={"after": last_id(connections[-1])}))
        stored = [e["seq"] for e in events_of(client, job_id)]
        job = client.get(f"/v1/jobs/{job_id}").json()
    watched = watch.wait(120)

    frames = [frame for frames in connections for frame in frames]
    seqs = [int(f["id"]) for f in frames if "id" in f]
    assert all(any("id" in f for f in frames) for frames in connections), "each connection delivered events"
    assert seqs == list(range(1, len(seqs) + 1)) == stored, "every event once, in order, no gap"
    assert [f["event"] for f in frames].count("end") == 1 and is_end(frames[-1])
    assert json.loads(frames[-1]["data"]) == {"status": "succeeded", "last_seq": seqs[-1]}
    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    out = (service.tmp / "watch.log").read_text()
    assert watched == 0 and "succeeded" in out, out
