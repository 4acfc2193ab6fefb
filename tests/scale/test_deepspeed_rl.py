"""`train rl` under accelerate's DeepSpeed ZeRO-2 and ZeRO-3: 2 processes take the steps 1 process takes on the same
global batch (micro-batches accumulated into one optimizer step, max_grad_norm clipped by DeepSpeed, LoRA included),
a ZeRO-3 run resumed from its checkpoint ends where an uninterrupted one does, and a resume under another launch is
refused.

accelerate 1.16 runs DeepSpeed only on accelerators, so the processes start through `deepspeed_on_cpu.py` (torchrun
with the variables `accelerate launch` sets from examples/accelerate/deepspeed_zero{2,3}.yaml); DeepSpeed then runs
on its CPU accelerator over gloo. Tolerances as in test_fsdp_rl.py (metrics 1e-4 relative, weights lr / 10); the
differences measured are in each test's docstring."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from alignscope.training.rl import RLConfig, check_sharding

from .test_distributed_rl import CLI, ENV, REPO, options, prompts, rows, weights  # noqa: F401 (prompts: a fixture)
from .test_fsdp_rl_lora import LORA, adapter

pytest.importorskip("deepspeed")

METRICS = ("reward/proxy_mean", "reward_variance/mean", "response_length", "kl", "loss", "entropy", "clip_fraction")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def deepspeed(stage: int, args: list[str], expect: int = 0) -> subprocess.CompletedProcess:
    """`train rl` by 2 processes under DeepSpeed ZeRO-`stage` on CPUs."""
    env = {**ENV, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage),
           "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
              str(REPO / "tests" / "scale" / "deepspeed_on_cpu.py"), "train", "rl"]
    r = subprocess.run(launch + args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    if expect == 0:
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"DeepSpeed ZeRO-{stage} over 2 processes" in r.stdout
    else:
        assert f"exitcode  : {expect}" in r.stderr, r.stderr[-3000:]
    return r


def one_process(args: list[str]) -> None:
    r = subprocess.run(CLI + args, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def assert_same_run(one: Path, two: Path, steps: int, loads=(weights,)) -> None:
    ra, rb = rows(one), rows(two)
    assert [r["step"] for r in rb] == list(range(1, steps + 1))
    for x, y in zip(ra, rb):
        for key in METRICS:
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), key
    assert rows(one, "completions.jsonl") == rows(two, "completions.jsonl")
    for load in loads:
        wa, wb = load(one), load(two)
        assert wa.keys() == wb.keys()
        for k, v in wa.items():
            torch.testing.assert_close(wb[k], v, atol=1e-4, rtol=0, msg=k)


def test_two_zero3_processes_take_the_step_one_process_takes(tmp_path, prompts):
    """One rollout batch, two updates on it (num_iterations 2), 2 micro-batches per update: one optimizer step each, as
    1 process takes (an engine step per micro-batch would double them). PPO's value head (its own learning rate) and
    max_grad_norm 0.01, which changes the weights by 1.6e-3 against no clipping, so DeepSpeed's clipping must be
    alignscope's. Measured on CPU/gloo: metrics within 1e-8, weights within 5e-7 (ZeRO-3, GRPO) when built. ZeRO-2
    (the weights whole on each process) takes the same backward and boundary: test_deepspeed_train.py runs it."""
    stage, over = 3, {"algorithm": "ppo", "samples_per_prompt": 2, "max_grad_norm": 0.01}
    one, two = tmp_path / "one", tmp_path / "two"
    over = {**over, "micro_batch_size": 2}
    one_process(options(prompts, one, **over))
    r = deepspeed(stage, options(prompts, two, **over))
    assert_same_run(one, two, steps=1)
    assert r.stdout.count("done:") == 1


def test_zero3_lora_takes_the_steps_one_process_takes(tmp_path, prompts):
    """LoRA under ZeRO-3: the frozen base and the adapter partitioned, sampling and the reference pass (the adapter
    disabled) on the policy gathered whole. Two rollout batches (the second's KL tells the reference apart), PPO and
    micro-batches. Measured: metrics within 1e-6 (the KL, 2e-5 relative), adapter within 8e-8, merged model within 2e-8."""
    one, two = tmp_path / "one", tmp_path / "two"
    over = {**LORA, "steps": 2, "algorithm": "ppo", "samples_per_prompt": 2, "micro_batch_size": 2}
    one_process(options(prompts, one, **over))
    r = deepspeed(3, options(prompts, two, **over))
    assert "the reference is the policy with its LoRA adapter disabled" in r.stdout
    assert rows(one)[1]["kl"] != 0
    assert_same_run(one, two, steps=2, loads=(adapter, weights))


def test_zero3_run_resumes_to_the_same_end(tmp_path, prompts):
    """A checkpoint holds the whole weights and DeepSpeed's own partitioned state (checkpoint-N/deepspeed/): resumed by
    the same ZeRO-3 launch the run ends on the same weights (measured: identical), with the main process's held-out
    evaluation (its forwards alone, on the gathered policy) on the way."""
    over = {"steps": 2, "save_steps": 1, "num_iterations": 1, "eval_prompts": prompts, "eval_steps": 1, "eval_samples": 2}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    deepspeed(3, options(prompts, whole, **over))
    assert (whole / "checkpoint-2" / "deepspeed" / "zero").is_dir()
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoint-2")
    r = deepspeed(3, ["--resume", *options(prompts, resumed, **over)])
    assert "resumed from step 1" in r.stdout + r.stderr
    wa, wb = weights(whole), weights(resumed)
    for k, v in wa.items():
        torch.testing.assert_close(wb[k], v, atol=1e-6, rtol=0, msg=k)
    assert [x["loss"] for x in rows(resumed)] == [x["loss"] for x in rows(whole)]
    assert [x["eval/proxy_mean"] for x in rows(resumed)] == [x["eval/proxy_mean"] for x in rows(whole)]
    # DeepSpeed's optimizer state is its own, partitioned per process: another launch is refused (ckpt.check_launch),
    # with exit 2 and no traceback through alignscope.
    shutil.rmtree(resumed / "final")
    r = subprocess.run(CLI + ["--resume", *options(prompts, resumed, **over)], env=ENV, cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "was written under DeepSpeed ZeRO-3 by 2 processes, this run is without DeepSpeed" in r.stderr
    assert "/src/alignscope/" not in r.stderr


def test_deepspeed_launch_is_taken():
    """DeepSpeed is not FSDP's sharding (its own checks are deepspeed_launch's); vLLM under it: test_fsdp_rl.py."""
    assert check_sharding(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED), RLConfig()) is False
