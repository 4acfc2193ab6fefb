"""Experiment 6's quick version: prompts with zero reward std stall under RL; SFT, or a short SFT warm-up, unblocks them.

Pooled over three seeds: in one seed of three RL's samples happen to vary on the low-std prompts early and RL lifts them
(seed 0 with one thread), which is the paper's point too (slow, not impossible), so a single seed flips with the machine's
floating point. The claims are about the typical run.
"""

from __future__ import annotations

SEEDS = (0, 1, 2)


def test_low_std_prompts_stall_under_rl_and_a_short_sft_warmup_unblocks_them(tmp_path, lab_tiny, experiment):
    exp = experiment("exp6_vanishing_gradients")
    results = [exp.run(tmp_path / f"seed{s}", seed=s, quick=True, log=lambda *a: None) for s in SEEDS]
    n_low = [sum(r["initial"]["low_std"]) for r in results]
    assert min(n_low) >= 5, n_low

    def mean(run: str, key: str) -> float:
        return sum(r["runs"][run][key] for r in results) / len(results)

    # RL on the true reward barely moves the prompts whose reward never varies; SFT on them fits them.
    rl_gain = mean("rl", "gain_low_std")
    assert rl_gain < 0.5, [r["runs"]["rl"]["gain_low_std"] for r in results]
    assert sum(r["runs"]["rl"]["initially_low_not_moved"] for r in results) >= sum(n_low) / 2
    assert sum(r["runs"]["rl"]["steps_to_gain_low_std"] is None for r in results) >= 2
    assert mean("sft", "gain_low_std") > rl_gain + 1.5
    # A few SFT steps on two of those prompts remove most low-std prompts, and the same RL run then lifts them.
    initial_fraction = sum(r["initial"]["low_std_fraction"] for r in results) / len(results)
    assert mean("warmup_only", "low_std_fraction") < initial_fraction / 2
    assert mean("warmup_then_rl", "gain_low_std") > rl_gain + 1.0
    assert all(r["runs"]["warmup_then_rl"]["steps_to_gain_low_std"] is not None for r in results)
