"""Experiment 5's quick version: against a learned proxy RM, the proxy rises while the gold reward peaks and falls."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

EXP = Path(__file__).resolve().parents[2] / "experiments" / "exp5_overoptimization.py"


def load_experiment():
    spec = importlib.util.spec_from_file_location("exp5_overoptimization", EXP)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_proxy_rises_while_gold_peaks_and_falls(tmp_path, lab_tiny):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this model is too small to gain from threads; on a shared CPU they only contend
    try:
        r = load_experiment().run(tmp_path, seed=0, quick=True, log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)
    bon, rl = r["best_of_n"], r["rl"]
    # Best-of-n: the proxy of the proxy-best sample climbs with n, the gold reward peaks at some n > 1 and then falls.
    assert bon["proxy"][-1] > bon["proxy"][0] + 0.5, bon["proxy"]
    assert 1 < bon["gold_peak_n"] < bon["n"][-1], bon["gold"]
    assert bon["gold"][-1] < bon["gold_peak"] - 0.1, bon["gold"]
    assert bon["fit_gold"]["beta"] > 0  # the fitted d(alpha - beta d) has a peak
    # RL: the gold reward peaks before the end and falls while the proxy keeps rising.
    assert rl["gold_peak"]["overoptimized"], rl["gold_peak"]
    assert rl["proxy_smoothed"][-1] > rl["proxy_smoothed"][0], rl["proxy_smoothed"]
