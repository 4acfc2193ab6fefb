"""`train rl` under accelerate's FSDP (v2): 2 sharded processes take the step 1 process takes on the same global
batch, a resumed run ends where an uninterrupted one does, and the launches RL cannot take are refused.

accelerate runs FSDP only on accelerators (an FSDP config on CPUs silently runs DDP), so the processes start
through `fsdp_on_cpu.py`, which turns accelerate's state to FSDP; torch's `fully_shard` then shards over gloo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from alignscope.errors import ConfigError
from alignscope.training.rl import RLConfig, check_sharding

from .test_distributed_rl import CLI, ENV, REPO, TORCHRUN, options, prompts, rows, weights  # noqa: F401 (prompts: a fixture)

FSDP_ENV = {**ENV, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true", "FSDP_RESHARD_AFTER_FORWARD": "true"}
FSDP_TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537",
                 str(REPO / "tests" / "scale" / "fsdp_on_cpu.py"), "train", "rl"]


def fsdp(args: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run(FSDP_TORCHRUN + args, env=FSDP_ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FSDP: the policy is sharded over 2 processes" in r.stdout
    return r


def ddp(args: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run(TORCHRUN + args, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_two_sharded_processes_take_the_step_one_process_takes(tmp_path, prompts):
    """As test_distributed_rl's DDP test: one rollout batch, two updates on it (num_iterations 2), PPO's value head
    and micro-batches (accumulated without a gradient reduce) included."""
    one, two = tmp_path / "one", tmp_path / "two"
    over = {"algorithm": "ppo", "samples_per_prompt": 2, "micro_batch_size": 2}
    a = subprocess.run(CLI + options(prompts, one, **over), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert a.returncode == 0, a.stderr[-3000:]
    b = fsdp(options(prompts, two, **over))
    ra, rb = rows(one), rows(two)
    assert [r["step"] for r in rb] == [1]
    for x, y in zip(ra, rb):
        for key in ("reward/proxy_mean", "reward_variance/mean", "response_length", "kl", "loss", "entropy", "clip_fraction"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), key
    assert rows(one, "completions.jsonl") == rows(two, "completions.jsonl")
    wa, wb = weights(one), weights(two)  # the final model: the whole policy, gathered from the shards
    assert wa.keys() == wb.keys()
    for k, v in wa.items():
        torch.testing.assert_close(wb[k], v, atol=1e-4, rtol=0)  # lr / 10, as for DDP
    assert b.stdout.count("done:") == 1


def test_sharded_run_resumes_to_the_same_end(tmp_path, prompts):
    """Checkpoints hold the whole policy and optimizer state (gathered by every process, written by the main one, the
    optimizer's keyed by position as an unsharded run keys it): a sharded run resumed from one ends on the same
    weights, and so does a DDP run resumed from it."""
    assert_resumes_to_the_same_end(tmp_path, prompts, {"steps": 2, "save_steps": 1, "num_iterations": 1}, (weights,))


def assert_resumes_to_the_same_end(tmp_path, prompts, over: dict, loads, launches=("fsdp", "ddp")) -> None:
    """A 2-step sharded run, then copies of it cut back to checkpoint-1 resumed under each of `launches`: each ends on
    the tensors `loads` read from the whole run (within 1e-6), with the same losses."""
    whole = tmp_path / "whole"
    fsdp(options(prompts, whole, **over))
    for name, launch in [(name, {"fsdp": fsdp, "ddp": ddp}[name]) for name in launches]:
        resumed = tmp_path / name
        shutil.copytree(whole, resumed)
        shutil.rmtree(resumed / "final")
        shutil.rmtree(resumed / "checkpoint-2")
        r = launch(["--resume", *options(prompts, resumed, **over)])
        assert "resumed from step 1" in r.stdout + r.stderr, name
        for load in loads:
            wa, wb = load(whole), load(resumed)
            for k, v in wa.items():
                torch.testing.assert_close(wb[k], v, atol=1e-6, rtol=0, msg=f"{name}: {k}")
        assert [x["loss"] for x in rows(resumed)] == pytest.approx([x["loss"] for x in rows(whole)], abs=1e-6), name


@pytest.mark.parametrize(("launch", "over", "message"), [
    (SimpleNamespace(distributed_type=DistributedType.DEEPSPEED), {"rollout_backend": "vllm"}, "under DeepSpeed .* vllm is not supported"),
    (SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False), {}, "FSDP version 2"),
    (SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True), {"rollout_backend": "vllm"}, "vllm is not supported"),
])
def test_launches_rl_cannot_take_are_refused(launch, over, message):
    with pytest.raises(ConfigError, match=message):
        check_sharding(launch, RLConfig(**over))


def test_ddp_and_fsdp2_launches_are_taken():
    assert check_sharding(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU), RLConfig()) is False
    assert check_sharding(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True), RLConfig()) is True
