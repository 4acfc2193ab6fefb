"""`benchmarks/run.py --quick` runs end to end (alignscope's sides only) and writes its table into a file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def cells(text: str, marker: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if marker in line]


def test_quick_benchmark_writes_table(tmp_path):
    out = tmp_path / "perf.md"
    out.write_text("# Performance\n\nprose that must survive\n")
    cmd = [sys.executable, str(RUN), "--quick", "--tools", "alignscope,forward,hf", "--tasks", "ches,gen_n,rl", "--pairs", "16",
           "--root", str(tmp_path / "assets"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "prose that must survive" in text
    assert "<!-- bench:begin -->" in text and "<!-- bench:end -->" in text
    rows = cells(text, "pairs/s")
    assert [r[1] for r in rows] == ["alignscope", "plain forward"], text
    assert rows[0][0] == "CHES audit vs one plain forward pass" and rows[0][7].endswith("x**")  # both sides: a speed-up
    assert all(float(r[2]) > 0 and float(r[5]) > 0 for r in rows), text  # wall seconds, peak RSS
    sampling = cells(text, "tok/s") + cells(text, "s/step")
    assert [r[:2] for r in sampling] == [["Generation at n = 8 vs generate(num_return_sequences=8)", "alignscope"], ["", "HF generate"],
                                         ["GRPO step vs TRL GRPOTrainer", "alignscope"]], text
    # MFU: the denominator is the best matmul speed the run measured (or a row's own rate above it), never below a row's
    mfu = [float(r[6].rstrip("%")) for r in rows + sampling]
    assert all(0 < m <= 100 for m in mfu), text
    floor = cells(text, "TFLOP |")
    assert [r[0] for r in floor] == ["CHES audit vs one plain forward pass",
                                     "Generation at n = 8 vs generate(num_return_sequences=8)"], text
    # The matmuls alone cannot take longer than the whole run, and the reachable speed-up bounds the measured one.
    for r in floor:
        assert 0 < float(r[2]) < float(r[3]), text
        assert float(r[7].rstrip("x")) >= float(r[8].rstrip("x")), text
