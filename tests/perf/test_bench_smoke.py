"""`benchmarks/run.py --quick` runs end to end (alignscope's sides only) and writes its table into a file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def test_quick_benchmark_writes_table(tmp_path):
    out = tmp_path / "perf.md"
    out.write_text("# Performance\n\nprose that must survive\n")
    cmd = [sys.executable, str(RUN), "--quick", "--tools", "alignscope,forward", "--tasks", "ches", "--pairs", "16",
           "--root", str(tmp_path / "assets"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "prose that must survive" in text
    assert "<!-- bench:begin -->" in text and "<!-- bench:end -->" in text
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if "pairs/s" in line]
    assert [r[1] for r in rows] == ["alignscope", "plain forward"], text
    assert rows[0][0] == "CHES audit vs one plain forward pass" and rows[0][7].endswith("x**")  # both sides: a speed-up
    assert all(float(r[2]) > 0 and float(r[5]) > 0 for r in rows), text  # wall seconds, peak RSS
    floor = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if "TFLOP |" in line]
    assert [r[0] for r in floor] == ["CHES audit vs one plain forward pass"], text
    # The matmuls alone cannot take longer than the whole audit, and the reachable speed-up bounds the measured one.
    assert 0 < float(floor[0][2]) < float(floor[0][3]), text
    assert float(floor[0][7].rstrip("x")) >= float(floor[0][8].rstrip("x")), text
