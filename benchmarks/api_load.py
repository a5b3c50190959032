"""Load test of the API: many dashboard-like pollers, and a burst of submissions, against a real uvicorn.

Starts uvicorn on loopback (SQLite in a temporary folder, or --database-url PostgreSQL; the embedded broker,
--broker-url, or --private-redis: a redis-server of its own), creates a key and --jobs jobs over HTTP,
then runs --pollers pollers for --duration seconds: each polls one job (GET /v1/jobs/{id}) every
--interval seconds, revalidating with the ETag of its last answer (304 when nothing changed; --no-etag
to fetch whole bodies), and lists GET /v1/jobs?limit=20 every --list-every polls. With --burst N,
--burst-clients connections submit N jobs (POST /v1/jobs) at --burst-at seconds into the run, each
connection its share one after another; then it checks that all N answered 201, that all N are in the
database, and that the Redis queue holds each of them once, every connection's jobs in the order they
were submitted (a connection's next POST leaves only after its last was answered). It prints requests/s,
p50/p95/p99 latency per endpoint and the CPU of the server, the load generator, PostgreSQL and Redis;
--markdown writes the same as a result file.

The pollers speak HTTP/1.1 over asyncio streams (one keep-alive connection each) rather than through
httpx: at 1,000 requests/s httpx's ~2 ms of client CPU per request would alone fill the 2 cores of the
development machine, and the generator's own queueing would be counted as the server's latency.

    .venv/bin/python benchmarks/api_load.py                                   # SQLite, 200 pollers
    .venv/bin/python benchmarks/api_load.py --pollers 1000 --burst 500 --private-redis --workers 2 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench --markdown out.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import httpx
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moecomp.persistence.database import Database  # noqa: E402
from moecomp.persistence.keys import create_api_key  # noqa: E402
from moecomp.persistence.migrate import upgrade  # noqa: E402
from moecomp.persistence.models import Job  # noqa: E402
from moecomp.worker.app import DEFAULT_QUEUE  # noqa: E402
from tests.api.helpers import queued_job_ids  # noqa: E402

JOB_BODY = {"model": {"kind": "local", "path": "tiny-mixtral"}, "recipe": {"stages": []}}
ACTIVE_JOBS_LIMIT = 1_000_000  # the per-team 429 limit, lifted: this measures load, not admission


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "moecomp.api.app:create_app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(cmd, env=env)


def start_redis(port: int) -> subprocess.Popen[bytes]:
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


# --- CPU accounting from /proc: a snapshot {pid: cpu seconds} before and after, summed per role ---


def _proc_stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # the fields after "(comm)"; [1] is ppid, [11:13] utime, stime


def cpu_snapshot(wanted: Callable[[int, int, bytes], bool]) -> dict[int, float]:
    """CPU seconds of every process for which ``wanted(pid, ppid, cmdline)`` holds."""
    tick = os.sysconf("SC_CLK_TCK")
    snapshot = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _proc_stat(int(entry.name))
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if wanted(int(entry.name), int(fields[1]), cmdline):
            snapshot[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    return snapshot


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every process of every user: /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two snapshots (a process that ended in between is not counted)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


@dataclass
class Roles:
    """Which processes count as what: the server (uvicorn and its workers), PostgreSQL backends of the
    benchmark's database (their title names it), the private Redis."""

    server_pid: int
    database: str | None
    redis_pid: int | None

    def snapshot(self) -> dict[str, dict[int, float]]:
        db_title = f" {self.database} ".encode() if self.database else None
        snapshots = {
            "server": cpu_snapshot(lambda pid, ppid, _c: self.server_pid in (pid, ppid)),
            "postgres": cpu_snapshot(
                lambda _p, _pp, c: db_title is not None and c.startswith(b"postgres:") and db_title in c
            ),
        }
        if self.redis_pid:
            snapshots["redis"] = cpu_snapshot(lambda pid, _pp, _c: pid == self.redis_pid)
        return snapshots


# --- the load generator: one keep-alive HTTP/1.1 connection per simulated user ---


