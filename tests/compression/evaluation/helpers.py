"""Helpers of the evaluation tests: corrupt a saved checkpoint, copy a read-only fixture."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# Small enough for two shared CPU cores: 8k held-out tokens, 40 task examples.
TOKENS = 8192
SEQ_LEN = 256
EXAMPLES = 40


def zero_expert(model_dir: Path, layer: int, expert: int) -> list[str]:
    """Zero expert ``expert`` of MoE layer ``layer`` in the saved safetensors; the names of the changed tensors."""
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    changed = []
    per_expert = re.compile(rf"layers\.{layer}\..*experts\.{expert}\.")
    fused = re.compile(rf"layers\.{layer}\..*experts\.(gate_up_proj|down_proj)$")
    for name, tensor in tensors.items():
        if per_expert.search(name):
            tensors[name] = torch.zeros_like(tensor)
            changed.append(name)
        elif fused.search(name):
            tensor[expert] = 0
            changed.append(name)
    save_file(tensors, path, metadata={"format": "pt"})
    return changed


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)  # the bundled fixture is read-only
    return dst
