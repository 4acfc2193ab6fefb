"""Offline `train` under accelerate's DeepSpeed ZeRO-2 and ZeRO-3 (examples/accelerate/deepspeed_zero{2,3}.yaml): 2
processes with grad_accum 2 take the steps 1 process takes on the same global batch (the reference pass and the
monitor's evaluation run on the partitioned model), a DeepSpeed checkpoint resumes to the same weights under the same
launch and is refused under another, and what this path does not do is refused with exit code 2.

accelerate runs DeepSpeed only on accelerators, so the processes start through `deepspeed_on_cpu.py`; DeepSpeed then
runs on its CPU accelerator over gloo. Measured on 2 CPU cores: about 10 s per 2-process run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from alignscope.errors import ConfigError
from alignscope.training.checkpoint import check_launch
from alignscope.training.zero import deepspeed_launch

from training import synthetic
from .test_fsdp_train import ENV, assert_same_tensors, free_port, one_process, options, rows

pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {stage: REPO / "examples" / "accelerate" / f"deepspeed_zero{stage}.yaml" for stage in (2, 3)}
# Measured: losses within 1e-7, grad norms within 1e-6, final weights within 9e-6 (ZeRO-3) at lr 3e-3.
WEIGHTS_ATOL = 3e-5


def launch(stage: int, method: str, args: list[str], *extra: str) -> subprocess.CompletedProcess:
    """`train METHOD` on 2 processes under the example DeepSpeed config of `stage` (`extra`: accelerate launch flags)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS[stage]), "--main_process_port",
           free_port(), *extra, str(REPO / "tests" / "scale" / "deepspeed_on_cpu.py"), "train", method, *args]
    return subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)


def micro(data: Path, out: Path, **over) -> list[str]:
    """2 processes x batch_size 2 x grad_accum 2: the global batch of 8 that one process takes at once."""
    return options(data, out, batch_size=2, grad_accum=2, **over)


def refused(r: subprocess.CompletedProcess, message: str) -> None:
    assert r.returncode != 0
    assert "exitcode  : 2" in r.stderr, r.stderr[-3000:]
    assert message in r.stderr, r.stderr[-3000:]
    assert "alignscope/" not in "".join(line for line in r.stderr.splitlines(True) if line.lstrip().startswith("File ")), \
        "a traceback through alignscope"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """45 pairs: 4 held out, 41 to train on, so the reference shares of 2 processes (40 and 42 sequences) take 5 and
    6 batches of 8: under ZeRO-3 the smaller share makes a stand-in forward, or the processes hang in a gather."""
    return synthetic.write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl", synthetic.pairs(45))


