"""Many concurrent requests never exhaust the connection pool for good (the thread-pool/pool deadlock)."""

from __future__ import annotations

import asyncio

import httpx
from fastapi.testclient import TestClient

from tests.api.helpers import job_body


def test_more_concurrent_requests_than_threads_and_connections_all_succeed(
    client: TestClient, auth: dict[str, str]
) -> None:
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    app = client.app

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=auth) as http:
            paths = [f"/v1/jobs/{job_id}" if i % 4 else "/v1/jobs?limit=5" for i in range(160)]
            responses = await asyncio.wait_for(asyncio.gather(*(http.get(p) for p in paths)), timeout=60)
        return [r.status_code for r in responses]

    # 160 requests in flight against 40 threads and at most 40 (SQLite) / 30 (PostgreSQL) connections.
    assert asyncio.run(burst()) == [200] * 160
