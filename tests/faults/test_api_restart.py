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
    received: list[Frame],
    until: Callable[[Frame], bool],
    kill: Callable[[], None] | None = None,
    **request: Any,
) -> None:
    """Append the stream's frames to ``received`` until ``until(frame)``; then ``kill`` the API under the open
    stream and keep reading what had arrived, until the stream breaks."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events/stream", **request) as response:
        assert response.status_code == 200, response.read()
        frames = sse_frames(response)
        for frame in frames:
            received.append(frame)
            if until(frame):
                break
        if kill is None:
            return
        kill()
        with pytest.raises(httpx.TransportError):  # a broken stream, not a clean end
            for frame in frames:
                received.append(frame)


def stage_of(frame: Frame) -> str | None:
    return json.loads(frame["data"]).get("stage")


def test_event_stream_resumes_after_api_restarts(service: Service, tiny_mixtral_dir):
    service.start_api()
    service.worker("worker")
    with service.client(timeout=30) as client:
        job_id = service.submit(client, tiny_mixtral_dir)
        watch = service.start("watch", job_id, log="watch.log", url=service.url, key=service.key)

        def restart() -> None:
            service.kill_api()
            service.start_api()

        first: list[Frame] = []
        read_stream(client, job_id, first, lambda f: stage_of(f) == "expert_drop", kill=restart)
        # An EventSource reconnects with the id of the last event it received.
        second: list[Frame] = []
        resume = {"Last-Event-ID": first[-1]["id"]}
        read_stream(client, job_id, second, lambda f: stage_of(f) == "evaluate", kill=restart, headers=resume)
        third: list[Frame] = []
        read_stream(client, job_id, third, lambda f: f["event"] == "end", params={"after": second[-1]["id"]})
        stored = [e["seq"] for e in events_of(client, job_id)]
        job = client.get(f"/v1/jobs/{job_id}").json()
    watched = watch.wait(120)

    frames = first + second + third
    seqs = [int(f["id"]) for f in frames if "id" in f]
    assert first and second and third, "each connection delivered events"
    assert seqs == list(range(1, len(seqs) + 1)) == stored, "every event once, in order, no gap"
    assert [f["event"] for f in frames].count("end") == 1 and frames[-1]["event"] == "end"
    assert json.loads(frames[-1]["data"]) == {"status": "succeeded", "last_seq": seqs[-1]}
    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    out = (service.tmp / "watch.log").read_text()
    assert watched == 0 and "succeeded" in out, out
