"""`train rl` across processes: 2 processes (torchrun, gloo) take the step 1 process takes on the same
global batch, and a LoRA + gradient-checkpointing run killed with SIGKILL resumes to the same end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "alignscope.cli.main", "train", "rl"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
            "-m", "alignscope.cli.main", "train", "rl"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture()
def prompts(tmp_path, lab_tiny) -> Path:
    from alignscope.world.generate import prompt_data
    from alignscope.world.language import default_world

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.prompt}) + "\n" for p in prompt_data(default_world(0), 24, seed=1)))
    return path


def options(prompts: Path, out: Path, **over) -> list[str]:
    opts = {"model": "lab:tiny", "prompts": str(prompts), "reward": "lab:gold", "output_dir": str(out), "algorithm": "grpo",
            "steps": 1, "prompts_per_step": 4, "samples_per_prompt": 4, "generation_batch_size": 2, "max_new_tokens": 12,
            "lr": 1e-3, "kl_coef": 0.05, "num_iterations": 2, "entropy_coef": 0.01, "progress": "false", "log_completions": 4, **over}
    return [f"{k}={v}" for k, v in opts.items()]


def rows(out: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "model.safetensors"))


@pytest.mark.parametrize("loss_type", ["bnpo"])
def test_two_processes_take_the_step_one_process_takes(tmp_path, prompts, loss_type, lab_tiny):
    """One rollout batch and two updates on it (num_iterations 2). Over more steps the runs part: Adam turns rounding
    in near-zero gradient entries into weight differences up to lr / 10, and those flip an occasional sampled token."""
    one, two = tmp_path / "one", tmp_path / "two"
    a = subprocess.run(CLI + options(prompts, one, loss_type=loss_type), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert a.returncode == 0, a.stderr[-3000:]
    b = subprocess.run(TORCHRUN + options(prompts, two, loss_type=loss_type), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr[-3000:]
    ra, rb = rows(one), rows(two)
    assert [r["step"] for r in rb] == [1]
    for x, y in zip(ra, rb):  # the same samples (seeded per call), advantages, loss and metrics over the whole batch
        for key in ("reward/proxy_mean", "reward_variance/mean", "response_length", "kl", "loss", "entropy", "clip_fraction"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), key
    assert rows(one, "completions.jsonl") == rows(two, "completions.jsonl")
    wa, wb = weights(one), weights(two)
    for k, v in wa.items():
        # Adam's normalised step turns rounding in a near-zero gradient entry into up to lr (1e-3) per step: lr / 10.
        torch.testing.assert_close(wb[k], v, atol=1e-4, rtol=0)
    start = lab_tiny[0].state_dict()  # model=lab:tiny is this model
    assert any(not torch.equal(v, start[k]) for k, v in wa.items())  # the updates moved the policy
    assert b.stdout.count("done:") == 1  # one process reports, one writes


def test_rl_refuses_a_batch_the_processes_cannot_share(tmp_path, prompts):
    r = subprocess.run(TORCHRUN + options(prompts, tmp_path / "odd", prompts_per_step=3, generation_batch_size=1),
                       env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "cannot be shared equally by 2 processes" in r.stderr
    assert "exitcode  : 2" in r.stderr  # alignscope's own exit status for bad input; torchrun exits 1 on any child's failure


def test_lora_checkpointing_run_killed_with_sigkill_resumes_to_the_same_end(tmp_path, prompts):
    over = {"steps": 8, "save_steps": 1, "keep_last": 2, "lora.r": 4, "lora.alpha": 8, "gradient_checkpointing": "true",
            "num_iterations": 1, "entropy_coef": 0.0}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    r = subprocess.run(CLI + options(prompts, whole, **over), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    proc = subprocess.Popen(CLI + options(prompts, killed, **over), env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not any(killed.glob("checkpoint-*/complete.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    r = subprocess.run(CLI + ["--resume", *options(prompts, killed, **over)], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step" in r.stdout + r.stderr
    wa, wb = weights(whole), weights(killed)
    for k, v in wa.items():
        torch.testing.assert_close(wb[k], v, atol=1e-6, rtol=0, msg=k)
    assert [x["step"] for x in rows(killed)] == list(range(1, 9))
    for x, y in zip(rows(whole), rows(killed)):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-6)