class Http1:
    """Just enough HTTP/1.1 for this benchmark: keep-alive, Content-Length bodies (uvicorn sends those)."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"127.0.0.1:{port}", **headers}.items())
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.resent = 0

    async def connect(self) -> None:
        self.streams = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        if body:
            headers += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        message = f"{method} {path} HTTP/1.1\r\n{self.head}{headers}\r\n".encode("latin-1") + body
        reused = self.streams is not None
        try:
            return await self._exchange(message)
        except (OSError, asyncio.IncompleteReadError) as exc:
            # The server closes a keep-alive connection idle for 5 s (uvicorn's default), racing a request
            # sent at that moment. Like browsers, send a GET again once on a new connection when a reused
            # one ends before any answer.
            if method != "GET" or not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            self.resent += 1
            return await self._exchange(message)

    async def _exchange(self, message: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.streams is None:
            await self.connect()
        reader, writer = self.streams  # type: ignore[misc]
        try:
            writer.write(message)
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            fields = dict(line.split(": ", 1) for line in lines[1:] if line)
            answer = {k.lower(): v for k, v in fields.items()}
            length = int(answer.get("content-length", 0))
            content = await reader.readexactly(length) if length else b""
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await self.close()
            raise
        if answer.get("connection") == "close":
            await self.close()
        return int(lines[0].split(" ", 2)[1]), answer, content

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


@dataclass
class Tally:
    """Latencies (s) and errors per endpoint, 304s, the submitted ids per connection, the process's CPU."""

    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    not_modified: int = 0
    resent: int = 0  # GETs sent again after the server closed an idle keep-alive connection
    submitted: list[list[str]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    cpu_s: float = 0.0

    def merge(self, other: Tally) -> None:
        for name, values in other.latency.items():
            self.latency[name] += values
        for name, n in other.errors.items():
            self.errors[name] += n
        self.not_modified += other.not_modified
        self.resent += other.resent
        self.submitted += other.submitted
        self.refusals += other.refusals
        self.cpu_s += other.cpu_s


async def timed_get(conn: Http1, name: str, path: str, etags: dict[str, str] | None, tally: Tally) -> None:
    """One GET, revalidating with the ETag last seen for ``path`` when ``etags`` is given."""
    condition = f"If-None-Match: {etags[path]}\r\n" if etags is not None and path in etags else ""
    t0 = time.perf_counter()
    try:
        status, headers, body = await conn.request("GET", path, headers=condition)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        status, headers, body = 0, {}, repr(exc).encode()
    tally.latency[name].append(time.perf_counter() - t0)
    if status not in (200, 304):
        tally.errors[name] += 1
        tally.refusals.append(f"{name} {status} {body[:200]!r}")
    tally.not_modified += status == 304
    if etags is not None and "etag" in headers:
        etags[path] = headers["etag"]


async def poller(conn: Http1, job_id: str, stop_at: float, args: argparse.Namespace, tally: Tally) -> None:
    """One dashboard-like user: poll the job every ``interval`` s, list the jobs every ``list_every`` polls."""
    await asyncio.sleep(random.random() * args.interval)  # spread the pollers over the first interval
    etags: dict[str, str] | None = None if args.no_etag else {}
    i = random.randrange(args.list_every or 1)  # and their listings over their first polls
    while time.monotonic() < stop_at:
        tick = time.monotonic()
        await timed_get(conn, "poll", f"/v1/jobs/{job_id}", etags, tally)
        if args.list_every and i % args.list_every == 0:
            await timed_get(conn, "list", "/v1/jobs?limit=20", etags, tally)
        i += 1
        await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - tick)))


async def submitter(conn: Http1, n: int, tally: Tally) -> None:
    """``n`` submissions one after another; the ids in the order the server accepted them."""
    body = json.dumps(JOB_BODY).encode()
    ids: list[str] = []
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            status, _headers, content = await conn.request("POST", "/v1/jobs", body)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            status, content = 0, b"connection lost"
        tally.latency["submit"].append(time.perf_counter() - t0)
        if status == 201:
            ids.append(json.loads(content)["id"])
        else:
            tally.errors["submit"] += 1
            tally.refusals.append(f"{status} {content[:200]!r}")
    tally.submitted.append(ids)


