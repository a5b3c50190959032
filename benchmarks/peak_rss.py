"""Run a command and record its peak memory: host RSS of its whole process tree, and GPU memory used.

Samples the summed VmRSS of the child and all its descendants (from /proc) every 0.2 s, and apart the anonymous
part of it (RssAnon: VmRSS also counts pages of files the processes map, e.g. a model read from /dev/shm), takes
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the largest single waited-for process) at the end, and, where
``nvidia-smi`` exists, samples the memory used on every GPU (summed) once a second. Writes {"cmd", "seconds",
"peak_rss_gib", "peak_rss_anon_gib", "ru_maxrss_gib", "peak_gpu_used_gib", "returncode"} to --out, prints it,
and exits with the child's return code. No dependencies beyond the standard library; Linux only.

    python benchmarks/peak_rss.py --out /tmp/rss.json -- python -c "x = bytearray(2**30)"
    python benchmarks/peak_rss.py --out results/compress.json -- moecomp compress --recipe r.yaml ...
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RSS_INTERVAL_S = 0.2
GPU_INTERVAL_S = 1.0
GIB = 2**30


def children_map() -> dict[int, list[int]]:
    """parent pid -> child pids, for every process visible in /proc."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended meanwhile
        fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def descendants(root: int) -> list[int]:
    tree, found, stack = children_map(), [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(tree.get(pid, []))
    return found


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (or another /proc status field in kB, e.g. RssAnon) of one process in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree_rss_bytes(root: int, field: str = "VmRSS") -> int:
    return sum(rss_bytes(pid, field) for pid in descendants(root))


def gpu_used_bytes(smi: str) -> int | None:
    """Memory used on all GPUs together, per nvidia-smi; None when it fails."""
    try:
        result = subprocess.run(
            [smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return sum(int(float(v)) for v in result.stdout.split()) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


class Sampler(threading.Thread):
    """Calls probe() every interval seconds until stopped, keeping the largest value seen."""

    def __init__(self, probe: Callable[[], int | None], interval: float) -> None:
        super().__init__(daemon=True)
        self.probe, self.interval = probe, interval
        self.peak: int | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            self.sample()
            if self.stopped.wait(self.interval):
                return

    def sample(self) -> None:
        value = self.probe()
        if value is not None and (self.peak is None or value > self.peak):
            self.peak = value

    def stop(self) -> int | None:
        self.stopped.set()
        self.join()
        return self.peak


def measure(cmd: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    child = subprocess.Popen(cmd)
    rss = Sampler(lambda: tree_rss_bytes(child.pid), RSS_INTERVAL_S)
    anon = Sampler(lambda: tree_rss_bytes(child.pid, "RssAnon"), RSS_INTERVAL_S)
    smi = shutil.which("nvidia-smi")
    gpu = Sampler(lambda: gpu_used_bytes(smi), GPU_INTERVAL_S) if smi else None
    for sampler in (rss, anon, gpu):
        if sampler:
            sampler.start()
    try:
        returncode = child.wait()
    except KeyboardInterrupt:
        child.terminate()
        returncode = child.wait()
    seconds = time.perf_counter() - start
    peak_rss, peak_anon, peak_gpu = rss.stop(), anon.stop(), gpu.stop() if gpu else None
    ru_maxrss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return {
        "cmd": cmd,
        "seconds": round(seconds, 3),
        "peak_rss_gib": round((peak_rss or 0) / GIB, 4),
        "peak_rss_anon_gib": round((peak_anon or 0) / GIB, 4),
        "ru_maxrss_gib": round(ru_maxrss_kib * 1024 / GIB, 4),
        "peak_gpu_used_gib": None if peak_gpu is None else round(peak_gpu / GIB, 4),
        "returncode": returncode,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    args = parser.parse_args(argv)
    if args.cmd[:1] == ["--"]:
        args.cmd = args.cmd[1:]
    if not args.cmd:
        parser.error("no command given (put it after --)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = measure(args.cmd)
    except OSError as exc:  # not found, not executable
        print(f"peak_rss: cannot run {args.cmd[0]}: {exc}", file=sys.stderr)
        return 127
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    returncode: int = result["returncode"]
    return returncode if returncode >= 0 else 128 - returncode  # killed by a signal: the shell's convention


if __name__ == "__main__":
    sys.exit(main())
