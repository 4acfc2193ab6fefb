"""The device/precision policy: resolution, clear errors, and bf16 scoring against fp32 (CPU bf16)."""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import pytest
import torch

from alignscope.errors import ConfigError, ModelError
from alignscope.models.device import (
    DeviceOptions,
    add_device_arguments,
    place_model,
    placement_from_args,
    resolve_placement,
)
from alignscope.models.scoring import pad_token_id, score_sequences

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without a GPU")


@no_gpu
def test_auto_is_cpu_float32_without_a_gpu():
    p = resolve_placement()
    assert (p.device.type, p.dtype, p.attn_implementation) == ("cpu", torch.float32, "sdpa")
    assert resolve_placement("cpu", "bfloat16", "eager").dtype is torch.bfloat16


@no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_names_problem_and_fix(device):
    with pytest.raises(ModelError, match="no usable CUDA GPU") as e:
        resolve_placement(device)
    assert "device=cpu" in e.value.fix


def test_bad_specs():
    with pytest.raises(ConfigError, match="cuda:N"):
        DeviceOptions(device="gpu0")
    with pytest.raises(ModelError, match="only on a CUDA GPU"):
        resolve_placement("cpu", "bfloat16", "flash_attention_2")


def test_argparse_flags_round_trip():
    parser = argparse.ArgumentParser()
    add_device_arguments(parser)
    p = placement_from_args(parser.parse_args(["--device", "cpu", "--dtype", "bfloat16", "--attn-implementation", "eager"]))
    assert (p.device.type, p.dtype_name, p.attn_implementation) == ("cpu", "bfloat16", "eager")


def test_bf16_scoring_within_tolerance_of_fp32(tiny_model, bpe_tokenizer):
    """bf16 weights, float32 sums: each sequence's log-prob within 1e-3 (relative) of fp32's, each token's within 0.01 nats."""
    g = torch.Generator().manual_seed(0)
    vocab = len(bpe_tokenizer)
    prompts = [torch.randint(5, vocab, (int(n),), generator=g).tolist() for n in torch.randint(3, 12, (12,), generator=g)]
    responses = [torch.randint(5, vocab, (int(n),), generator=g).tolist() for n in torch.randint(1, 60, (12,), generator=g)]
    pad = pad_token_id(bpe_tokenizer)
    ref = score_sequences(tiny_model, prompts, responses, pad_id=pad, return_token_logps=True)
    bf16 = place_model(copy.deepcopy(tiny_model), resolve_placement("cpu", "bfloat16"))
    assert next(bf16.parameters()).dtype is torch.bfloat16
    out = score_sequences(bf16, prompts, responses, pad_id=pad, return_token_logps=True)
    assert out.logps.dtype is torch.float32 and out.token_logps[0].dtype is torch.float32
    relative = (out.logps - ref.logps).abs() / ref.logps.abs()
    assert float(relative.max()) < 1e-3, relative
    for a, b in zip(out.token_logps, ref.token_logps):
        assert torch.allclose(a.sum(), torch.as_tensor(float(a.double().sum()), dtype=torch.float32), atol=1e-4)
        assert float((a - b).abs().max()) < 0.01