@dataclass(frozen=True)
class Share:
    """One generator process's part: pollers of these jobs, and/or burst connections with their counts."""

    port: int
    headers: dict[str, str]
    poll_jobs: list[str]
    burst: list[int]
    start_at: float  # CLOCK_MONOTONIC, shared by the processes of one machine
    stop_at: float


async def _drive(share: Share, args: argparse.Namespace) -> Tally:
    tally = Tally()
    pollers = [Http1(share.port, share.headers) for _ in share.poll_jobs]
    submitters = [Http1(share.port, share.headers) for _ in share.burst]
    await asyncio.gather(*(c.connect() for c in pollers + submitters))  # connected before the clock starts
    await asyncio.sleep(max(0.0, share.start_at - time.monotonic()))
    cpu0 = time.process_time()

    async def burst() -> None:
        await asyncio.sleep(args.burst_at)
        await asyncio.gather(*(submitter(c, n, tally) for c, n in zip(submitters, share.burst, strict=True)))

    work = [poller(c, job, share.stop_at, args, tally) for c, job in zip(pollers, share.poll_jobs, strict=True)]
    await asyncio.gather(*work, *([burst()] if share.burst else []))
    tally.cpu_s = time.process_time() - cpu0
    tally.resent = sum(c.resent for c in pollers)
    await asyncio.gather(*(c.close() for c in pollers + submitters))
    return tally


def drive(share: Share, args: argparse.Namespace) -> Tally:
    return asyncio.run(_drive(share, args))


def split(items: list, parts: int) -> list[list]:  # type: ignore[type-arg]
    return [items[i::parts] for i in range(parts)]


def run_load(port: int, headers: dict[str, str], job_ids: list[str], args: argparse.Namespace, roles: Roles) -> dict:  # type: ignore[type-arg]
    """Pollers spread over ``procs`` processes; the burst's connections go to one more process of their own."""
    polled = [job_ids[i % len(job_ids)] for i in range(args.pollers)]
    counts = [
        args.burst // args.burst_clients + (i < args.burst % args.burst_clients) for i in range(args.burst_clients)
    ]
    start_at = time.monotonic() + 5 + args.pollers / 200  # for the processes to start and connect
    stop_at = start_at + args.duration
    shares = [Share(port, headers, jobs, [], start_at, stop_at) for jobs in split(polled, args.procs)]
    if args.burst:
        shares.append(Share(port, headers, [], [n for n in counts if n], start_at, stop_at))
    uptime_before = os.getloadavg()
    with ProcessPoolExecutor(len(shares), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(drive, share, args) for share in shares]
        time.sleep(max(0.0, start_at - time.monotonic()))
        cpu0, machine0, t0 = roles.snapshot(), machine_busy_s(), time.monotonic()
        tally = Tally()
        for future in futures:
            tally.merge(future.result())
        cpu1, machine1, elapsed = roles.snapshot(), machine_busy_s(), time.monotonic() - t0
    cpu = {role: cpu_used(cpu0[role], cpu1[role]) for role in cpu0}
    cpu["whole machine"] = machine1[0] - machine0[0]
    # Per server process: uvicorn's workers share one listening socket, and 1,000 connections opened at once
    # need not be spread evenly; a worker holding most of them is capped at one core by its GIL.
    per_process = sorted((cpu - cpu0["server"].get(pid, 0.0) for pid, cpu in cpu1["server"].items()), reverse=True)
    return {
        "tally": tally,
        "cpu": cpu,
        "server_processes": per_process,
        "elapsed": elapsed,  # the run plus its last answers: what CPU seconds are divided by for "cores"
        "load_before": uptime_before,
        "load_after": os.getloadavg(),
    }


def pg_sessions(db: Database) -> int | None:
    """Connections PostgreSQL has accepted to this database so far (None on SQLite): pool churn shows here."""
    if db.engine.dialect.name != "postgresql":
        return None
    with db.engine.connect() as conn:
        query = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        return int(conn.exec_driver_sql(query).scalar_one())


# --- checks on the burst: the database and the Redis queue ---


