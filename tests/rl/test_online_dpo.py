"""Online DPO (`algorithm: online_dpo`): two samples per prompt ranked by the reward, DPO's loss against the
reference, TRL's OnlineDPOTrainer metric names, and the displacement monitor on the pairs each update trained on."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from alignscope.errors import ConfigError
from alignscope.options import build_config
from alignscope.training.rl import RLConfig, online_displacement, online_dpo_metrics, train_rl
from alignscope.world.generate import prompt_data
from alignscope.world.gold import gold_rewards
from alignscope.world.language import default_world

PROMPTS = [p.prompt for p in prompt_data(default_world(0), 32, seed=1)]


def test_online_dpo_metrics_by_hand():
    # two pairs: rows (0, 1) with row 1 chosen, rows (2, 3) with row 2 chosen
    logps = torch.tensor([-5.0, -4.0, -3.0, -6.0])
    ref = torch.tensor([-5.0, -5.0, -4.0, -5.0])
    chosen = torch.tensor([0, 1, 1, 0])
    after = torch.tensor([-5.5, -3.5, -3.2, -7.0])
    m = online_dpo_metrics(0.5, logps, ref, chosen, after)
    # implicit rewards beta*(logp - ref): chosen rows 1, 2 -> 0.5, 0.5; rejected rows 0, 3 -> 0, -0.5
    assert m["rewards/chosen"] == pytest.approx(0.5)
    assert m["rewards/rejected"] == pytest.approx(-0.25)
    assert m["rewards/margins"] == pytest.approx(0.75)
    assert m["rewards/accuracies"] == pytest.approx(1.0)
    assert m["logps/chosen"] == pytest.approx(-3.5) and m["logps/rejected"] == pytest.approx(-5.5)
    # the update moved chosen by +0.5 and -0.2, rejected by -0.5 and -1.0
    assert m["displacement/mean_chosen_change"] == pytest.approx(0.15)
    assert m["displacement/fraction_chosen_fell"] == pytest.approx(0.5)
    assert m["displacement/mean_rejected_change"] == pytest.approx(-0.75)


def test_online_displacement_fires_on_a_falling_window_only():
    row = lambda mean, fell: {"displacement/mean_chosen_change": mean, "displacement/fraction_chosen_fell": fell}  # noqa: E731
    rising = [row(0.2, 0.1)] * 8
    assert online_displacement(rising, steps=8, fired=False) == []
    assert online_displacement([row(-0.3, 0.9)] * 4, steps=8, fired=False) == []  # shorter than the window of 5
    falling = rising[:3] + [row(-0.3, 0.8)] * 5
    (p,) = online_displacement(falling, steps=8, fired=False)
    assert p.name == "likelihood displacement" and "trained pairs over the last 5 steps" in p.message
    assert p.size == pytest.approx(0.8)
    assert online_displacement(falling, steps=8, fired=True) == []  # once per run
    assert online_displacement(rising[:12] + [row(-0.1, 0.2)] * 2, steps=40, fired=False) == []  # window max(5, 40 // 4) = 10


@pytest.mark.parametrize("over, message", [
    ({"samples_per_prompt": 4}, "set samples_per_prompt: 2"),
    ({"micro_batch_size": 3}, "use an even micro_batch_size"),
    ({"loss_type": "grpo"}, "policy-gradient options"),
])
def test_online_dpo_config_errors(tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        build_config(RLConfig, {"algorithm": "online_dpo", "samples_per_prompt": 2, "output_dir": str(tmp_path / "x"), **over})


def test_online_dpo_trains_with_the_dpo_loss_and_logs_the_monitor(tmp_path, lab_tiny):
    model = copy.deepcopy(lab_tiny[0])
    cfg = RLConfig(algorithm="online_dpo", samples_per_prompt=2, prompts_per_step=8, steps=6, max_new_tokens=16, lr=1e-3, beta=0.1,
                   output_dir=str(tmp_path / "run"), progress=False, micro_batch_size=4)
    train_rl(cfg, model=model, tokenizer=lab_tiny[1], prompts=PROMPTS, reward=gold_rewards, log=lambda *a: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    trained = [r for r in rows if "loss" in r]
    # at the first update the policy is the reference: every pair's DPO loss is -log sigmoid(0) = log 2
    assert trained[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert trained[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    for r in trained:
        assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "displacement/mean_chosen_change",
                "displacement/fraction_chosen_fell"} <= set(r)
        assert "clip_fraction" not in r  # no ratio is clipped in DPO
        assert r["groups_sampled"] >= len(PROMPTS[:8]) and r["zero_variance_fraction"] < 1  # tied pairs are dropped, not trained
    assert trained[-1]["rewards/margins"] > 0  # the policy now prefers its chosen samples more than the reference does
    assert trained[-1]["kl"] > 0
