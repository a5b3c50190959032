"""Disk and host memory a job needs, estimated from the checkpoint's headers and the recipe before any work, and
checked against the machine: a job that cannot fit is refused at once, with the numbers, not an hour in.

Sizes after each stage: :mod:`moecomp.compression.sizes`. Then, with N x L calibration tokens, hidden H, a compute
dtype of b bytes (the checkpoint's; float32 for streamed slimming and llm-compressor on the CPU):
  disk    output = the checkpoint after every stage
          scratch = every intermediate checkpoint (``pipeline.split_passes``: each pass but the last writes one,
                    kept beside the output until the end; a trimming pass the next streamed slimming pass applies
                    writes none)
          evaluation cache (worker) = the fidelity reference, tokens x top-k x 12 bytes, and JSON results
  memory  the largest pass:
          streamed (trimming, moecomp slimming): as ``activations.check_host_memory`` counts it: 2 N L H b of
            activations (unless they fit on the GPU), two layers' weights, the stages' buffers (consecutive
            block_drop: ``drop`` more N L H b; slimming: an output shard and two probes of L H b per layer); on the
            CPU also the embedding and GPTQ/SparseGPT's Hessians, E (H^2 + I^2) 4 bytes per layer
          llm-compressor: the whole model at b, plus 2 N L H b;  export: one shard and the largest tensor
          evaluation on the CPU (worker): the original model and the fidelity reference
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moecomp.compression import activations
from moecomp.compression.activations import HostMemoryError
from moecomp.compression.dtypes import DTYPES
from moecomp.compression.export import MAX_SHARD_BYTES
from moecomp.compression.recipe import Recipe
from moecomp.compression.sizes import Sizes, model_sizes, resaved

GIB = 2**30
FIDELITY_ENTRY_BYTES = 12  # top-k log-probability and token id per compared token
RESULTS_MARGIN = 2**20  # the cached JSON results


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= 10 * GIB else f"{n / GIB:.3f} GiB"


@dataclass(frozen=True)
class Need:
    """Bytes of one need, made of named parts."""

    what: str
    parts: dict[str, int]

    @property
    def bytes(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        """E.g. 'output checkpoint 26.1 GiB (routed experts 24.0 GiB, ...)': parts largest first, those that would
        print as 0.000 GiB left out."""
        shown = sorted(((v, k) for k, v in self.parts.items() if v >= GIB // 2000), reverse=True)
        made = ", ".join(f"{k} {gib(v)}" for v, k in shown)
        return f"{self.what} {gib(self.bytes)}" + (f" ({made})" if made else "")


@dataclass(frozen=True)
class Plan:
    output: Need
    scratch: Need
    evaluation_cache: Need
    host_memory: Need  # the largest pass's

    def describe(self) -> str:
        needs = (self.output, self.scratch, self.evaluation_cache, self.host_memory)
        return "plan: " + "; ".join(n.describe() for n in needs if n.bytes or n is self.output)


class DiskSpaceError(OSError):
    """A job whose files would not fit on their file system, refused before it starts."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Setting:
    """What the memory of a pass depends on beside the sizes."""

    config: Any
    samples: int
    seq_len: int
    device: str
    dtype: str  # auto or a dtypes.DTYPES key

    def compute_item(self, sizes: Sizes, float32_on_cpu: bool) -> int:
        if self.dtype != "auto":
            return DTYPES[self.dtype].itemsize
        return 4 if float32_on_cpu and not self.device.startswith("cuda") else sizes.item

    def activation_bytes(self, item: int) -> int:
        return self.samples * self.seq_len * self.config.hidden_size * item


def plan(model_dir: Path, recipe: Recipe, *, device: str = "cpu", dtype: str = "auto", evaluation: Any = None) -> Plan:
    """The disk and host memory ``recipe`` needs on the checkpoint in ``model_dir`` (``evaluation``: an
    EvaluationSpec the worker runs afterwards, on the same device)."""
    from moecomp.compression.lazy_checkpoint import read_config
    from moecomp.compression.pipeline import split_passes

    sizes = model_sizes(Path(model_dir))
    calibration = recipe.calibration
    setting = Setting(read_config(Path(model_dir)), calibration.samples, calibration.seq_len, device, dtype)
    passes = split_passes(list(recipe.stages))
    scratch: dict[str, int] = {}
    memory: list[Need] = []
    current = sizes
    for i, (kind, stages) in enumerate(passes):
        before = current
        for stage in stages:
            current = stage.resized(current)
        if kind != "trimming" and (dtype != "auto" or kind == "slimming_llmcompressor"):
            current = resaved(current, setting.compute_item(current, kind == "slimming_llmcompressor"))
        last = i == len(passes) - 1
        if not last and not (kind == "trimming" and stages and passes[i + 1][0] == "slimming"):
            scratch[f"pass {i} ({kind})"] = sum(current.checkpoint().values())
        memory.extend(_pass_memory(i, kind, stages, before, current, setting))
    if evaluation is not None and not device.startswith("cuda"):
        itemsize = DTYPES[evaluation.dtype].itemsize if evaluation.dtype in DTYPES else sizes.item
        original = sizes.weights * itemsize // sizes.item
        fidelity = {"the original model": original, "fidelity reference": _fidelity(evaluation)}
        memory.append(Need("evaluation", fidelity))
    cache = {"fidelity reference": _fidelity(evaluation), "results": RESULTS_MARGIN} if evaluation is not None else {}
    return Plan(
        output=Need("output checkpoint", current.checkpoint()),
        scratch=Need("intermediate checkpoints", scratch),
        evaluation_cache=Need("evaluation cache", cache),
        host_memory=max(memory, key=lambda need: need.bytes),
    )


