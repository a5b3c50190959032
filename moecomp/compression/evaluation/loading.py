"""Load a checkpoint from disk exactly as a user would, and name it for the cache.

Remote code runs only for checkpoints this service wrote (a ``moecomp.json`` manifest next to
``config.json``); a compressed-tensors checkpoint loads through plain transformers, which
dequantizes its weights to dense tensors at load time, except a W4A16 (int4 symmetric, pack-quantized) one on a
GPU: it is served as written, its int4 weights kept packed and run by moecomp's W4A16 kernels
(:mod:`.packed`), so memory and speed show the packing.
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

from moecomp.compression.dtypes import parse_dtype
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
    if quant == "compressed-tensors" and kwargs["device_map"].startswith("cuda") and _packed_w4a16(path):
        from moecomp.compression.evaluation.packed.loader import load_packed

        dense = kwargs["dtype"] if kwargs["dtype"] != "auto" else torch.bfloat16
        model = load_packed(path, kwargs["device_map"], dense)
        notes.append("W4A16 checkpoint served packed: int4 weights stay packed on the GPU (moecomp's W4A16 kernels)")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=own)
        return LoadedModel(model=model, tokenizer=tokenizer, path=path, notes=notes)
    if quant == "compressed-tensors":
        notes.append(
            "compressed-tensors checkpoint loaded with plain transformers: its fused MoE experts are dequantized to"
            " dense at load (other quantized linears are decompressed at every forward), so it saves disk but"
            " neither memory nor time here; a runtime with quantized MoE kernels (e.g. vLLM) would."
        )
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=own)
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, notes=notes)


def _packed_w4a16(path: Path) -> bool:
    """The checkpoint is one that load_packed serves (int4 symmetric, pack-quantized): its own check says so."""
    from moecomp.compression.evaluation.packed.loader import pack_quantized_args
    from moecomp.compression.lazy_checkpoint import read_config as model_config

    try:
        pack_quantized_args(model_config(path))
    except ValueError:
        return False
    return True


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
