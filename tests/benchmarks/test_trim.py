"""benchmarks/trim.py --small runs on CPU and writes a JSON row per pass."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_small_benchmark_writes_rows(tmp_path: Path) -> None:
    module = runpy.run_path(str(ROOT / "benchmarks" / "trim.py"))
    out = tmp_path / "trim.json"
    passes = "layer_drop,shared,block_drop_consecutive,disk"
    result = module["main"](
        ["--small", "--samples", "4", "--passes", passes, "--tmp-dir", str(tmp_path), "--out", str(out)]
    )
    assert json.loads(out.read_text()) == result
    rows = {row["pass"]: row for row in result["passes"]}
    assert set(rows) == {"layer_drop", "shared_one_pass", "block_drop_consecutive", "disk_read"}
    assert rows["layer_drop"]["decisions"]["dropped_layers"] and rows["layer_drop"]["tokens_per_s"] > 0
    assert len(rows["block_drop_consecutive"]["decisions"]["dropped_blocks"]) == 2
    assert rows["disk_read"]["bytes"] > 0
    assert list(tmp_path.iterdir()) == [out]  # the two written layers are gone
