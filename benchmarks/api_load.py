"""Load test of the API: many dashboard-like clients polling one job, against a real uvicorn.

Starts uvicorn on loopback (SQLite in a temporary folder, or --database-url PostgreSQL), creates a key
and a job over HTTP, then runs --clients async httpx clients for --duration seconds; each polls
GET /v1/jobs/{id} once a second and lists GET /v1/jobs every --list-every polls. Prints requests/s
and latency percentiles per endpoint.

    .venv/bin/python benchmarks/api_load.py                                   # SQLite
    .venv/bin/python benchmarks/api_load.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

from moecomp.persistence.database import Database
from moecomp.persistence.keys import create_api_key
from moecomp.persistence.migrate import upgrade


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "moecomp.api.app:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return subprocess.Popen(cmd, env=env)


def _proc_stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # the fields after "(comm)"; [1] is ppid, [11:13] utime, stime


def server_cpu_s(pid: int) -> float:
    """CPU seconds used by the server process and its direct children (uvicorn workers), from /proc."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _proc_stat(int(entry.name))
        except (OSError, ValueError):
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def wait_ready(base: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start")


async def client_loop(
    client: httpx.AsyncClient,
    job_id: str,
    stop_at: float,
    list_every: int,
    out: dict[str, list[float]],
    errors: dict[str, int],
) -> None:
    """One dashboard-like user: poll the job once a second, list the jobs every ``list_every`` polls."""
    await asyncio.sleep(random.random())  # spread the clients over the first second
    i = 0
    while time.monotonic() < stop_at:
        tick = time.monotonic()
        targets = [("get_job", f"/v1/jobs/{job_id}")]
        if list_every and i % list_every == 0:
            targets.append(("list_jobs", "/v1/jobs?limit=20"))
        for name, path in targets:
            t0 = time.perf_counter()
            try:
                ok = (await client.get(path)).status_code == 200
            except httpx.HTTPError:
                ok = False
            out[name].append(time.perf_counter() - t0)
            errors[name] += not ok
        i += 1
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def report(out: dict[str, list[float]], errors: dict[str, int], seconds: float) -> None:
    everything = [v for values in out.values() for v in values]
    print(
        f"{'endpoint':<10} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} errors"
    )
    for name, values in sorted(out.items()) + [("all", everything)]:
        n_err = sum(errors.values()) if name == "all" else errors[name]
        print(
            f"{name:<10} {len(values):>8} {len(values) / seconds:>7.1f} {pct(values, 0.5):>7.1f} "
            f"{pct(values, 0.9):>7.1f} {pct(values, 0.99):>7.1f} {max(values) * 1000:>7.1f} {n_err}"
        )
    print(f"mean {statistics.mean(everything) * 1000:.1f} ms; load average {os.getloadavg()}")


async def _drive(  # noqa: ANN202
    base: str, headers: dict[str, str], job_id: str, n_clients: int, start_at: float, stop_at: float, list_every: int
):
    out: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    # One client (one keep-alive connection) per simulated user, built before the clock starts;
    # verify=False skips loading the CA bundle, tens of ms per client (this is plain HTTP anyway).
    clients = [httpx.AsyncClient(base_url=base, headers=headers, timeout=10, verify=False) for _ in range(n_clients)]
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    cpu0 = time.process_time()
    try:
        await asyncio.gather(*(client_loop(c, job_id, stop_at, list_every, out, errors) for c in clients))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return dict(out), dict(errors), time.process_time() - cpu0


def drive(  # noqa: ANN201
    base: str, headers: dict[str, str], job_id: str, n_clients: int, start_at: float, stop_at: float, list_every: int
):
    """One load-generator process: its share of the clients from ``start_at`` to ``stop_at`` (CLOCK_MONOTONIC)."""
    return asyncio.run(_drive(base, headers, job_id, n_clients, start_at, stop_at, list_every))


def run_load(base: str, headers: dict[str, str], job_id: str, args: argparse.Namespace, server_pid: int) -> None:
    # Several generator processes: on a shared machine one Python process cannot issue 200 req/s on time,
    # and its own queueing would be counted as the server's latency.
    shares = [args.clients // args.procs + (i < args.clients % args.procs) for i in range(args.procs)]
    cpu0 = server_cpu_s(server_pid)
    stop_at = time.monotonic() + 3 + args.duration  # 3 s for the processes to start and build their clients
    with ProcessPoolExecutor(args.procs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(drive, base, headers, job_id, n, stop_at - args.duration, stop_at, args.list_every)
            for n in shares
        ]
        results = [f.result() for f in futures]
    out: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    for part_out, part_errors, _cpu in results:
        for name, values in part_out.items():
            out[name] += values
        for name, n in part_errors.items():
            errors[name] += n
    report(out, errors, args.duration)
    # CPU per request is the figure that survives a shared machine: latency depends on who else runs.
    n = sum(len(v) for v in out.values())
    client_cpu = sum(cpu for _out, _err, cpu in results)
    print(
        f"server CPU {1000 * (server_cpu_s(server_pid) - cpu0) / n:.2f} ms/request, "
        f"load generator CPU {1000 * client_cpu / n:.2f} ms/request ({args.procs} processes)"
    )


def server_side_latency(base: str) -> None:
    """Where the time goes: the server's own time to first byte, from its /metrics histogram."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    text = httpx.get(f"{base}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name != "moecomp_http_request_duration_seconds":
            continue
        buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels["method"] == "GET":
                buckets[sample.labels["route"]].append((float(sample.labels["le"]), sample.value))
        for route, pairs in sorted(buckets.items()):
            pairs.sort()
            total = pairs[-1][1]
            if total < 10:
                continue
            p50 = next(le for le, n in pairs if n >= 0.5 * total)
            p99 = next(le for le, n in pairs if n >= 0.99 * total)
            print(f"server-side {route}: {total:.0f} requests, p50 <= {p50 * 1000:g} ms, p99 <= {p99 * 1000:g} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default="", help="default: SQLite in a temporary folder")
    parser.add_argument("--broker-url", default="", help="default: the embedded SQLite broker")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--list-every", type=int, default=10, help="list jobs every N polls (0: never)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--jobs", type=int, default=50, help="jobs in the team's table (listing reads 20)")
    parser.add_argument("--procs", type=int, default=4, help="load-generator processes sharing the clients")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="moecomp-load-") as tmp:
        env = {
            **os.environ,
            "MOECOMP_DATA_DIR": tmp,
            "MOECOMP_DATABASE_URL": args.database_url,
            "MOECOMP_BROKER_URL": args.broker_url,
        }
        url = args.database_url or f"sqlite:///{Path(tmp).resolve() / 'moecomp.db'}"
        upgrade(url)
        db = Database(url)
        with db.session() as session:
            headers = {"Authorization": f"Bearer {create_api_key(session, f'load-{os.getpid()}')}"}
        db.engine.dispose()
        port = free_port()
        server = start_server(env, port, args.workers)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base)
            body = {"model": {"kind": "local", "path": "tiny-mixtral"}, "recipe": {"stages": []}}
            job_ids = [
                httpx.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=30).json()["id"]
                for _ in range(args.jobs)
            ]
            print(
                f"{args.clients} clients x {args.duration:.0f} s on {url.split(':')[0]}, "
                f"{args.workers} uvicorn worker(s), {os.cpu_count()} CPUs (shared)"
            )
            run_load(base, headers, job_ids[-1], args, server.pid)
            server_side_latency(base)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
