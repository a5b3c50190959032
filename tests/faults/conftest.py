"""A deployment to break: PostgreSQL, a broker, an API (`moecomp serve`) and workers as separate processes.

Each test gets a fresh database and Celery queue of its own; what it kills (the API, a worker, its own
Redis, a proxy in front of PostgreSQL) is its own, never the shared PostgreSQL or Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.proxy import TcpProxy
from tests.faults.service import Service, upstream
from tests.worker.procs import RedisServer


@pytest.fixture
def service(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Service]:
    """A migrated fresh database, an API key, shared Redis (a db number of its own); nothing started yet."""
    deployment = Service(tmp_path, postgres_url, redis_url)
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def pg_proxy(postgres_url: str) -> Iterator[TcpProxy]:
    """A proxy in front of the shared PostgreSQL, to cut and restore (see service.through)."""
    proxy = TcpProxy(upstream(postgres_url))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
