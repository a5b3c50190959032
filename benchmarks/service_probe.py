"""Helpers of benchmarks/real_size_service.sh: sample peak GPU memory and disk use, wait for the service, fetch a
job's record, and write the run's summary.json. Standard library and moecomp's client only (no torch).

    service_probe.py sample --data-dir D --results R     # until SIGTERM: R/gpu_peak.txt, R/disk_peak.txt
    service_probe.py wait-ready --timeout 900 [--pid P]  # /readyz 200 (database, broker and a live worker)
    service_probe.py record JOB --results R              # R/job.json, R/events.json, R/artifacts.json
    service_probe.py summary --work W --results R        # R/summary.json from everything above

The client commands read MOECOMP_URL and the key as `moecomp status` does (MOECOMP_KEY or the data dir's key).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from moecomp.cli.client import DEFAULT_URL, connect

GIB = 2**30
RSS_KEYS = ("peak_rss_gib", "peak_rss_anon_gib", "ru_maxrss_gib", "seconds", "returncode")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def gpu_used_mib() -> int | None:
    """Memory in use on all GPUs together (nvidia-smi), in MiB; None without a GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        return sum(int(float(v)) for v in out.split())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def tree_bytes(root: Path) -> int:
    """Allocated bytes under ``root`` (du's figure: blocks, not apparent sizes); files may vanish meanwhile."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                continue
    return total


class Peaks:
    """The largest value of each named figure seen so far, written as 'name value' lines after every sample."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.values, self.samples = path, dict(header), 0

    def see(self, **figures: int | None) -> None:
        self.samples += 1
        for name, value in figures.items():
            if value is not None and value > self.values.get(name, -1):
                self.values[name] = value
        lines = [f"{k} {v}" for k, v in {**self.values, "samples": self.samples}.items()]
        _write_atomic(self.path, "\n".join(lines) + "\n")


def sample(args: argparse.Namespace) -> int:
    """GPU memory in use every interval; the data dir's size and / 's used bytes every disk_every seconds."""
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    args.results.mkdir(parents=True, exist_ok=True)
    gpu = Peaks(args.results / "gpu_peak.txt", {"gpu_used_mib_at_start": gpu_used_mib()})
    disk = Peaks(
        args.results / "disk_peak.txt",
        {"data_dir": args.data_dir, "root_used_bytes_at_start": shutil.disk_usage("/").used},
    )
    next_disk = 0.0
    while not stop["now"]:
        gpu.see(peak_gpu_used_mib=gpu_used_mib())
        if time.monotonic() >= next_disk:
            data = tree_bytes(args.data_dir) if args.data_dir.exists() else 0
            disk.see(peak_data_dir_bytes=data, peak_root_used_bytes=shutil.disk_usage("/").used)
            next_disk = time.monotonic() + args.disk_every
        time.sleep(args.interval)
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_ready(args: argparse.Namespace) -> int:
    url = os.environ.get("MOECOMP_URL", DEFAULT_URL).rstrip("/") + "/readyz"
    deadline, last = time.monotonic() + args.timeout, "no answer yet"
    while time.monotonic() < deadline:
        if args.pid and not _alive(args.pid):  # serve died (a missing package, a taken port): say so at once
            print(f"serve (pid {args.pid}) exited before it was ready: {last}", file=sys.stderr)
            return 1
        try:
            response = httpx.get(url, timeout=10)
            if response.status_code == 200:
                print(f"ready: {response.text}", flush=True)
                return 0
            last = f"{response.status_code} {response.text}"
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(2)
    print(f"not ready after {args.timeout} s: {last}", file=sys.stderr)
    return 1


