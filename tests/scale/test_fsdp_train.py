"""Offline `train` under accelerate's FSDP (v2): the model is sharded block by block after loading on the CPU, the
reference pass and the monitor's evaluation run on the sharded model with the same forwards on every process, 2
sharded processes take the steps 1 process takes, and checkpoints hold the whole state so FSDP and DDP runs resume
each other. The processes start through `fsdp_on_cpu.py` (accelerate runs FSDP only on accelerators)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from alignscope.errors import ConfigError
from alignscope.models.fsdp import shards_model

from training import synthetic
from .test_fsdp_rl import FSDP_ENV

REPO = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in FSDP_ENV.items() if not k.startswith(("ACCELERATE_USE_FSDP", "FSDP_"))}


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launch(method: str, args: list[str], fsdp: bool = True, processes: int = 2) -> subprocess.CompletedProcess:
    """`train METHOD` on 2 processes: sharded (FSDP v2) or plain DDP."""
    target = [str(REPO / "tests" / "scale" / "fsdp_on_cpu.py")] if fsdp else ["-m", "alignscope.cli.main"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", free_port(),
           *target, "train", method, *args]
    return subprocess.run(cmd, env=FSDP_ENV if fsdp else ENV, cwd=REPO, capture_output=True, text=True, timeout=300)


def one_process(method: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignscope.cli.main", "train", method, *args], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def options(data: Path, out: Path, **over) -> list[str]:
    opts = {"model": "tiny", "data": str(data), "output_dir": str(out), "batch_size": 4, "max_length": 64, "lr": 3e-3,
            "progress": "false", "save_steps": 2, "keep_last": 5, "eval_fraction": 0.1, "max_steps": 4, **over}
    return [f"{k}={v}" for k, v in opts.items()]


def rows(out: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, atol=atol, rtol=0, msg=k)


@pytest.fixture
def pairs(tmp_path) -> Path:
    """45 pairs: 4 held out, 41 to train on, so the reference shares of 2 processes (20 and 21 pairs, 40 and 42
    sequences) take 5 and 6 batches of 8; the smaller share pads with a stand-in forward or the processes hang."""
    return synthetic.write_jsonl(tmp_path / "pairs.jsonl", synthetic.pairs(45))


def test_two_sharded_processes_take_the_steps_one_process_takes_and_resume_under_fsdp_and_ddp(tmp_path, pairs):
    one, two = tmp_path / "one", tmp_path / "two"
    a = one_process("dpo", options(pairs, one, batch_size=8))
    assert a.returncode == 0, a.stderr[-3000:]
    b = launch("dpo", options(pairs, two))
    assert b.returncode == 0, b.stderr[-3000:]
    assert "FSDP: the model is sharded over 2 processes" in b.stdout
    assert "82 sequences scored by 2 processes" in b.stdout  # the reference pass is split, on the sharded model
    for x, y in zip(rows(one), rows(two), strict=True):
        for key in ("loss", "logps/chosen", "rewards/margins", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), key
    for x, y in zip(rows(one, "displacement.jsonl"), rows(two, "displacement.jsonl"), strict=True):  # evaluation, on the shards
        for key in ("mean_chosen_change", "mean_rejected_change", "implicit_reward_accuracy"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), key
    # The final model and the checkpoints hold the whole model, gathered from the shards (lr / 100 apart).
    assert_same_tensors(load_file(str(one / "final" / "model.safetensors")), load_file(str(two / "final" / "model.safetensors")), 3e-5)
    assert_same_tensors(load_file(str(one / "checkpoint-4" / "model.safetensors")),
                        load_file(str(two / "checkpoint-4" / "model.safetensors")), 3e-5)
    assert b.stdout.count("done:") == 1

    # The checkpoints hold the whole state, the optimizer's keyed by position as an unsharded run keys it: a copy cut
    # back to checkpoint-2 resumes under FSDP and under DDP to the same end.
    whole = two
    for name, fsdp in (("fsdp", True), ("ddp", False)):
        resumed = tmp_path / name
        shutil.copytree(whole, resumed)
        shutil.rmtree(resumed / "final")
        shutil.rmtree(resumed / "checkpoint-4")
        r = launch("dpo", ["--resume", *options(pairs, resumed)], fsdp=fsdp)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "resumed from step 2" in r.stdout, name
        assert_same_tensors(load_file(str(whole / "final" / "model.safetensors")), load_file(str(resumed / "final" / "model.safetensors")), 1e-6)
        assert [x["loss"] for x in rows(resumed)] == pytest.approx([x["loss"] for x in rows(whole)], abs=1e-6), name


def test_a_reward_model_saves_the_whole_state_it_is_given(tmp_path, tiny_model):
    """Under FSDP (and DeepSpeed) the final save gets the gathered whole state, since the module holds shards: the
    reward model writes its LM and head from those tensors, not from its own parameters."""
    from alignscope.models.reward_model import RewardModel

    rm = RewardModel(tiny_model)
    whole = {k: v.detach().clone() + 1 for k, v in rm.state_dict().items()}
    rm.save_pretrained(tmp_path / "rm", whole)
    saved = RewardModel.from_pretrained(tmp_path / "rm").state_dict()
    for k, v in whole.items():
        torch.testing.assert_close(saved[k], v, atol=0, rtol=0, msg=k)


def test_sharded_lora_takes_the_steps_one_process_takes(tmp_path, pairs):
    """The frozen base and the adapter share FSDP units; the final folder holds the adapter and the merged model,
    merged from the gathered tensors, as a one-process run writes them."""
    one, two = tmp_path / "one", tmp_path / "two"
    lora = {"lora.r": 4, "lora.alpha": 8, "save_steps": 100, "max_steps": 2}
    a = one_process("dpo", options(pairs, one, batch_size=8, **lora))
    assert a.returncode == 0, a.stderr[-3000:]
    b = launch("dpo", options(pairs, two, **lora))
    assert b.returncode == 0, b.stderr[-3000:]
    for x, y in zip(rows(one), rows(two), strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-5)
    adapter = "adapter/adapter_model.safetensors"
    assert_same_tensors(load_file(str(one / "final" / adapter)), load_file(str(two / "final" / adapter)), 3e-5)
    assert_same_tensors(load_file(str(one / "final" / "model.safetensors")), load_file(str(two / "final" / "model.safetensors")), 3e-5)
    assert any(v.abs().max() > 1e-3 for k, v in load_file(str(two / "final" / adapter)).items() if "lora_B" in k)


def test_fsdp_version_1_is_refused_and_ddp_is_not_sharded():
    with pytest.raises(ConfigError, match="FSDP version 2"):
        shards_model(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False), "train dpo")
    assert shards_model(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU), "train dpo") is False
    assert shards_model(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True), "train dpo") is True


def test_an_fsdp_config_that_accelerate_runs_as_ddp_is_said(monkeypatch):
    said: list[str] = []
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert shards_model(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU), "train dpo", log=said.append) is False
    assert len(said) == 1 and "accelerate runs it as MULTI_CPU" in said[0] and "whole model" in said[0]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    shards_model(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU), "train dpo", log=said.append)
    assert len(said) == 1
