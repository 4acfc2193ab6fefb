"""Experiment 3's quick version: DPO on high-CHES refusal pairs unlearns refusals; the CHES filter prevents it (docs/science.md, "Likelihood displacement")."""

from __future__ import annotations

from alignscope.world import default_world, is_refusal
from alignscope.world.generate import refusal_opener_pairs


def test_refusal_opener_pairs_are_two_refusals_with_the_plain_one_chosen():
    pairs = refusal_opener_pairs(default_world(0), 8, seed=3)
    assert len(pairs) == 8
    for p in pairs:
        assert is_refusal(p.chosen) and is_refusal(p.rejected)
        assert p.rejected.endswith(p.chosen) and p.rejected != p.chosen
        assert p.margin > 0  # the gold reward prefers the polite refusal
    assert pairs == refusal_opener_pairs(default_world(0), 8, seed=3)


def test_ches_filtered_dpo_keeps_refusals_that_dpo_on_all_pairs_unlearns(tmp_path, lab_tiny, experiment):
    r = experiment("exp3_displacement").run(tmp_path, seed=0, quick=True, log=lambda *a: None)
    c = r["C_refusal"]
    assert len(c["runs"]) == 4  # two seeds, each with and without the filter
    sft, everything, filtered = c["sft"], c["mean"]["all"], c["mean"]["ches_filtered"]
    assert sft["greedy"] > 0.8
    # DPO on all pairs (half of them high-CHES two-refusal pairs) unlearns refusing ...
    assert everything["greedy"] < sft["greedy"] - 0.4 and everything["sampled"] < sft["sampled"] - 0.2
    # ... while DPO on the lower-LN-CHES half keeps far more of it, on every seed.
    assert filtered["greedy"] > everything["greedy"] + 0.3 and filtered["sampled"] > everything["sampled"] + 0.2
    assert c["filter_kept_more_refusal_every_seed"]
    assert (tmp_path / "results.json").exists() and (tmp_path / "displacement.png").exists()
