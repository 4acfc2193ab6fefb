"""Training runs end to end through the padding-free layout and learns exactly what padded batches learn.

The lab's models load with sdpa attention (the Hugging Face default), so DPO, the reward model and RL go
through `models/attention.py` here; `padding_free: false` on the same model gives the padded runs to compare.
"""

from __future__ import annotations

import copy
import json

import pytest

from alignscope.models import reward_model, scoring
from alignscope.options import build_config
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train
from alignscope.training.rl import RLConfig, train_rl
from alignscope.world.generate import prompt_data
from alignscope.world.language import default_world

from . import synthetic


@pytest.fixture
def sdpa_model(lab_tiny):
    model, tok = copy.deepcopy(lab_tiny[0]), lab_tiny[1]
    model.set_attn_implementation("sdpa")  # already the default on load; explicit so the test does not depend on it
    return model, tok


@pytest.fixture
def packed_calls(monkeypatch):
    """How many batches each layout scored."""
    seen = {"packed": 0, "padded": 0}
    real = scoring.run_body

    def counting(body, layout):
        seen["packed" if layout.plan is not None else "padded"] += 1
        return real(body, layout)

    monkeypatch.setattr(scoring, "run_body", counting)
    monkeypatch.setattr(reward_model, "run_body", counting)
    return seen


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["dpo", "rm"])
def test_training_padding_free_equals_padded(tmp_path, sdpa_model, packed_calls, method):
    model, tok = sdpa_model
    runs = {}
    for padding_free in (True, False):
        raw = {"method": method, "model": "lab:tiny", "data": "<memory>", "output_dir": str(tmp_path / f"{method}{padding_free}"),
               "batch_size": 4, "max_steps": 3, "lr": 1e-3, "progress": False, "max_length": 64, "padding_free": padding_free,
               "logging_steps": 1}
        m = copy.deepcopy(model)
        out = train(build_config(TrainConfig, raw), train_examples=synthetic.pairs(12), model=m, tokenizer=tok, log=lambda *a: None)
        runs[padding_free] = metrics(out)
    assert packed_calls["packed"] >= 3 and packed_calls["padded"] >= 3
    rows_p, rows_d = runs[True], runs[False]
    assert len(rows_p) == len(rows_d) == 3
    # Steps 2 and 3 score parameters updated by Adam, which amplifies fp32 rounding where a gradient is near zero:
    # the losses still agree to 1e-4.
    for a, b in zip(rows_p, rows_d):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], rel=1e-3, abs=1e-4)


def lengths(prompts, texts):
    """A reward with variance in every group, so every group trains."""
    return [float(len(t)) for t in texts]


def test_rl_step_padding_free_equals_padded(tmp_path, sdpa_model, packed_calls):
    model, tok = sdpa_model
    prompts = [p.prompt for p in prompt_data(default_world(0), 8, seed=1)]
    rows = {}
    for padding_free in (True, False):
        cfg = RLConfig(algorithm="rloo", output_dir=str(tmp_path / f"rl{padding_free}"), steps=1,
                       prompts_per_step=4, samples_per_prompt=4, max_new_tokens=12, lr=1e-4, kl_coef=0.05, progress=False,
                       padding_free=padding_free)
        out = train_rl(cfg, model=copy.deepcopy(model), tokenizer=tok, prompts=prompts, reward=lengths, log=lambda *a: None)
        rows[padding_free] = metrics(out)[0]
    assert packed_calls["packed"] >= 2 and packed_calls["padded"] >= 2
    for key in ("loss", "entropy", "reward/proxy_mean"):  # entropy: from the scored log-probs of the rollouts
        assert rows[True][key] == pytest.approx(rows[False][key], rel=1e-4, abs=1e-5), key
