"""Experiment 2's quick version: a perfectly accurate RM with low reward variance teaches slower (docs/science.md, "Reward variance")."""

from __future__ import annotations


def test_accurate_low_variance_rm_gains_less_gold_than_noisy_high_variance_rm(tmp_path, lab_tiny, experiment):
    r = experiment("exp2_teachers").run(tmp_path, seed=0, quick=True, log=lambda *a: None)
    rows = {row["rm"]: row for row in r["rows"]}
    slow, noisy = rows["gold x0.001 on 90% of prompts"], rows["gold + noise (sd 0.5)"]
    assert len(slow["gold_gain_per_seed"]) == 2  # the gains are means over two RL seeds
    # The scaled RM orders every pair as gold does, the noisy one does not, yet the scaled one induces less variance.
    assert slow["onpolicy_accuracy"] == 1.0 and noisy["onpolicy_accuracy"] < 0.95
    assert slow["raw_variance"] < 0.25 * noisy["raw_variance"]
    # Same RLOO steps: the accurate low-variance teacher raises the held-out gold reward less.
    assert slow["gold_gain"] < noisy["gold_gain"] - 0.1, (slow["gold_gain_per_seed"], noisy["gold_gain_per_seed"])
    assert noisy["gold_gain"] > 0.05
    assert (tmp_path / "results.json").exists() and (tmp_path / "teachers.png").exists()
