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

import pytest
import redis

from tests.faults.service import EVALUATION, Service, events_of, runs_started
from tests.worker.procs import RedisServer, wait_job

pytestmark = pytest.mark.slow

# A plain re-export with a small evaluation: a couple of seconds per job, for 7 jobs on one worker.
QUICK = {"stages": []}
QUICK_EVALUATION = {**EVALUATION, "max_tokens": 1024}
FINAL = ("succeeded", "failed", "cancelled")


def test_jobs_survive_a_broker_restart_and_a_broker_outage(service: Service, own_redis: RedisServer, tiny_mixtral_dir):
    service.set(broker_url=own_redis.url, undelivered_after_s="2")
    queue = service.env["MOECOMP_QUEUE"]
    service.start_api()
    with service.client(timeout=30) as client:
        queued = [service.submit(client, tiny_mixtral_dir, QUICK, QUICK_EVALUATION) for _ in range(6)]
        assert redis.Redis.from_url(own_redis.url).llen(queue) == 6  # no worker yet: the messages wait in Redis
        own_redis.kill()
        own_redis.start()  # same port, empty: the 6 messages are gone
        assert redis.Redis.from_url(own_redis.url).llen(queue) == 0

        own_redis.kill()  # the broker down while a job is submitted
        started = time.monotonic()
        while_down = service.submit(client, tiny_mixtral_dir, QUICK, QUICK_EVALUATION)
        answered_s = time.monotonic() - started
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()["broker"]) == (503, False)
        own_redis.start()

        service.worker("worker")
        every = [*queued, while_down]
        ended = [wait_job(client, job_id, lambda j: j["status"] in FINAL, timeout=180) for job_id in every]
        runs = {job_id: runs_started(events_of(client, job_id)) for job_id in every}
    assert answered_s < 5, f"the submission waited {answered_s:.1f} s for the broker"
    assert [(j["status"], j["attempts"]) for j in ended] == [("succeeded", 1)] * 7, service.logs()
    assert all(len(started) == 1 for started in runs.values()), runs  # none ran twice