def check_burst(db: Database, redis_url: str | None, submitted: list[list[str]], expected: int) -> list[str]:
    """What was checked and how it came out, one line each, prefixed OK or FAIL."""
    every = [job for ids in submitted for job in ids]
    with db.session() as session:
        stored = session.scalar(select(func.count()).select_from(Job).where(Job.id.in_(every))) or 0
        by_time = list(session.scalars(select(Job.id).where(Job.id.in_(every)).order_by(Job.created_at, Job.id)))
    lines = [_verdict(len(every) == expected, f"{len(every)} of {expected} submissions answered 201")]
    lines.append(_verdict(stored == expected, f"{stored} of {expected} submitted jobs in the database"))
    if redis_url is None:
        return lines + ["-- queue order not checked (no Redis broker)"]
    queued = [job for job in queued_job_ids(redis_url, DEFAULT_QUEUE) if job in set(every)]
    lines.append(
        _verdict(len(queued) == len(set(queued)) == expected, f"{len(queued)} of {expected} queued, once each")
    )
    position = {job: i for i, job in enumerate(queued)}
    in_order = all([position.get(j, -1) for j in ids] == sorted(position.get(j, -1) for j in ids) for ids in submitted)
    lines.append(_verdict(in_order, f"each of {len(submitted)} connections' jobs queued in submission order"))
    # Across connections the requests race: the order they were stored in (created_at, taken under the team's
    # lock) and the order of the queue (sent after the commit) may differ by neighbours swapping places.
    swapped = sum(position[a] > position[b] for a, b in pairwise(by_time) if a in position and b in position)
    lines.append(
        f"-- across connections: {swapped} of {len(by_time) - 1} neighbours in created_at order queued swapped"
    )
    return lines


def _verdict(ok: bool, text: str) -> str:
    return f"{'OK  ' if ok else 'FAIL'} {text}"


# --- report ---


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def report_lines(result: dict, args: argparse.Namespace, seconds: float) -> list[str]:  # type: ignore[type-arg]
    tally: Tally = result["tally"]
    rows = ["| endpoint | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | errors |", "|---" * 8 + "|"]
    everything = [v for values in tally.latency.values() for v in values]
    for name, values in sorted(tally.latency.items()) + [("all", everything)]:
        if not values:
            continue
        n_err = sum(tally.errors.values()) if name == "all" else tally.errors[name]
        rows.append(
            f"| {name} | {len(values)} | {len(values) / seconds:.1f} | {pct(values, 0.5):.1f} "
            f"| {pct(values, 0.95):.1f} | {pct(values, 0.99):.1f} | {max(values) * 1000:.1f} | {n_err} |"
        )
    n = len(everything)
    machine = result["cpu"]["whole machine"]  # everyone's processes, not only the benchmark's
    cpu = {**{k: v for k, v in result["cpu"].items() if k != "whole machine"}, "generator": tally.cpu_s}
    cpu["whole machine"] = machine
    per_request = ", ".join(f"{role} {1000 * s / n:.2f}" for role, s in cpu.items())
    cores = ", ".join(f"{role} {s / result['elapsed']:.2f}" for role, s in cpu.items())
    polls = len(tally.latency["poll"]) + len(tally.latency["list"])
    return [
        *rows,
        "",
        f"- 304 Not Modified: {tally.not_modified} of {polls} polls and listings"
        + (" (--no-etag: whole bodies)" if args.no_etag else "")
        + f"; {tally.resent} sent again on a new connection (the server had closed the idle one)",
        f"- CPU ms per request: {per_request}",
        f"- cores busy on average: {cores} (of {os.cpu_count()}, shared); server processes "
        + " / ".join(f"{s / result['elapsed']:.2f}" for s in result["server_processes"])
        + f" (over {result['elapsed']:.1f} s: the run and its last answers)",
        f"- load average before {_load(result['load_before'])}, after {_load(result['load_after'])}",
        *(
            [
                f"- PostgreSQL connections opened during the run: {result['pg_sessions']} (postgres CPU counts the "
                "backends still open at the end: those closed meanwhile took theirs along, so it is a lower bound)"
            ]
            if "pg_sessions" in result
            else []
        ),
    ]


def _load(avg: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in avg)


