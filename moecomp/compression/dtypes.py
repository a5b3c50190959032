"""The dtype names that recipes, the CLI and the API accept, and the one parser of them."""

from __future__ import annotations

from typing import Literal

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def parse_dtype(name: str) -> torch.dtype | Literal["auto"]:
    """``auto`` (the checkpoint's own dtype, resolved by whoever loads it) or one of DTYPES; ValueError else."""
    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]