def _fidelity(evaluation: Any) -> int:
    return evaluation.fidelity_tokens * evaluation.fidelity_topk * FIDELITY_ENTRY_BYTES if evaluation.fidelity else 0


def _pass_memory(i: int, kind: str, stages: list, before: Sizes, after: Sizes, setting: Setting) -> list[Need]:
    """Peak host memory of pass ``i``: its calibration (if any) and its export, as separate needs."""
    largest = max(max(before.outside.values(), default=0), *(p.bytes for la in before.layers for p in la.values()))
    shard = min(MAX_SHARD_BYTES, sum(after.checkpoint().values()))
    export = Need(f"pass {i} ({kind}) export", {"one output shard": shard, "the largest tensor": largest})
    if not stages:
        return [export]
    item = setting.compute_item(before, kind != "trimming")
    if kind == "slimming_llmcompressor":
        act = setting.activation_bytes(item)
        whole = before.weights * item // before.item
        return [Need(f"pass {i} (llm-compressor)", {"the whole model": whole, "activations": 2 * act})]
    parts = _streamed(before, setting, item)
    for stage in stages:
        for name, extra in _stage_buffers(stage, before, after, setting, item).items():
            parts[name] = parts.get(name, 0) + extra
    streamed = Need(f"pass {i} ({kind}: {'+'.join(s.method for s in stages)})", parts)
    return [streamed, export] if kind == "trimming" else [streamed]


def _streamed(sizes: Sizes, setting: Setting, item: int) -> dict[str, int]:
    """activations.check_host_memory's count of a streamed pass, plus the embedding on the CPU."""
    act = setting.activation_bytes(item)
    layer = max(sizes.layer_bytes(i) for i in range(len(sizes.layers))) * item // sizes.item
    on_cpu = not setting.device.startswith("cuda")
    host_activations = 2 * act if on_cpu or not _fits_on_device(setting, act, layer, item) else 0
    embedding = max(sizes.outside.values(), default=0) * item // sizes.item if on_cpu else 0
    return {"activations": host_activations, "two layers' weights": 2 * layer, "embedding": embedding}


def _fits_on_device(setting: Setting, act: int, layer: int, item: int) -> bool:
    """make_plan's choice: the activations stay on the GPU when they fit in its free memory with the rest."""
    import torch

    from moecomp.compression.adapters import get_adapter

    if not torch.cuda.is_available():
        return False
    dtype = {4: torch.float32, 2: torch.bfloat16}[item]
    tokens = activations.micro_batch_size(setting.samples, setting.seq_len) * setting.seq_len
    family = get_adapter(setting.config)
    device = torch.device(setting.device)
    return activations.activations_fit_on_device(setting.config, family, act, layer, tokens, dtype, device)


def _stage_buffers(stage: Any, before: Sizes, after: Sizes, setting: Setting, item: int) -> dict[str, int]:
    """Host buffers a stage keeps during a streamed pass (see the module docstring): its own, and for a slimming
    stage the pass's output shard and reload probes."""
    own = stage.host_buffers(setting, before, item)
    if stage.family != "slimming":
        return own
    layers = sum(1 for layer in before.layers if layer)
    return {"output shard": min(MAX_SHARD_BYTES, sum(after.checkpoint().values())),
            "reload probes": 2 * layers * setting.activation_bytes(item) // setting.samples, **own}  # fmt: skip


def free_space(path: Path) -> tuple[Path, int, int]:
    """(nearest existing folder, its file system's id, free bytes there) for ``path``."""
    folder = next(p for p in (Path(path), *Path(path).parents) if p.exists())
    return folder, os.stat(folder).st_dev, shutil.disk_usage(folder).free


def check_disk(needs: list[tuple[Path, Need]]) -> None:
    """Refuse needs (where they are written, what) that exceed the free space of their file system, summed per
    file system."""
    systems: dict[int, tuple[Path, int, list[Need]]] = {}
    for path, need in needs:
        if need.bytes:
            folder, device, free = free_space(path)
            systems.setdefault(device, (folder, free, []))[2].append(need)
    for folder, free, on_it in systems.values():
        total = sum(need.bytes for need in on_it)
        if total > free:
            made = "; ".join(need.describe() for need in on_it)
            raise DiskSpaceError(
                f"not enough disk space: this job needs {gib(total)} on the file system of {folder} ({made}) and "
                f"{gib(free)} are free there. Free space, or choose a recipe with a smaller output"
            )


def check_memory(plan: Plan, available: int | None = None) -> None:
    """Refuse a plan whose largest pass needs more host memory than is available now."""
    available = activations.available_host_bytes() if available is None else available
    need = plan.host_memory
    if available is not None and need.bytes > available:
        raise HostMemoryError(
            f"not enough host memory: this job needs {gib(need.bytes)} for its largest step, {need.describe()}, and "
            f"{gib(available)} are available. Lower calibration samples x seq_len, or use a host with more memory"
        )


def check(plan: Plan, out_dir: Path, *, cache_dir: Path | None = None, available_memory: int | None = None) -> None:
    """Refuse ``plan`` if the output and scratch (beside ``out_dir``), the evaluation cache (``cache_dir``) or its
    host memory cannot fit. Raises DiskSpaceError or HostMemoryError naming the numbers."""
    needs = [(Path(out_dir), plan.output), (Path(out_dir), plan.scratch)]
    if cache_dir is not None:
        needs.append((Path(cache_dir), plan.evaluation_cache))
    check_disk(needs)
    check_memory(plan, available_memory)