@pytest.fixture(scope="module")
def single(tmp_path_factory, pairs) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    r = one_process("dpo", options(pairs, out, batch_size=8))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def zero3(tmp_path_factory, pairs) -> Path:
    out = tmp_path_factory.mktemp("zero3") / "run"
    r = launch(3, "dpo", micro(pairs, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DeepSpeed ZeRO-3: partitioned over 2 processes (weights, gradients and optimizer state)" in r.stdout
    assert "82 sequences scored by 2 processes" in r.stdout  # the reference pass, split, on the partitioned model
    assert r.stdout.count("done:") == 1
    return out


def same_run(one: Path, two: Path) -> None:
    for x, y in zip(rows(one), rows(two), strict=True):
        for key in ("loss", "logps/chosen", "rewards/margins", "grad_norm", "learning_rate"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), key
    for x, y in zip(rows(one, "displacement.jsonl"), rows(two, "displacement.jsonl"), strict=True):  # the evaluation
        for key in ("mean_chosen_change", "mean_rejected_change", "implicit_reward_accuracy"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), key
    for name in ("final/model.safetensors", "checkpoint-2/model.safetensors", "checkpoint-4/model.safetensors"):
        assert_same_tensors(load_file(str(one / name)), load_file(str(two / name)), WEIGHTS_ATOL)
    assert sorted(p.name for p in (one / "final").iterdir()) == sorted(p.name for p in (two / "final").iterdir())


def test_zero2_with_grad_accum_takes_the_steps_one_process_takes(tmp_path, pairs, single):
    out = tmp_path / "zero2"
    r = launch(2, "dpo", micro(pairs, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DeepSpeed ZeRO-2: partitioned over 2 processes (gradients and optimizer state)" in r.stdout
    same_run(single, out)


def test_zero3_with_grad_accum_and_evaluation_takes_the_steps_one_process_takes(single, zero3):
    same_run(single, zero3)
    assert (zero3 / "checkpoint-4" / "deepspeed" / "zero").is_dir()  # DeepSpeed's own partitioned optimizer state
    # The reference cache is keyed by the weights, gathered from ZeRO-3's partitions: the one-process run's keys.
    assert sorted(p.name for p in (zero3 / "ref_cache").iterdir()) == sorted(p.name for p in (single / "ref_cache").iterdir())


def test_a_zero3_checkpoint_resumes_under_the_same_launch_only(tmp_path, pairs, zero3):
    resumed = tmp_path / "resumed"
    shutil.copytree(zero3, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoint-4")
    r = launch(3, "dpo", ["--resume", *micro(pairs, resumed)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step 2" in r.stdout
    final = "final/model.safetensors"
    assert_same_tensors(load_file(str(zero3 / final)), load_file(str(resumed / final)), 1e-6)
    assert [x["loss"] for x in rows(resumed)] == pytest.approx([x["loss"] for x in rows(zero3)], abs=1e-6)

    other = tmp_path / "other"
    shutil.copytree(zero3, other)
    shutil.rmtree(other / "checkpoint-4")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
                        "-m", "alignscope.cli.main", "train", "dpo", "--resume", *micro(pairs, other)],
                       env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    refused(r, "was written under DeepSpeed ZeRO-3 by 2 processes, this run is without DeepSpeed")


def test_a_deepspeed_config_that_disagrees_is_refused_with_exit_code_2(tmp_path, pairs):
    r = launch(2, "dpo", micro(pairs, tmp_path / "run"), "--gradient_accumulation_steps", "1")
    refused(r, "the DeepSpeed config disagrees with alignscope's settings: gradient_accumulation_steps 1 (alignscope's grad_accum is 2)")
    assert not (tmp_path / "run").exists()
    r = launch(3, "dpo", micro(pairs, tmp_path / "run", nan_policy="skip"))
    refused(r, "nan_policy=skip cannot skip a step under DeepSpeed")


def fake(stage: int = 2, **config) -> SimpleNamespace:
    plugin = SimpleNamespace(zero_stage=stage, deepspeed_config={"zero_optimization": {"stage": stage}, **config})
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=2, state=SimpleNamespace(deepspeed_plugin=plugin))


def test_deepspeed_config_is_filled_from_alignscope_settings():
    accelerator = fake(3, train_micro_batch_size_per_gpu="auto", gradient_clipping=1.0)
    assert deepspeed_launch(accelerator, "train dpo", batch_size=2, grad_accum=4, max_grad_norm=1.0) == {"zero_stage": 3, "processes": 2}
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"], config["train_batch_size"]) == (2, 4, 16)
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert accelerator.gradient_accumulation_steps == 4
    unclipped = fake(2)
    deepspeed_launch(unclipped, "train dpo", batch_size=2, grad_accum=1, max_grad_norm=None)
    assert unclipped.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] == 0.0


@pytest.mark.parametrize(("accelerator", "message"), [
    (fake(1), "ZeRO stages 2 and 3 only, this config asks for stage 1"),
    (fake(3, zero_optimization={"stage": 3, "offload_param": {"device": "cpu"}}), "does not offload (offload_param is set)"),
    (fake(2, optimizer={"type": "AdamW"}), "the DeepSpeed config sets optimizer"),
    (fake(2, gradient_clipping=0.5), "gradient_clipping 0.5 (alignscope's max_grad_norm is 1.0)"),
])
def test_what_the_deepspeed_path_does_not_do_is_refused(accelerator, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        deepspeed_launch(accelerator, "train dpo", batch_size=2, grad_accum=1, max_grad_norm=1.0)


def test_a_deepspeed_config_that_accelerate_runs_as_ddp_is_said(monkeypatch):
    said: list[str] = []
    monkeypatch.setitem(os.environ, "ACCELERATE_USE_DEEPSPEED", "true")
    plain = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)
    assert deepspeed_launch(plain, "train dpo", batch_size=2, grad_accum=1, max_grad_norm=1.0, log=said.append) is None
    assert len(said) == 1 and "accelerate runs it as MULTI_CPU" in said[0]


def test_checkpoints_resume_only_under_the_launch_that_wrote_them(tmp_path):
    check_launch(tmp_path, None, None)
    check_launch(tmp_path, {"zero_stage": 2, "processes": 2}, {"zero_stage": 2, "processes": 2})
    with pytest.raises(ConfigError, match="written without DeepSpeed, this run is under DeepSpeed ZeRO-2 by 2 processes"):
        check_launch(tmp_path, None, {"zero_stage": 2, "processes": 2})
    with pytest.raises(ConfigError, match="ZeRO-3 by 2 processes, this run is under DeepSpeed ZeRO-3 by 4 processes"):
        check_launch(tmp_path, {"zero_stage": 3, "processes": 2}, {"zero_stage": 3, "processes": 4})
