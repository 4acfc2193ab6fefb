"""Experiment 1's quick version: tabular softmax policies obey the Var^(-1/2) time bound (docs/science.md, "Reward variance")."""

from __future__ import annotations


def test_steps_scale_as_inverse_sqrt_variance_and_low_variance_teaches_slowly(tmp_path, experiment):
    r = experiment("exp1_tabular_variance").run(tmp_path, seed=0, quick=True, log=lambda *a: None)
    a, b = r["A_scaled"], r["B_concentrated"]
    # Scaling an accurate RM by c rescales time by 1/c and variance by c^2: exactly the tabular -1/2.
    assert abs(a["slope_within_prompt_mean"] + 0.5) < 0.03, a["slope_within_prompt_mean"]
    assert abs(a["slope_within_prompt_small_lr"] + 0.5) < 0.03, a["slope_within_prompt_small_lr"]
    # A concentrated reference is slower still: the bound is a lower bound on time.
    assert b["slope_within_prompt_mean"] < -0.6, b["slope_within_prompt_mean"]
    bound = list(r["min_t_sqrt_var_by_decade"].values())
    assert min(bound[:-1]) > 0.5 * max(bound), bound
    rows = {row["rm"]: row for row in r["C_teachers"]["rows"]}
    slow = rows["0.05 x gold (accurate, low variance)"]
    noisy = rows["gold, 25% shuffled (inaccurate)"]
    assert slow["accuracy"] == 1.0 and noisy["accuracy"] < 0.95
    assert slow["gold_gain"] < 0.5 * noisy["gold_gain"], (slow, noisy)
    assert (tmp_path / "results.json").exists() and (tmp_path / "steps_vs_variance.png").exists()