@no_gpu
def test_bon_with_device_cuda_exits_2_before_any_work(tmp_path, capsys, lab_tiny):
    from alignscope.cli.main import main
    from alignscope.world.generate import prompt_data
    from alignscope.world.language import default_world

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p.prompt}) + "\n" for p in prompt_data(default_world(0), 2, seed=2)))
    argv = ["bon", "--policy", "lab:tiny", "--prompts", str(prompts), "--reward", "lab:gold", "--out", str(tmp_path / "b.jsonl")]
    assert main(argv + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no usable CUDA GPU" in err and "fix: use device=cpu" in err and "Traceback" not in err
    assert main(argv + ["--device", "cpu", "--dtype", "bfloat16", "--n", "2", "--max-new-tokens", "4"]) == 0
    assert (tmp_path / "b.jsonl").exists()


@no_gpu
@pytest.mark.parametrize("command", ["dpo", "rl"])
def test_train_with_device_cuda_exits_2_and_writes_nothing(tmp_path, capsys, command):
    from alignscope.cli.main import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(8)))
    source = f"data={data}" if command == "dpo" else f"prompts={data}"
    extra = [] if command == "dpo" else ["reward=lab:gold"]
    assert main(["train", command, source, *extra, "model=tiny", f"output_dir={tmp_path / 'run'}", "device=cuda:1", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert "device=cuda:1" in err and "fix:" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def _safetensors_dtypes(folder) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(next(folder.glob("*.safetensors"))), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


def test_dpo_and_rl_train_in_bfloat16_on_cpu(tmp_path):
    """dtype=bfloat16 loads, trains and saves 16-bit weights; the losses stay finite (log-prob sums are float32)."""
    from alignscope.options import build_config
    from alignscope.training.config import RLConfig, TrainConfig
    from alignscope.training.loop import train
    from alignscope.training.rl import train_rl
    from alignscope.world.generate import pairwise_data, prompt_data
    from alignscope.world.gold import gold_rewards
    from alignscope.world.language import default_world

    pairs = pairwise_data(default_world(0), 16, seed=3, noise=0.0)
    out = train(build_config(TrainConfig, {"method": "dpo", "data": "<memory>", "model": "lab:tiny", "dtype": "bfloat16", "batch_size": 4,
                                           "max_steps": 2, "output_dir": str(tmp_path / "dpo"), "progress": False}),
                train_examples=pairs, log=lambda *a: None)
    assert _safetensors_dtypes(out / "final") == {"BF16"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    prompts = [p.prompt for p in prompt_data(default_world(0), 8, seed=1)]
    for algorithm in ("grpo", "ppo"):
        cfg = RLConfig(algorithm=algorithm, model="lab:tiny", dtype="bfloat16", output_dir=str(tmp_path / algorithm), steps=2,
                       prompts_per_step=2, samples_per_prompt=2 if algorithm == "grpo" else 1, max_new_tokens=6, progress=False)
        run = train_rl(cfg, prompts=prompts, reward=gold_rewards, log=lambda *a: None)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows), rows
        assert _safetensors_dtypes(run / "final") == {"BF16"}


@no_gpu
@pytest.mark.parametrize("command", ["audit data", "audit rm", "compare-rm", "bon", "select-prompts"])
def test_every_model_command_refuses_a_missing_gpu_before_any_work(tmp_path, capsys, command):
    from alignscope.cli.main import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(4)))
    out = tmp_path / "out"
    argv = {
        "audit data": ["audit", "data", "--model", "lab:tiny", "--data", str(pairs), "--out", str(out)],
        "audit rm": ["audit", "rm", "--rm", "lab:gold", "--policy", "lab:tiny", "--prompts", str(pairs), "--out", str(out)],
        "compare-rm": ["compare-rm", "--policy", "lab:tiny", "--ref", "lab:tiny", "--beta", "0.1", "--rm", "lab:gold",
                       "--pairs", str(pairs), "--out", str(out)],
        "bon": ["bon", "--policy", "lab:tiny", "--prompts", str(pairs), "--reward", "lab:gold", "--out", str(out / "b.jsonl")],
        "select-prompts": ["select-prompts", "--policy", "lab:tiny", "--prompts", str(pairs), "--reward", "lab:gold",
                           "--out", str(out / "s.jsonl")],
    }[command]
    assert main(argv + ["--device", "cuda", "--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert "no usable CUDA GPU" in err and "fix:" in err and "Traceback" not in err
    assert not out.exists()


def test_audit_data_in_bfloat16_ranks_pairs_like_float32(tmp_path):
    """CPU bf16 weights, float32 sums: the audit's LN-CHES ranking matches the float32 run's (Spearman > 0.9)."""
    import csv

    from scipy.stats import spearmanr

    from alignscope.cli.main import main
    from alignscope.world.generate import pairwise_data
    from alignscope.world.language import default_world

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                             for p in pairwise_data(default_world(0), 40, seed=3, noise=0.0)))
    tables = {}
    for dtype in ("float32", "bfloat16"):
        assert main(["audit", "data", "--model", "lab:tiny", "--data", str(pairs), "--out", str(tmp_path / dtype), "--dtype", dtype]) == 0
        with open(tmp_path / dtype / "ches.csv") as f:
            tables[dtype] = [float(r["ln_ches"]) for r in csv.DictReader(f)]
    assert len(tables["float32"]) == 40 and tables["float32"] != tables["bfloat16"]  # the dtype was applied
    assert spearmanr(tables["float32"], tables["bfloat16"]).statistic > 0.9