def write_markdown(path: Path, command: str, setup: str, lines: list[str], checks: list[str]) -> None:
    text = [f"## `{command}`", "", setup, "", *lines, ""]
    if checks:
        text += ["Checks and error samples:", "", *(f"- {line}" for line in checks), ""]
    path.write_text("\n".join(text))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default="", help="default: SQLite in a temporary folder")
    parser.add_argument("--broker-url", default="", help="default: the embedded SQLite broker")
    parser.add_argument("--private-redis", action="store_true", help="start a redis-server of its own as broker")
    parser.add_argument("--pollers", "--clients", type=int, default=200, help="concurrent pollers")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between a poller's polls")
    parser.add_argument("--no-etag", action="store_true", help="poll without If-None-Match")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--list-every", type=int, default=10, help="list jobs every N polls (0: never)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--jobs", type=int, default=50, help="jobs made before the run, polled round robin")
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes sharing the pollers")
    parser.add_argument("--burst", type=int, default=0, help="submissions in the burst (0: none)")
    parser.add_argument("--burst-clients", type=int, default=50, help="connections sharing the burst")
    parser.add_argument("--burst-at", type=float, default=5.0, help="seconds into the run the burst starts")
    parser.add_argument("--markdown", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.burst and not (args.broker_url.startswith("redis") or args.private_redis):
        parser.error("--burst checks the Redis queue: pass --private-redis or a redis:// --broker-url")
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="moecomp-load-") as tmp:
        redis_proc = start_redis(redis_port := free_port()) if args.private_redis else None
        broker = f"redis://127.0.0.1:{redis_port}/0" if redis_proc else args.broker_url
        env = {
            **os.environ,
            "MOECOMP_DATA_DIR": tmp,
            "MOECOMP_DATABASE_URL": args.database_url,
            "MOECOMP_BROKER_URL": broker,
            "MOECOMP_MAX_ACTIVE_JOBS_PER_TEAM": str(ACTIVE_JOBS_LIMIT),
        }
        url = args.database_url or f"sqlite:///{Path(tmp).resolve() / 'moecomp.db'}"
        upgrade(url)
        db = Database(url)
        with db.session() as session:
            headers = {"Authorization": f"Bearer {create_api_key(session, f'load-{os.getpid()}')}"}
        port = free_port()
        server = start_server(env, port, args.workers)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base)
            job_ids = [
                httpx.post(f"{base}/v1/jobs", json=JOB_BODY, headers=headers, timeout=30).json()["id"]
                for _ in range(args.jobs)
            ]
            setup = (
                f"{args.pollers} pollers every {args.interval:g} s (a listing every {args.list_every} polls) for "
                f"{args.duration:g} s, a burst of {args.burst} submissions over {args.burst_clients} connections at "
                f"{args.burst_at:g} s; {url.split(':')[0]}, broker {broker.split(':')[0] or 'embedded'}, "
                f"{args.workers} uvicorn worker(s), {args.procs}+{bool(args.burst):d} generator processes, "
                f"{os.cpu_count()} CPUs (shared); per-team active-job limit {ACTIVE_JOBS_LIMIT}"
            )
            print(setup)
            roles = Roles(
                server.pid,
                url.rsplit("/", 1)[-1] if url.startswith("postgresql") else None,
                redis_proc and redis_proc.pid,
            )
            sessions0 = pg_sessions(db)
            result = run_load(port, headers, job_ids, args, roles)
            if sessions0 is not None:
                result["pg_sessions"] = (pg_sessions(db) or 0) - sessions0
            lines = report_lines(result, args, args.duration)
            checks = (
                check_burst(db, broker if broker.startswith("redis") else None, result["tally"].submitted, args.burst)
                if args.burst
                else []
            )
            for refusal in sorted(set(result["tally"].refusals))[:5]:
                checks.append(f"error sample: {refusal}")
            print("\n".join(lines + [""] + checks))
            if args.markdown:
                argv = sys.argv[1:]
                at = argv.index("--markdown") if "--markdown" in argv else len(argv)
                command = " ".join(["api_load.py", *argv[:at], *argv[at + 2 :]])
                write_markdown(args.markdown, command, setup, lines, checks)
        finally:
            db.engine.dispose()
            server.terminate()
            server.wait(timeout=30)
            if redis_proc:
                redis_proc.terminate()
                redis_proc.wait(timeout=30)


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


if __name__ == "__main__":
    main()
