"""Each offline formula's convention, pinned through `train()`: the trainer calls the tested library.

At the first step the policy still equals the reference, so every implicit reward is 0 and the
first logged loss has a value worked out by hand.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from alignscope.data.records import RankedExample
from alignscope.errors import ConfigError
from alignscope.models.scoring import score_sequences
from alignscope.options import build_config
from alignscope.training.config import TrainConfig
from alignscope.training.loop import train
from alignscope.training.methods.rank import Rank

from . import synthetic
from .test_objectives import run

LOG2 = math.log(2)


def first(rows: list[dict]) -> dict:
    return rows[0]


def test_curry_drops_tied_pairs(tmp_path):
    # Scores 2, 1, 1: pairs (0, 1) and (0, 2) have gap 1; (1, 2) ties and carries no preference.
    examples = [RankedExample(ex.prompt, ex.completions, [2.0, 1.0, 1.0]) for ex in synthetic.ranked(8)]
    _, rows = run(tmp_path, "rank", examples, rank_objective="curry", batch_size=4, max_steps=None)
    assert len(rows) == 8 * 2 // 4  # 4 steps over 16 pairs; keeping the ties would give 24 pairs, 6 steps


def test_plackett_luce_first_loss_and_tie_aware_accuracy(tmp_path):
    out, rows = run(tmp_path, "rank", synthetic.ranked(8), rank_objective="plackett_luce", batch_size=4, max_steps=1)
    # All three implicit rewards 0: -log(1/3) - log(1/2); the best and worst response tie, so accuracy ½.
    assert first(rows)["loss"] == pytest.approx(math.log(3) + LOG2, rel=1e-5)
    assert first(rows)["rewards/accuracies"] == 0.5
    assert (out / "ref_cache").is_dir()


def test_pro_is_reference_free_plackett_luce_on_mean_logps(tmp_path, tiny_model, bpe_tokenizer):
    examples = synthetic.ranked(4)
    before = copy.deepcopy(tiny_model)
    cfg = build_config(TrainConfig, {"method": "rank", "rank_objective": "pro", "data": "<memory>", "batch_size": 4,
                                     "max_steps": 1, "lr": 1e-3, "progress": False, "max_length": 64,
                                     "output_dir": str(tmp_path / "pro")})
    out = train(cfg, train_examples=examples, model=tiny_model, tokenizer=bpe_tokenizer, log=lambda *a: None)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert not (out / "ref_cache").exists()

    items, _ = Rank(cfg).items(examples, bpe_tokenizer)
    scored = score_sequences(before, [it.prompt_ids for it in items for _ in it.responses],
                             [r for it in items for r in it.responses], pad_id=bpe_tokenizer.pad_token_id)
    s = (scored.logps / scored.n_tokens).view(4, 3).double().numpy()
    by_hand = [-(s1 - np.logaddexp.reduce([s1, s2, s3])) - (s2 - np.logaddexp(s2, s3)) for s1, s2, s3 in s]
    assert row["loss"] == pytest.approx(float(np.mean(by_hand)), rel=1e-4)


@pytest.mark.parametrize("loss, expected", [("sigmoid", LOG2), ("sigmoid_norm", LOG2), ("bco_pair", 2 * LOG2)])
def test_dpo_first_loss_and_accuracy_with_the_reference(tmp_path, loss, expected):
    out, rows = run(tmp_path, "dpo", synthetic.pairs(16), loss=[loss], max_steps=1)
    # bco_pair as TRL 1.x: no running reward shift, so -2 log σ(0).
    assert first(rows)["loss"] == pytest.approx(expected, rel=1e-5)
    assert first(rows)["rewards/accuracies"] == 0.5  # every pair ties at the start: ½, not TRL's strict 0
    assert (out / "ref_cache").is_dir()  # sigmoid_norm is TRL 1.x's: it reads the reference


def test_simpo_is_reference_free(tmp_path):
    out, rows = run(tmp_path, "dpo", synthetic.pairs(16), loss=["simpo"], simpo_gamma=0.5, max_steps=2)
    assert not (out / "ref_cache").exists()
    assert math.isfinite(first(rows)["loss"])


def test_exo_pair_takes_an_epsilon_above_one_half(tmp_path):
    eps = 0.6
    _, rows = run(tmp_path, "dpo", synthetic.pairs(16), loss=["exo_pair"], label_smoothing=eps, max_steps=1)
    # At a zero margin σ = ½: ½(log ½ - log(1-ε)) + ½(log ½ - log ε).
    by_hand = 0.5 * (-LOG2 - math.log(1 - eps)) + 0.5 * (-LOG2 - math.log(eps))
    assert first(rows)["loss"] == pytest.approx(by_hand, rel=1e-5)
    with pytest.raises(ConfigError, match="below 0.5 with sigmoid"):
        build_config(TrainConfig, {"data": "x", "loss": ["exo_pair", "sigmoid"], "label_smoothing": eps})


def test_reward_ensemble_uses_the_population_std(tmp_path):
    out, _ = run(tmp_path, "rm", synthetic.pairs(16), rm_heads=3, rm_aggregate="mean_minus_std", max_steps=2)
    from transformers import AutoTokenizer

    from alignscope.models.reward_model import RewardModel

    rm = RewardModel.from_pretrained(out / "final").eval()
    tok = AutoTokenizer.from_pretrained(out / "final")
    batch = tok(["yes it is good", "no it is bad"], return_tensors="pt", padding=True)
    with torch.no_grad():
        heads = rm(batch["input_ids"], batch["attention_mask"], per_head=True).double().numpy()
        reward = rm(batch["input_ids"], batch["attention_mask"]).double().numpy()
    assert reward == pytest.approx(heads.mean(1) - heads.std(1, ddof=0), rel=1e-5)
    assert not np.allclose(heads.std(1, ddof=0), heads.std(1, ddof=1))
