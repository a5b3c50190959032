"""benchmarks/packed_decode.py's small CPU shape: the Layer Drop + W4A16 model builds packed and is measured served."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_small_packed_decode_writes_its_figures(tmp_path: Path) -> None:
    module = runpy.run_path(str(ROOT / "benchmarks" / "packed_decode.py"))
    out = tmp_path / "packed.json"
    module["main"](["--small", "--batch", "1", "--eager-layers", "0", "--repeats", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["packed"]["1"]["experts_implementation"] == "w4a16" and data["packed"]["1"]["decode_tok_s"] > 0
    assert data["dropped_moe_layers"] == [1] and data["summary"]["packed_decode_tok_s_batch1"] > 0
