"""Every objective trains the tiny model for a few steps on synthetic data, with the loss falling."""

from __future__ import annotations

import json

import pytest

from alignscope.options import build_config
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train

from . import synthetic


def run(tmp_path, method, examples, eval_examples=None, **over):
    raw = {"method": method, "model": "tiny", "data": "<memory>", "output_dir": str(tmp_path / method), "batch_size": 8,
           "max_steps": 12, "lr": 3e-3, "progress": False, "max_length": 64, **over}
    cfg = build_config(TrainConfig, raw)
    out = train(cfg, train_examples=examples, eval_examples=eval_examples, log=lambda *a: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, rows


def falls(rows, key="loss"):
    v = [r[key] for r in rows]
    return sum(v[-3:]) / 3 < sum(v[:3]) / 3


def test_sft(tmp_path):
    _, rows = run(tmp_path, "sft", synthetic.sft())
    assert falls(rows)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "robust", "sigmoid_norm", "nca_pair", "sppo_hard", "apo_zero", "exo_pair", "bco_pair", "sigmoid,sft:0.5"])
def test_dpo_family(tmp_path, loss):
    out, rows = run(tmp_path, "dpo", synthetic.pairs(), synthetic.pairs(16, seed=1), loss=loss.split(","),
                    label_smoothing=0.1 if loss == "robust" else 0.0)
    assert falls(rows)
    for key in ("loss", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert key in rows[-1]
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]
    disp = [json.loads(line) for line in (out / "displacement.jsonl").read_text().splitlines()]
    assert disp[0]["step"] == 0 and disp[-1]["step"] == 12
    evals = [json.loads(line) for line in (out / "eval_logps.jsonl").read_text().splitlines()]
    assert len(evals[-1]["chosen"]) == 16 and len(evals[-1]["rejected"]) == 16


def test_orpo(tmp_path):
    _, rows = run(tmp_path, "dpo", synthetic.pairs(), orpo=True)
    assert falls(rows)


def test_kto(tmp_path):
    _, rows = run(tmp_path, "kto", synthetic.unpaired())
    assert falls(rows)


@pytest.mark.parametrize("objective", ["plackett_luce", "curry"])
def test_rank(tmp_path, objective):
    _, rows = run(tmp_path, "rank", synthetic.ranked(), rank_objective=objective, max_steps=10)
    assert falls(rows)


def test_reward_model_separable(tmp_path):
    out, rows = run(tmp_path, "rm", synthetic.pairs(64), max_steps=24, lr=3e-3, rm_heads=2)
    assert falls(rows)
    from transformers import AutoTokenizer

    from alignscope.models.reward_model import RewardModel
    from alignscope.rewards.sources import ModelReward

    rm = RewardModel.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    held = synthetic.pairs(40, seed=7)
    source = ModelReward(rm, tok)
    r_c = source([p.prompt for p in held], [p.chosen for p in held])
    r_r = source([p.prompt for p in held], [p.rejected for p in held])
    assert float((r_c > r_r).float().mean()) > 0.9


def test_unknown_loss_is_a_config_error():
    from alignscope.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'sigmoid'"):
        build_config(TrainConfig, {"data": "x", "loss": ["sigmoyd"]})


def test_too_small_dataset_errors(tmp_path):
    from alignscope.errors import ConfigError

    with pytest.raises(ConfigError, match="fewer than one global batch"):
        run(tmp_path, "dpo", synthetic.pairs(4))
