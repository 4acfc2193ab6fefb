"""Reward variance, global standardisation, tie-aware and on-policy accuracy, the teacher table."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alignscope.diagnostics import (
    low_variance_fraction,
    on_policy_accuracy,
    per_prompt_accuracy,
    per_prompt_variance,
    standardize_global,
    teacher_table,
    tie_aware_accuracy,
)
from alignscope.errors import DataError


def test_per_prompt_variance_by_hand():
    # [1,2,3]: ordered pairs i!=j give squared gaps 1,4,1 twice each -> mean 12/6 = 2 -> half = 1
    # [0,0,4]: squared gaps 0,16,16 twice each -> mean 64/6 = 32/3 -> half = 16/3
    np.testing.assert_allclose(per_prompt_variance([[1, 2, 3], [0, 0, 4]]), [1.0, 16 / 3])


def test_variance_estimator_is_half_mean_squared_gap_over_ordered_pairs():
    r = np.random.default_rng(1).normal(size=(4, 6))
    pairs = [(i, j) for i, j in itertools.permutations(range(6), 2)]
    expected = [0.5 * np.mean([(row[i] - row[j]) ** 2 for i, j in pairs]) for row in r]
    np.testing.assert_allclose(per_prompt_variance(r), expected)
    np.testing.assert_allclose(per_prompt_variance(r), r.var(axis=1, ddof=1))


def test_variance_needs_two_samples():
    with pytest.raises(DataError):
        per_prompt_variance([[1.0], [2.0]])


def test_standardize_global_by_hand():
    # mean 2.5; unbiased std = sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3)
    z = standardize_global([[1, 2], [3, 4]])
    s = np.sqrt(5 / 3)
    np.testing.assert_allclose(z, [[-1.5 / s, -0.5 / s], [0.5 / s, 1.5 / s]])


def test_standardize_global_is_global_not_per_prompt():
    r = np.array([[0.0, 0.001], [10.0, 20.0]])
    z = standardize_global(r)
    var = per_prompt_variance(z)
    assert var[0] < 1e-6 < 0.1 < var[1]  # per-prompt standardisation would make them equal
    np.testing.assert_allclose(standardize_global(7 * r - 3), z)  # scale and shift free
    np.testing.assert_array_equal(standardize_global([[2.0, 2.0], [2.0, 2.0]]), np.zeros((2, 2)))


def test_low_variance_fraction_counts_at_or_below():
    assert low_variance_fraction([0.0, 0.05, 0.1, 0.5], 0.1) == 0.75
    assert low_variance_fraction([0.0, 0.0, 1.0], 0.0) == pytest.approx(2 / 3)


def test_tie_aware_accuracy_by_hand():
    # 2>1: 1, 1=1: 1/2, 3<4: 0, 0>-1: 1 -> 2.5 / 4
    assert tie_aware_accuracy([2, 1, 3, 0], [1, 1, 4, -1]) == 0.625


def test_on_policy_accuracy_with_ties_by_hand():
    rm = [[1, 1, 2], [3, 2, 1], [0, 1, 2]]
    gold = [[0, 1, 2], [0, 0, 5], [7, 7, 7]]
    # prompt 0: (0,1) RM ties -> 1/2; (0,2) 1<2 & 0<2 -> 1; (1,2) 1<2 & 1<2 -> 1        => 2.5/3
    # prompt 1: (0,1) gold ties -> excluded; (0,2) 3>1 vs 0<5 -> 0; (1,2) 2>1 vs 0<5 -> 0 => 0/2
    # prompt 2: every pair tied under gold -> undefined (NaN), left out of the mean
    per = per_prompt_accuracy(rm, gold)
    np.testing.assert_allclose(per[:2], [5 / 6, 0.0])
    assert np.isnan(per[2])
    assert on_policy_accuracy(rm, gold) == pytest.approx((5 / 6 + 0.0) / 2)


def test_on_policy_accuracy_perfect_and_reversed():
    gold = np.random.default_rng(2).normal(size=(5, 4))
    assert on_policy_accuracy(2 * gold + 1, gold) == 1.0
    assert on_policy_accuracy(-gold, gold) == 0.0
    assert np.isnan(on_policy_accuracy([[1, 2]], [[3, 3]]))


def test_teacher_flat_on_most_prompts_is_called_slow_even_with_a_large_mean_variance():
    # Gold scaled by 1e-3 on 9 of 10 prompts: global standardisation blows up the 10th prompt's variance,
    # so the mean looks high; the verdict must follow the 90% of prompts where the objective is flat.
    gold = np.random.default_rng(4).normal(size=(10, 8))
    scaled = gold * np.where(np.arange(10) < 9, 1e-3, 1.0)[:, None]
    (row,) = teacher_table({"scaled": (scaled, 1.0)}, gold=gold)
    assert row.mean_variance > 0.5 and row.low_variance_fraction == 0.9
    assert row.raw_variance == pytest.approx(np.mean([np.var(r, ddof=1) for r in scaled]))
    assert row.reason == f"accurate (1.00) but low reward variance on 90% of prompts (mean {row.mean_variance:.2f}): slow teacher under this policy"


def test_teacher_table_prefers_variance_over_accuracy_alone():
    rng = np.random.default_rng(3)
    gold = rng.normal(size=(50, 8))
    # perfectly accurate, but nearly all of its variance is between prompts: a flat objective
    flat = 1e-3 * gold + 10.0 * np.arange(50)[:, None]
    noisy = gold + 0.5 * rng.normal(size=gold.shape)
    rows = teacher_table({"flat-accurate": (flat, 1.0), "noisy": (noisy, 0.8)}, gold=gold)
    assert [r.name for r in rows] == ["noisy", "flat-accurate"]
    flat_row = rows[1]
    assert flat_row.onpolicy_accuracy == 1.0 and flat_row.offpolicy_accuracy == 1.0
    assert flat_row.mean_variance < 1e-3 and flat_row.low_variance_fraction == 1.0
    assert flat_row.reason.startswith("accurate (1.00) but low reward variance (0.00): slow teacher")
    assert "high reward variance" in rows[0].reason
    assert rows[0].score > flat_row.score
    assert set(rows[0].to_dict()) == {"name", "mean_variance", "low_variance_fraction", "raw_variance", "offpolicy_accuracy",
                                      "onpolicy_accuracy", "score", "reason"}


def test_teacher_table_without_gold_uses_offpolicy_or_variance():
    r = np.random.default_rng(4).normal(size=(10, 4))
    rows = teacher_table({"a": (r, None), "b": (r, 0.5)})
    assert [x.name for x in rows] == ["a", "b"]  # accuracy 0.5 is a coin flip: direction 0
    assert rows[0].onpolicy_accuracy is None and "ranked by variance alone" in rows[0].reason
    assert rows[1].score == 0.0


def test_raw_variance_tells_a_reward_scaled_on_every_prompt_from_gold():
    # Standardisation undoes a uniform scale, so only the raw variance shows the scaled reward's flat objective
    # (real model 3 in docs/results.md: gold x 0.001 on every prompt did not train the policy at all).
    gold = np.random.default_rng(5).normal(size=(6, 4))
    rows = {r.name: r for r in teacher_table({"gold": (gold, 1.0), "scaled": (gold * 1e-3, 1.0)}, gold=gold)}
    assert rows["scaled"].mean_variance == pytest.approx(rows["gold"].mean_variance)
    assert rows["scaled"].raw_variance == pytest.approx(rows["gold"].raw_variance * 1e-6)
