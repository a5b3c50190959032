"""Measurements of one checkpoint, each taken from the cache when it holds it, else measured.

The model itself is loaded only when some measurement is missing from the cache; the tokenizer
(cheap) is always loaded, because the held-out windows are built with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel

from moecomp.compression.context import RunContext
from moecomp.compression.evaluation import fidelity as fid
from moecomp.compression.evaluation.cache import ResultCache, entry_key
from moecomp.compression.evaluation.footprint import footprint
from moecomp.compression.evaluation.loading import LoadedModel, free, load_checkpoint, runtime_name
from moecomp.compression.evaluation.local_tasks import TASKS_DIR
from moecomp.compression.evaluation.perplexity import perplexity
from moecomp.compression.evaluation.served import measure_served
from moecomp.compression.evaluation.spec import EvaluationSpec, SpeedSpec
from moecomp.compression.evaluation.speed import measure_speed
from moecomp.compression.evaluation.tasks import local_task_config, run_task
from moecomp.compression.manifest import MANIFEST_NAME

STAGE = "evaluate"


def plan(spec: EvaluationSpec, with_fidelity: bool) -> list[tuple[str, str]]:
    """The (kind, name) measurements of one model, in the order they run."""
    steps = [("footprint", "footprint")] + [("perplexity", s) for s in spec.perplexity]
    if with_fidelity and spec.fidelity and spec.perplexity:
        steps.append(("fidelity", spec.perplexity[0]))
    steps += [("task", t) for t in spec.tasks]
    if spec.speed:
        steps.append(("speed", "speed"))
    return steps


def windows_sha(wins: torch.Tensor) -> str:
    return hashlib.sha256(wins.numpy().tobytes()).hexdigest()


@dataclass
class Progress:
    """Counts measurements across both models and reports them through the run context."""

    ctx: RunContext
    total: int
    done: int = 0

    def step(self, role: str, kind: str, name: str) -> None:
        self.done += 1
        self.ctx.progress(STAGE, self.done, self.total, model=role, measurement=kind, name=name)


@dataclass
class Measurer:
    path: Path
    role: str  # "baseline" | "candidate"
    spec: EvaluationSpec
    device: str
    identity: dict[str, Any]
    cache: ResultCache
    ctx: RunContext
    loaded: LoadedModel | None = None
    notes: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    runtime: str | None = None

    def __post_init__(self) -> None:
        own = (self.path / MANIFEST_NAME).is_file()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=own)
        self._windows: dict[str, torch.Tensor] = {}

    def model(self) -> LoadedModel:
        if self.loaded is None:
            self.ctx.message(STAGE, f"loading the {self.role} from {self.path}")
            self.loaded = load_checkpoint(self.path, device=self.device, dtype=self.spec.dtype)
            self.notes += self.loaded.notes
            self.runtime = runtime_name(self.loaded.model, self.loaded.device)
        return self.loaded

    def close(self) -> None:
        free(self.loaded)
        self.loaded = None

    def windows(self, source: str) -> torch.Tensor:
        from moecomp.compression.evaluation.texts import source_windows

        if source not in self._windows:
            self._windows[source] = source_windows(source, self.tokenizer, self.spec.seq_len, self.spec.max_tokens)
        return self._windows[source]

    def cached_or(self, kind: str, params: dict[str, Any], compute, reuse: bool = True) -> dict[str, Any]:
        """The cached result of (kind, params) when ``reuse``, else ``compute()`` (stored for next time)."""
        key = entry_key(self.identity, kind, {**params, "dtype": self.spec.dtype, "device": self.device_kind()})
        hit = self.cache.get(key) if reuse else None
        if hit is not None:
            self.cached.append(f"{kind}:{params.get('name', kind)}")
            return hit
        value = compute()
        self.cache.put(key, value)
        return value

    def device_kind(self) -> str:
        if self.device.startswith("cuda") and torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(self.device))
        return self.device

    # --- the measurements -------------------------------------------------------------------------

    def footprint(self) -> dict[str, Any]:
        return self.cached_or(
            "footprint",
            {"context": self.spec.seq_len},
            lambda: footprint(self.model().model, self.path, self.spec.seq_len),
        )

    def perplexity(self, source: str) -> dict[str, Any]:
        params = {"name": source, "seq_len": self.spec.seq_len, "max_tokens": self.spec.max_tokens}

        def compute() -> dict[str, Any]:
            # Long sources: let a cancel take effect between forward passes, not only between measurements.
            tick = lambda done, total: self.ctx.check_cancelled()  # noqa: E731
            return perplexity(self.model().model, self.windows(source), on_batch=tick)

        return self.cached_or("perplexity", params, compute)

    def fidelity_reference(self, source: str) -> tuple[fid.FidelityReference, str]:
        """The original's top-k reference over the fidelity windows of ``source``, and those windows' sha256."""
        wins = fid.fidelity_windows(self.windows(source), self.spec.fidelity_tokens)
        params = {
            "name": source,
            "seq_len": self.spec.seq_len,
            "max_tokens": self.spec.max_tokens,
            "fidelity_tokens": self.spec.fidelity_tokens,
            "topk": self.spec.fidelity_topk,
        }
        key = entry_key(self.identity, "fidelity", {**params, "dtype": self.spec.dtype, "device": self.device_kind()})
        tensors = self.cache.get_tensors(key)
        if tensors is not None and self.cache.get(key) == {"windows_sha256": windows_sha(wins)}:
            self.cached.append(f"fidelity:{source}")
            return fid.FidelityReference.from_dict(tensors), windows_sha(wins)
        ref = fid.reference(self.model().model, wins, self.spec.fidelity_topk)
        self.cache.put_tensors(key, ref.to_dict())
        self.cache.put(key, {"windows_sha256": windows_sha(wins)})
        return ref, windows_sha(wins)

    def fidelity(self, source: str, ref: fid.FidelityReference, ref_sha: str) -> dict[str, Any] | None:
        wins = fid.fidelity_windows(self.windows(source), self.spec.fidelity_tokens)
        if windows_sha(wins) != ref_sha:
            self.notes.append(f"fidelity skipped: the candidate's tokenizer splits {source} differently")
            return None
        return {**fid.compare(self.model().model, wins, ref), "source": source}

    def task(self, name: str) -> dict[str, Any]:
        params = {"name": name, "limit": self.spec.task_limit, "task": _task_fingerprint(name)}
        return self.cached_or(
            "task",
            params,
            lambda: run_task(self.model(), name, limit=self.spec.task_limit, batch_size=self.spec.task_batch_size),
        )

    def speed(self) -> dict[str, Any]:
        reuse = self.role == "baseline" and self.spec.speed_settings.reuse_cached_baseline
        return self.cached_or(
            "speed",
            self.spec.speed_settings.model_dump(mode="json"),
            lambda: speed_figures(self.model().model, self.spec.speed_settings),
            reuse=reuse,
        )


def speed_figures(model: PreTrainedModel, spec: SpeedSpec) -> dict[str, Any]:
    """The eager figures (the study's baseline) with the served ones nested under 'served' when asked for."""
    result = measure_speed(model, spec)
    if spec.served:
        result["served"] = measure_served(model, spec)
    return result


def _task_fingerprint(name: str) -> str | None:
    """A local task's content hash, so that regenerated task data is never answered from the cache."""
    config = local_task_config(name)
    if config is None:
        return None
    files = sorted(config["dataset_kwargs"]["data_files"].values())
    blob = b"".join(Path(f).read_bytes() for f in files) + (TASKS_DIR / f"{name}.yaml").read_bytes()
    return hashlib.sha256(blob).hexdigest()
