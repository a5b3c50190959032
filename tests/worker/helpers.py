"""Small helpers shared by the worker tests (fixtures live in conftest.py)."""

from __future__ import annotations

from moecomp.persistence.database import Database
from moecomp.persistence.models import Job

EVAL_SMALL = {"perplexity": ["bundled:heldout"], "seq_len": 128, "max_tokens": 2048, "fidelity": False}


def get_job(db: Database, job_id: str) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job