def record(args: argparse.Namespace) -> int:
    """The job, all its events and its artifact list, as the API returns them."""
    with connect() as client:
        job = client.get(f"/v1/jobs/{args.job}").raise_for_status().json()
        events, after = [], 0
        while True:
            page = client.get(f"/v1/jobs/{args.job}/events", params={"after": after, "limit": 500})
            items = page.raise_for_status().json()["items"]
            if not items:
                break
            events += items
            after = items[-1]["seq"]
        artifacts = client.get(f"/v1/jobs/{args.job}/artifacts").raise_for_status().json()["items"]
    for name, value in (("job", job), ("events", events), ("artifacts", artifacts)):
        (args.results / f"{name}.json").write_text(json.dumps(value, indent=2) + "\n")
    print(f"job {job['id']} {job['status']}: {len(events)} events, {len(artifacts)} artifacts")
    return 0


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def phase_seconds(job: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall time of the job's phases (queue, compress, evaluate, artifacts) and span of every stage, from events."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for event in events:
        stage, t = event.get("stage") or "-", _time(event["time"])
        first.setdefault(stage, t)
        last[stage] = t
    start = _time(job["started_at"]) if job.get("started_at") else None
    end = _time(job["finished_at"]) if job.get("finished_at") else None
    marks = [("compress", start), ("evaluate", first.get("evaluate")), ("artifacts", first.get("artifacts"))]
    marks = [(name, t) for name, t in marks if t is not None] + [("end", end)]
    phases = {
        name: round(marks[i + 1][1] - t, 1) for i, (name, t) in enumerate(marks[:-1]) if marks[i + 1][1] is not None
    }
    return {
        "queued": round(start - _time(job["created_at"]), 1) if start else None,
        "run": round(end - start, 1) if start and end else None,
        "phases": phases,
        "stage_spans": {stage: round(last[stage] - first[stage], 1) for stage in first},
        "evaluate_steps": evaluate_steps(events),
    }


def evaluate_steps(events: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds of each evaluation measurement: from the previous evaluate event to its progress event."""
    out: dict[str, float] = {}
    previous = None
    for event in events:
        if event.get("stage") != "evaluate":
            continue
        t, data = _time(event["time"]), event.get("data") or {}
        if event["kind"] == "progress" and previous is not None and data.get("measurement"):
            key = f"{data.get('model')}:{data['measurement']}:{data.get('name')}"
            out[key] = round(out.get(key, 0.0) + t - previous, 1)
        previous = t
    return out


def read_peaks(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    pairs = (line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)
    return {k: int(v) if v.lstrip("-").isdigit() else v for k, v in pairs}


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def speed_figures(report: dict[str, Any] | None) -> dict[str, Any]:
    """Both runtimes' throughput and peak memory of both models, and the report's speed-ups."""
    if not report:
        return {}
    out: dict[str, Any] = {"speedup": report.get("speedup"), "device": report.get("device")}
    for role in ("baseline", "candidate"):
        speed = (report.get(role) or {}).get("speed") or {}
        runtimes = {"eager": speed, "served": speed.get("served") or {}}
        out[role] = {
            name: {k: figures.get(k) for k in ("prefill_tok_s", "decode_tok_s", "peak_memory_gib", "rss_gib")}
            for name, figures in runtimes.items()
            if figures
        }
    return out


def quality(report: dict[str, Any] | None) -> dict[str, Any]:
    """Perplexity of both models, the candidate's fidelity to the original, and the gate."""
    if not report:
        return {}
    ppl = {}
    for role in ("baseline", "candidate"):
        sources = (report.get(role) or {}).get("perplexity") or {}
        ppl[role] = {source: figures["ppl"] for source, figures in sources.items()}
    fidelity = report.get("fidelity") or {}
    kl, top1 = fidelity.get("kl_mean"), fidelity.get("top1_agreement")
    return {"perplexity": ppl, "kl_mean": kl, "top1_agreement": top1, "gate": report.get("gate")}


def summary(args: argparse.Namespace) -> int:
    r, w = args.results, args.work
    job, events = _load(r / "job.json") or {}, _load(r / "events.json") or []
    artifacts = {a["kind"]: a for a in _load(r / "artifacts.json") or []}
    rss, manifest, report = _load(r / "rss.json") or {}, _load(r / "moecomp.json") or {}, _load(r / "report.json")
    timings = read_peaks(w / "timings.txt")  # "name seconds" lines from the script
    timings_of = manifest.get("timings") or {}
    passes = timings_of.get("passes") or []
    checkpoint = artifacts.get("checkpoint") or {}
    sha_file = w / "checkpoint.sha256"
    local_sha = sha_file.read_text().strip() if sha_file.is_file() else None
    out = {
        "job": {k: job.get(k) for k in ("id", "status", "error", "attempts", "worker", "stage", "progress")},
        "wall_s": {**timings, **(phase_seconds(job, events) if job else {}), "manifest_timings": timings_of},
        "host_rss": {k: rss.get(k) for k in RSS_KEYS},
        "gpu": gpu_figures(read_peaks(r / "gpu_peak.txt"), passes),
        "disk": disk_figures(read_peaks(r / "disk_peak.txt"), checkpoint),
        "speed": speed_figures(report),
        "quality": quality(report),
        "checkpoint_sha256": {
            "api": checkpoint.get("sha256"),
            "local": local_sha,
            "match": bool(local_sha) and local_sha == checkpoint.get("sha256"),
        },
    }
    _write_atomic(r / "summary.json", json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


def gpu_figures(gpu: dict[str, Any], passes: list[dict[str, Any]]) -> dict[str, Any]:
    """nvidia-smi's peak in use (the sampler) and torch's peak allocated per compression pass (the manifest)."""
    used, at_start = gpu.get("peak_gpu_used_mib"), gpu.get("gpu_used_mib_at_start")
    return {
        "peak_used_gib": round(used / 1024, 2) if isinstance(used, int) else None,
        "used_at_start_gib": round(at_start / 1024, 2) if isinstance(at_start, int) else None,
        "per_pass_peak_allocated_gib": [p.get("peak_gpu_gib") for p in passes],
    }


def disk_figures(disk: dict[str, Any], checkpoint: dict[str, Any]) -> dict[str, Any]:
    size = checkpoint.get("bytes")
    peak_data = disk.get("peak_data_dir_bytes")
    root_peak, root_start = disk.get("peak_root_used_bytes"), disk.get("root_used_bytes_at_start")
    root_delta = root_peak - root_start if isinstance(root_peak, int) and isinstance(root_start, int) else None
    return {
        "data_dir": disk.get("data_dir"),
        "peak_data_dir_gib": round(peak_data / GIB, 3) if peak_data is not None else None,
        "peak_root_used_increase_gib": round(root_delta / GIB, 3) if root_delta is not None else None,
        "output_checkpoint_gib": round(size / GIB, 3) if size else None,
        "peak_data_dir_over_output": round(peak_data / size, 3) if size and peak_data else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between GPU samples")
    p.add_argument("--disk-every", type=float, default=5.0, help="seconds between disk samples")
    p.set_defaults(func=sample)
    p = sub.add_parser("wait-ready")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--pid", type=int, help="give up as soon as this process (serve) has exited")
    p.set_defaults(func=wait_ready)
    p = sub.add_parser("record")
    p.add_argument("job")
    p.add_argument("--results", type=Path, required=True)
    p.set_defaults(func=record)
    p = sub.add_parser("summary")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True)
    p.set_defaults(func=summary)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
