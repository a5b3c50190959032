"""Load a checkpoint from disk exactly as a user would, and name it for the cache.

Remote code runs only for checkpoints this service wrote (a ``moecomp.json`` manifest next to
``config.json``); a compressed-tensors checkpoint loads through plain transformers, which
dequantizes its weights to dense tensors at load time, except two kinds served as written (:mod:`.packed`), so
memory and speed show the quantization: a W4A16 (int4 symmetric, pack-quantized) one on a GPU, its int4 weights
kept packed and run by moecomp's W4A16 kernels (their CPU definition is a slow reference), and an FP8 one as
moecomp's FP8 stage writes it (e4m3, per channel) on any device, its weights kept in FP8 and dequantized by plain
torch where they are used. Both give the logits of the same checkpoint loaded by stock transformers.
"""

from __future__ import annotations

import gc
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from moecomp.compression.adapters import get_adapter
from moecomp.compression.dtypes import parse_dtype
from moecomp.compression.lazy_checkpoint import read_config
from moecomp.compression.manifest import MANIFEST_NAME
from moecomp.compression.sources import config_dict

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: Any
    path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_device(device: str) -> str:
    """'auto' means the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def quantization_method(path: Path) -> str | None:
    qc = config_dict(path).get("quantization_config") or {}
    return qc.get("quant_method")


def load_checkpoint(path: Path, *, device: str = "cpu", dtype: str = "auto") -> LoadedModel:
    """Load tokenizer and causal LM from ``path`` onto ``device`` in eval mode."""
    path = Path(path)
    own = (path / MANIFEST_NAME).is_file()
    notes: list[str] = []
    kwargs: dict[str, Any] = {"trust_remote_code": own, "device_map": resolve_device(device)}
    kwargs["dtype"] = parse_dtype(dtype)
    quant = quantization_method(path)
    served = _packed_implementation(path, kwargs["device_map"]) if quant == "compressed-tensors" else None
    if served is not None:
        from moecomp.compression.evaluation.packed.loader import load_packed

        dense = kwargs["dtype"] if kwargs["dtype"] != "auto" else torch.bfloat16
        model = load_packed(path, kwargs["device_map"], dense)
        notes.append(PACKED_NOTES[served])
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=own)
        return LoadedModel(model=model, tokenizer=tokenizer, path=path, notes=notes)
    if quant == "compressed-tensors":
        notes.append(
            "compressed-tensors checkpoint loaded with plain transformers: its fused MoE experts are dequantized to"
            " dense at load (other quantized linears are decompressed at every forward), so it saves disk but"
            " neither memory nor time here; a runtime with quantized MoE kernels (e.g. vLLM) would."
        )
        if get_adapter(read_config(path)).layout.experts_call != "routed":
            notes.append(NO_PACKED_KERNEL_NOTE)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    if quant == "mxfp4":
        notes.append(_mxfp4_note(model))
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=own)
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, notes=notes)


NO_PACKED_KERNEL_NOTE = (
    "moecomp's packed runtime cannot serve this family's experts (Llama 4 runs every expert on every token outside"
    " transformers' experts interface): they were loaded through transformers, dequantized"
)
PACKED_NOTES = {
    "w4a16": "W4A16 checkpoint served packed: int4 weights stay packed on the GPU (moecomp's W4A16 kernels)",
    "fp8": "FP8 checkpoint served packed: experts and quantized linears stay FP8 in memory, dequantized where used"
    " (moecomp's fp8 experts); activations as stock transformers runs them (experts' unquantized, other"
    " linears' inputs quantized per token)",
}


def _mxfp4_note(model: PreTrainedModel) -> str:
    """How transformers ran an mxfp4 checkpoint's experts (gpt-oss as published): its own mxfp4 kernels keep them
    packed, but need the ``kernels`` package and a hub download of the kernels; without them (and on CPUs) it
    dequantizes them to bf16 at load."""
    packed = any(type(module).__name__.startswith("Mxfp4") for module in model.modules())
    how = (
        "its experts stay packed in transformers' mxfp4 kernels"
        if packed
        else "transformers dequantized its experts to bf16 at load (its mxfp4 kernels need the kernels package and a"
        " hub download), so memory and speed are those of bf16 experts"
    )
    return f"mxfp4 checkpoint: {how}; moecomp's packed runtime has no mxfp4 kernel"


def _packed_implementation(path: Path, device: str) -> str | None:
    """The experts implementation load_packed serves the checkpoint with on ``device``, or None to load it with
    plain transformers: load_packed's own check decides the format; W4A16 only on CUDA (its Triton kernels)."""
    from moecomp.compression.evaluation.packed.loader import FP8, packed_format

    config = read_config(path)
    try:
        fmt = packed_format(config)
    except ValueError:
        return None
    return fmt.implementation if fmt is FP8 or device.startswith("cuda") else None


def model_identity(path: Path) -> dict[str, Any]:
    """What makes two evaluations of a checkpoint the same: its place, config and weight files.

    A hub snapshot's path contains its revision hash, so path + config covers hub id + revision too.
    Weight file names and sizes are cheap to read and catch a checkpoint rewritten in place.
    """
    path = Path(path).resolve()
    config = (path / "config.json").read_bytes()
    weights = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    return {
        "path": str(path),
        "config_sha256": hashlib.sha256(config).hexdigest(),
        "weights": weights,
    }


def runtime_name(model: PreTrainedModel, device: torch.device) -> str:
    """E.g. 'transformers 5.17.0 sdpa, cpu, bfloat16' (attention implementation, device, dtype)."""
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    dtype = str(model.dtype).removeprefix("torch.")
    return f"transformers {transformers.__version__} {attn}, {where}, {dtype}"


def free(loaded: LoadedModel | None) -> None:
    """Drop a model and return its device memory before the next one loads."""
    if loaded is None:
        return
    del loaded.model
    # lm-eval's wrapper and autograd-free caches can sit in reference cycles: collect them now,
    # or the original's weights would still be on the device when the candidate loads.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
