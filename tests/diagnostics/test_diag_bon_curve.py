"""The exact best-of-n estimator agrees with brute force over every n-subset."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alignscope.diagnostics.overoptimization import best_of_n_curve
from alignscope.errors import DataError


def brute_force(selector: np.ndarray, value: np.ndarray, n: int) -> float:
    per_prompt = []
    for s, v in zip(selector, value):
        picks = [v[max(sub, key=lambda i: s[i])] for sub in itertools.combinations(range(len(s)), n)]
        per_prompt.append(np.mean(picks))
    return float(np.mean(per_prompt))


def test_matches_brute_force_and_endpoints():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    curve = best_of_n_curve(proxy, gold)
    assert curve.shape == (7,)
    for n in range(1, 8):
        assert curve[n - 1] == pytest.approx(brute_force(proxy, gold, n))
    assert curve[0] == pytest.approx(gold.mean())  # best of 1 is a random sample
    assert curve[-1] == pytest.approx(gold[np.arange(3), proxy.argmax(1)].mean())  # best of all N


def test_selecting_by_the_value_itself_never_decreases():
    v = np.random.default_rng(1).normal(size=(4, 9))
    assert np.all(np.diff(best_of_n_curve(v, v)) >= -1e-12)


def test_shape_mismatch_is_a_data_error():
    with pytest.raises(DataError, match="shape"):
        best_of_n_curve(np.zeros((2, 3)), np.zeros((2, 4)))


def test_large_n_stays_finite_and_ends_at_the_max():
    v = np.random.default_rng(2).normal(size=(2, 1200))  # C(1200, 600) overflows a float
    curve = best_of_n_curve(v, v)
    assert np.all(np.isfinite(curve))
    assert curve[-1] == pytest.approx(v.max(1).mean())
