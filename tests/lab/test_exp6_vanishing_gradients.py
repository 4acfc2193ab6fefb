"""Experiment 6's quick version: prompts with zero reward std stall under RL; SFT, or a short SFT warm-up, unblocks them."""

from __future__ import annotations


def test_low_std_prompts_stall_under_rl_and_a_short_sft_warmup_unblocks_them(tmp_path, lab_tiny, experiment):
    r = experiment("exp6_vanishing_gradients").run(tmp_path, seed=0, quick=True, log=lambda *a: None)
    n_low = sum(r["initial"]["low_std"])
    assert n_low >= 5, r["initial"]["low_std_fraction"]
    rl, sft, warm, warm_rl = (r["runs"][k] for k in ("rl", "sft", "warmup_only", "warmup_then_rl"))
    # RL on the true reward barely moves the prompts whose reward never varies; SFT on them fits them.
    assert rl["gain_low_std"] < 0.5, rl["gain_low_std"]
    assert rl["initially_low_not_moved"] >= n_low / 2, rl["initially_low_not_moved"]
    assert rl["steps_to_gain_low_std"] is None
    assert sft["gain_low_std"] > rl["gain_low_std"] + 1.5, (sft["gain_low_std"], rl["gain_low_std"])
    # A few SFT steps on two of those prompts remove most low-std prompts, and the same RL run then lifts them.
    assert warm["low_std_fraction"] < r["initial"]["low_std_fraction"] / 2, warm["low_std_fraction"]
    assert warm_rl["gain_low_std"] > rl["gain_low_std"] + 1.0, (warm_rl["gain_low_std"], rl["gain_low_std"])
    assert warm_rl["steps_to_gain_low_std"] is not None
