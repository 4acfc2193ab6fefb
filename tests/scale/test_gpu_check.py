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


def test_two_gpus_add_the_sharded_stages(tmp_path):
    """On 2 GPUs DPO, the CHES audit and GRPO run once more with the model sharded, and DPO and GRPO partitioned by
    ZeRO-3, through accelerate's launcher and the repo's configs (only the stage list is checked here: no GPU)."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up
    spec.loader.exec_module(gpu_check)
    args = argparse.Namespace(quick=False, model="smollm2", device="cuda", dtype="bfloat16", gpus=2)
    staged = {st.name: st for st in gpu_check.stages(args, tmp_path, tmp_path / "p.jsonl", tmp_path / "s.jsonl", tmp_path / "q.jsonl")}
    for name, words, kind in (("dpo-fsdp", ["train", "dpo"], "fsdp_version: 2"), ("audit data-fsdp", ["audit", "data"], "fsdp_version: 2"),
                              ("grpo-fsdp (hf)", ["train", "rl"], "fsdp_version: 2"), ("dpo-zero3", ["train", "dpo"], "zero_stage: 3"),
                              ("grpo-zero3 (hf)", ["train", "rl"], "zero_stage: 3")):
        st = staged[name]
        assert st.argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and st.procs == 2
        config = Path(st.argv[st.argv.index("--config_file") + 1])
        assert config.is_file() and kind in config.read_text()
        at = st.argv.index("alignscope.cli.main") + 1
        assert st.argv[at:at + 2] == words, st.argv
    assert "grpo-fsdp" in " ".join(staged["grpo-fsdp (hf)"].argv) and "dpo-fsdp" in " ".join(staged["dpo-fsdp"].argv)
