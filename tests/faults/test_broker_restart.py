"""The broker (a Redis of the test's own, without persistence) loses its queue, or is down at submission.

The database is the source of truth: jobs stored `queued` whose message the broker lost are sent again by
the reaper (settings.undelivered_after_s), and the atomic claim makes every extra copy a no-op. So every job
ends succeeded, once: attempts == 1 and one run start in its events.

A submission while the broker is down is accepted (201): the job is committed before it is sent, so it is
kept, queued, and the reaper sends it once the broker is back. Refusing with 503 would turn a broker outage
into an outage of the API for no gain: the job is safe in the database either way.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.faults.service import EVALUATION, Service, events_of, runs_started
from tests.worker.procs import RedisServer, wait_job

pytestmark = pytest.mark.slow

# A plain re-export with a small evaluation: a couple of seconds per job, for 4 jobs on one worker. Three lost
# messages are enough: the last job waits for two others, well past undelivered_after_s, and is sent again meanwhile.
QUICK = {"stages": []}
QUICK_EVALUATION = {**EVALUATION, "max_tokens": 1024}
FINAL = ("succeeded", "failed", "cancelled")


def run_to_the_end(service: Service, client: httpx.Client, job_ids: list[str]) -> list[tuple[str, int, int]]:
    """Start a worker; (status, attempts, runs started) of each job once all have ended."""
    service.worker("worker")
    ended = [wait_job(client, job_id, lambda j: j["status"] in FINAL, timeout=180) for job_id in job_ids]
    return [(j["status"], j["attempts"], len(runs_started(events_of(client, j["id"])))) for j in ended]


def test_jobs_queued_in_a_broker_that_restarts_empty_run_once(
    service: Service, own_redis: RedisServer, tiny_mixtral_dir: Path
):
    service.set(broker_url=own_redis.url, undelivered_after_s="2")
    queue = service.env["MOECOMP_QUEUE"]
    service.start_api()
    with service.client(timeout=30) as client:
        job_ids = [service.submit(client, tiny_mixtral_dir, QUICK, QUICK_EVALUATION) for _ in range(3)]
        assert redis.Redis.from_url(own_redis.url).llen(queue) == 3  # no worker yet: the messages wait in Redis
        own_redis.kill()
        own_redis.start()  # same port, empty: the 3 messages are gone
        assert redis.Redis.from_url(own_redis.url).llen(queue) == 0
        ended = run_to_the_end(service, client, job_ids)
    # The reaper sends them again, more than once while they wait for the one worker: each runs once.
    assert ended == [("succeeded", 1, 1)] * 3, service.logs()


def test_a_job_submitted_while_the_broker_is_down_is_kept_and_sent_once_it_is_back(
    service: Service, own_redis: RedisServer, tiny_mixtral_dir: Path
):
    service.set(broker_url=own_redis.url)  # undelivered_after_s stays 300 s: the failed send itself is marked
    service.start_api()
    with service.client(timeout=30) as client:
        own_redis.kill()
        started = time.monotonic()
        job_id = service.submit(client, tiny_mixtral_dir, QUICK, QUICK_EVALUATION)
        answered_s = time.monotonic() - started
        queued = client.get(f"/v1/jobs/{job_id}").json()
        ready = client.get("/readyz")
        own_redis.start()
        ended = run_to_the_end(service, client, [job_id])
    assert answered_s < 5, f"the submission waited {answered_s:.1f} s for the broker"
    assert queued["status"] == "queued" and (ready.status_code, ready.json()["broker"]) == (503, False)
    assert ended == [("succeeded", 1, 1)], service.logs()
