"""Client commands over the HTTP API: submit, status, watch, download, delete.

They read MOECOMP_URL (default http://127.0.0.1:8000) and MOECOMP_KEY (default: the embedded mode's
key file, data_dir/local-key). Only httpx, yaml and tqdm are imported: no torch in a client.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from moecomp.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL = {"succeeded", "failed", "cancelled"}
RECONNECT_S = 1.0


class ClientError(Exception):
    """A refusal from the API or a local problem, printed as one line."""


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("submit", help="submit a compression job to the service; prints its id")
    p.add_argument("--model", required=True, help="a local folder, a hub id (org/name) or upload:ID")
    p.add_argument("--revision", default="main", help="hub revision")
    p.add_argument("--recipe", required=True, type=Path, help="recipe file (.yaml or .json)")
    p.add_argument("--evaluation", type=Path, help="evaluation spec file (.yaml or .json)")
    p.add_argument("--idempotency-key", help="a repeat with the same key returns the first job")
    p.add_argument("--watch", action="store_true", help="then watch it to the end")
    p.set_defaults(func=submit)
    p = subparsers.add_parser("status", help="show a job")
    p.add_argument("job")
    p.add_argument("--json", action="store_true", help="the whole JobPublic as JSON")
    p.set_defaults(func=status)
    p = subparsers.add_parser("watch", help="follow a job live with a progress bar; exit 0 iff it succeeded")
    p.add_argument("job")
    p.add_argument("--poll", action="store_true", help="poll the events instead of the event stream")
    p.set_defaults(func=watch)
    p = subparsers.add_parser("download", help="download a job's artifact and check its sha256")
    p.add_argument("job")
    p.add_argument("--kind", default="checkpoint", help="checkpoint, manifest, report, report_html, model_card, log")
    p.add_argument(
        "--out", required=True, type=Path, help="file to write, or an existing folder; an interrupted download resumes"
    )
    p.set_defaults(func=download)
    p = subparsers.add_parser("delete", help="delete an ended job and its artifacts (cancel a running one first)")
    p.add_argument("job")
    p.set_defaults(func=delete)


def _key() -> str:
    key = os.environ.get("MOECOMP_KEY")
    if key:
        return key
    path = Settings().data_dir / "local-key"
    if path.exists():
        return path.read_text().strip()
    raise ClientError(f"no API key: set MOECOMP_KEY (or run `moecomp serve` here, which writes {path})")


def connect() -> httpx.Client:
    url = os.environ.get("MOECOMP_URL", DEFAULT_URL).rstrip("/")
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {_key()}"}, timeout=60)


def _check(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # a validation error: where, and what
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    raise ClientError(f"HTTP {response.status_code}: {detail}")


def model_source(model: str, revision: str) -> dict[str, Any]:
    if model.startswith("upload:"):
        return {"kind": "upload", "upload_id": model.removeprefix("upload:")}
    path = Path(model).expanduser()
    if path.exists() or model.startswith(("/", ".", "~")):
        return {"kind": "local", "path": str(path.resolve())}
    return {"kind": "hub", "id": model, "revision": revision}


def _read_data(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())  # JSON is a subset of YAML
    except (OSError, yaml.YAMLError) as exc:
        raise ClientError(f"cannot read {path}: {exc}") from exc


def submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model": model_source(args.model, args.revision), "recipe": _read_data(args.recipe)}
    if args.evaluation:
        body["evaluation"] = _read_data(args.evaluation)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with connect() as client:
        job = _check(client.post("/v1/jobs", json=body, headers=headers))
    print(job["id"])
    print(f"submitted job {job['id']} ({job['status']})", file=sys.stderr)
    return watch(argparse.Namespace(job=job["id"], poll=False)) if args.watch else 0


def _summary(job: dict[str, Any]) -> str:
    lines = [f"job {job['id']}: {job['status']}  {100 * (job.get('progress') or 0):.0f}%  stage {job.get('stage')}"]
    lines.append(f"  attempts {job.get('attempts')}  worker {job.get('worker')}  created {job.get('created_at')}")
    if job.get("error"):
        lines.append(f"  error {job['error']['code']}: {job['error']['message']}")
    return "\n".join(lines)


def status(args: argparse.Namespace) -> int:
    with connect() as client:
        job = _check(client.get(f"/v1/jobs/{args.job}"))
    print(json.dumps(job, indent=2) if args.json else _summary(job))
    return 0


def _sse_events(client: httpx.Client, job_id: str, after: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, data) from the event stream, from seq ``after`` on."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events/stream", params={"after": after}, timeout=None) as resp:
        if not resp.is_success:
            resp.read()
            _check(resp)
        name, data = "message", ""
        for line in resp.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif not line and data:
                yield name, json.loads(data)
                name, data = "message", ""


def _polled_events(client: httpx.Client, job_id: str, after: int) -> Iterator[tuple[str, dict[str, Any]]]:
    while True:
        page = _check(client.get(f"/v1/jobs/{job_id}/events", params={"after": after, "limit": 500}))
        for event in page["items"]:
            after = event["seq"]
            yield event["kind"], event
        if not page["items"]:
            job = _check(client.get(f"/v1/jobs/{job_id}"))
            if job["status"] in FINAL:
                yield "end", {"status": job["status"], "last_seq": after}
                return
            time.sleep(1.0)


class _Bar:
    """A tqdm bar of the job's 0..100% with the current stage and step."""

    def __init__(self) -> None:
        from tqdm import tqdm

        # disable=None: a bar on a terminal; in a log (not a TTY) one line per finished stage instead.
        self.bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}{postfix}]", disable=None)

    def show(self, kind: str, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        if kind == "progress" and self.bar.disable:
            if data.get("step") == data.get("total"):
                print(f"[{event.get('stage')}] {data.get('step')}/{data.get('total')} done", flush=True)
        elif kind == "progress":
            self.bar.set_description(event.get("stage") or "")
            self.bar.set_postfix_str(f"{data.get('step')}/{data.get('total')}")
            if "job_progress" in data:
                self.bar.n = max(self.bar.n, round(100 * float(data["job_progress"])))
            self.bar.refresh()
        elif kind in ("message", "metrics"):
            text = data.get("text") if kind == "message" else json.dumps(data)[:300]
            self.bar.write(f"[{event.get('stage')}] {text}")

    def close(self, succeeded: bool) -> None:
        if succeeded:
            self.bar.n = 100
        self.bar.close()


def follow(client: httpx.Client, job_id: str, poll: bool) -> str:
    """Show the job's events until it is final; returns the final status."""
    bar, after = _Bar(), 0
    try:
        while True:
            events = _polled_events(client, job_id, after) if poll else _sse_events(client, job_id, after)
            try:
                for kind, event in events:
                    if kind == "end":
                        bar.close(event.get("status") == "succeeded")
                        return str(event.get("status"))
                    after = max(after, int(event.get("seq", after)))
                    bar.show(kind, event)
            except httpx.TransportError:  # the stream broke: resume after the last event seen, by polling
                poll = True
                time.sleep(RECONNECT_S)  # the API may be restarting: do not spin on refused connections
    finally:
        bar.bar.close()


def watch(args: argparse.Namespace) -> int:
    with connect() as client:
        final = follow(client, args.job, args.poll)
        job = _check(client.get(f"/v1/jobs/{args.job}"))
    print(_summary(job))
    return 0 if final == "succeeded" else 1


def _pick(items: list[dict[str, Any]], kind: str, job_id: str) -> dict[str, Any]:
    for item in items:
        if item["kind"] == kind:
            return item
    kinds = ", ".join(sorted({i["kind"] for i in items})) or "none"
    raise ClientError(f"job {job_id} has no {kind} artifact (it has: {kinds})")


def fetch_artifact(client: httpx.Client, artifact: dict[str, Any], dest: Path) -> str:
    """Stream the artifact to ``dest`` via ``.<name>.part``, verify its sha256; returns the sha256.

    A ``.part`` left by an interrupted download is read back into the hash and continued with a Range request;
    a download that breaks keeps it for the next try, one whose sha256 does not match removes it.
    """
    part = dest.with_name(f".{dest.name}.part")
    digest, have = _resume_point(part, artifact["bytes"])
    if have:
        print(f"resuming {artifact['name']} at {have} of {artifact['bytes']} bytes", file=sys.stderr)
    if have < artifact["bytes"] or artifact["bytes"] == 0:
        digest = _append(client, artifact, part, digest, have)
    if digest.hexdigest() != artifact["sha256"]:
        part.unlink(missing_ok=True)
        raise ClientError(f"sha256 mismatch for {artifact['name']}: got {digest.hexdigest()}")
    part.replace(dest)
    return digest.hexdigest()


def _resume_point(part: Path, size: int) -> tuple[Any, int]:
    """The sha256 state and length of what ``part`` already holds (nothing if it is longer than the artifact)."""
    digest = hashlib.sha256()
    if not part.is_file() or part.stat().st_size > size:
        part.unlink(missing_ok=True)
        return digest, 0
    with open(part, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest, part.stat().st_size


def _append(client: httpx.Client, artifact: dict[str, Any], part: Path, digest: Any, have: int) -> Any:
    """Download from byte ``have`` on and append it to ``part``; a 200 (range ignored) starts over."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", artifact["url"], headers=headers, timeout=None) as resp:
        if not resp.is_success:
            resp.read()
            _check(resp)
        if resp.status_code != 206:
            digest, have = hashlib.sha256(), 0
        with open(part, "ab" if have else "wb") as out, _byte_bar(artifact, have) as bar:
            for chunk in resp.iter_bytes(1 << 20):
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
    return digest


def _byte_bar(artifact: dict[str, Any], have: int) -> Any:
    from tqdm import tqdm

    # disable=None: a bar on a terminal only, as watch's
    return tqdm(total=artifact["bytes"], initial=have, unit="B", unit_scale=True, desc=artifact["name"], disable=None)


def download(args: argparse.Namespace) -> int:
    with connect() as client:
        items = _check(client.get(f"/v1/jobs/{args.job}/artifacts"))["items"]
        artifact = _pick(items, args.kind, args.job)
        dest = args.out / artifact["name"] if args.out.is_dir() else args.out
        sha = fetch_artifact(client, artifact, dest)
    print(f"{dest}  {artifact['bytes']} bytes  sha256 {sha} (verified)")
    return 0


def delete(args: argparse.Namespace) -> int:
    with connect() as client:
        response = client.delete(f"/v1/jobs/{args.job}")
    if not response.is_success:
        _check(response)
    print(f"deleted job {args.job} and its artifacts", file=sys.stderr)
    return 0
