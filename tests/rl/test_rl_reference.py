"""The frozen reference of full fine-tuning: a copy independent of the policy, kept on the CPU with
ref_offload, and a run with it offloaded takes the same steps as one without (on a CPU both copies share
the device, so the run test checks that the offloaded copy is the one scored)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from alignscope.errors import ConfigError
from alignscope.training import rl
from alignscope.training.rl import RLConfig, frozen_reference, train_rl
from alignscope.world.generate import prompt_data
from alignscope.world.gold import gold_rewards
from alignscope.world.language import default_world

PROMPTS = [p.prompt for p in prompt_data(default_world(0), 16, seed=1)]


def test_frozen_reference_is_an_independent_frozen_copy_on_the_cpu(tiny_model):
    policy = copy.deepcopy(tiny_model).train()
    ref = frozen_reference(policy, offload=True)
    assert {p.device.type for p in ref.parameters()} == {"cpu"}
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    assert all(p.requires_grad for p in policy.parameters())
    name, weight = next(iter(ref.named_parameters()))
    with torch.no_grad():
        dict(policy.named_parameters())[name].add_(1.0)
    assert not torch.equal(weight, dict(policy.named_parameters())[name])


def test_ref_offload_runs_score_the_offloaded_copy_and_match(tmp_path, lab_tiny, monkeypatch):
    scored = []
    score_batch = rl.score_batch

    def spy(model, *args, **kwargs):
        if not any(p.requires_grad for p in model.parameters()):  # the frozen reference, not the policy's Scorer
            scored.append({p.device.type for p in model.parameters()})
        return score_batch(model, *args, **kwargs)

    monkeypatch.setattr(rl, "score_batch", spy)
    rows = {}
    for offload in (False, True):
        out = tmp_path / f"offload-{offload}"
        cfg = RLConfig(algorithm="grpo", output_dir=str(out), steps=2, prompts_per_step=4, samples_per_prompt=4, max_new_tokens=8,
                       lr=1e-3, kl_coef=0.1, num_iterations=2, progress=False, ref_offload=offload)
        train_rl(cfg, model=copy.deepcopy(lab_tiny[0]), tokenizer=lab_tiny[1], prompts=PROMPTS, reward=gold_rewards, log=lambda *a: None)
        rows[offload] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert scored and all(devices == {"cpu"} for devices in scored)  # the reference pass of every step ran on the CPU copy
    assert len(scored) == 2 * 2  # one reference pass per step, in each run
    for a, b in zip(rows[False], rows[True], strict=True):
        for key in ("loss", "kl", "reward/proxy_mean", "entropy"):
            assert b[key] == a[key], key
    assert rows[True][-1]["kl"] > 0  # the policy moved away from the reference it was compared with


def test_ref_offload_with_lora_is_refused():
    with pytest.raises(ConfigError, match="no copy to move"):
        RLConfig(ref_offload=True, lora={"r": 4, "alpha": 8})
