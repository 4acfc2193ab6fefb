"""The GPU check's dry run, invoked as the README documents: every stage runs on the CPU with a tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
HF_STAGES = ("sft", "audit data", "dpo", "rm", "audit rm", "bon (hf)", "grpo (hf)")


def test_dry_run_runs_every_stage(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in (tmp_path / "work" / "gpu_check.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| stage")}
    for stage in HF_STAGES:
        assert rows[stage][3] == "ran", rows[stage]
        assert float(rows[stage][6]) > 50  # the stage's own peak RSS in MiB was read
    assert (tmp_path / "work" / "dpo" / "final").is_dir() and (tmp_path / "work" / "audit" / "ches.csv").is_file()


def test_no_gpu_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=120,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "no CUDA GPU" in done.stderr and "--device cpu --quick" in done.stderr
    assert "Traceback" not in done.stderr
