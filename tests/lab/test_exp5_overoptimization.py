"""Experiment 5's quick version: against a learned proxy RM, the proxy rises while the gold reward peaks and falls."""

from __future__ import annotations


def test_proxy_rises_while_gold_peaks_and_falls(tmp_path, lab_tiny, experiment):
    r = experiment("exp5_overoptimization").run(tmp_path, seed=0, quick=True, log=lambda *a: None)
    bon, rl = r["best_of_n"], r["rl"]
    # Best-of-n: the proxy of the proxy-best sample climbs with n, the gold reward peaks at some n > 1 and then falls.
    assert bon["proxy"][-1] > bon["proxy"][0] + 0.5, bon["proxy"]
    assert 1 < bon["gold_peak_n"] < bon["n"][-1], bon["gold"]
    # After the peak the gold reward falls by 0.1 and ends below the peak; at the largest n the quick run's 16 samples
    # per prompt leave the estimate noisy (a fresh lab build of 2026-12-01: 0.19 at n=3, 0.08 at n=11, 0.12 at n=16).
    after = bon["gold"][bon["n"].index(bon["gold_peak_n"]) + 1 :]
    assert min(after) < bon["gold_peak"] - 0.1, bon["gold"]
    assert bon["gold"][-1] < bon["gold_peak"], bon["gold"]
    assert bon["fit_gold"]["beta"] > 0  # the fitted d(alpha - beta d) has a peak
    # RL: the gold reward peaks before the end and falls while the proxy keeps rising.
    assert rl["gold_peak"]["overoptimized"], rl["gold_peak"]
    assert rl["proxy_smoothed"][-1] > rl["proxy_smoothed"][0], rl["proxy_smoothed"]
