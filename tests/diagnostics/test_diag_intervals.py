"""Wilson intervals, decisive-pair counts and confound correlations against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignscope.diagnostics.confounds import ches_confounds, describe_confounds, length_bias, length_ratio, spearman
from alignscope.diagnostics.intervals import accuracy_with_interval, decisive_gold_pairs, wilson_interval, within_noise
from alignscope.errors import DataError


def test_wilson_interval_hand_values():
    # 8/10, z = 1.96: centre (0.8 + 0.19208)/1.38416, half-width 1.96*sqrt(0.016 + 0.009604)/1.38416
    lo, hi = wilson_interval(8, 10, z=1.96)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 10, z=1.96)  # stays inside [0, 1] where p ± z·se would collapse to 0
    assert lo == 0.0 and hi == pytest.approx(3.8416 / 13.8416, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(DataError):
        wilson_interval(11, 10)


def test_accuracy_with_interval_counts_ties_half_and_reports_n():
    res = accuracy_with_interval([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 1.0, 1.0])
    assert res["accuracy"] == pytest.approx(2.5 / 4) and res["n"] == 4 and res["n_decisive"] == 3
    assert (res["low"], res["high"]) == pytest.approx(wilson_interval(2.5, 4))


def test_decisive_gold_pairs_leaves_out_gold_ties():
    assert decisive_gold_pairs([[1.0, 1.0, 2.0], [0.0, 0.0, 0.0]]) == 2


def test_within_noise_is_interval_overlap():
    assert within_noise((0.4, 0.6), (0.55, 0.9)) and not within_noise((0.1, 0.3), (0.31, 0.5))


def test_spearman_hand_value_and_degenerate_inputs():
    # ranks without ties: d^2 = 0 + 1 + 1 + 0, rho = 1 - 6*2/(4*15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4])["rho"] == pytest.approx(0.8)
    assert math.isnan(spearman([1, 1, 1, 1], [1, 2, 3, 4])["rho"])
    assert math.isnan(spearman([1, 2], [2, 1])["rho"])


def test_length_ratio_and_bias():
    assert length_ratio([2, 4], [1, 8]).tolist() == [0.5, 2.0]
    assert length_bias([3, 1, 2, 2], [1, 2, 2, 5]) == {"n": 4, "chosen_longer": 0.25, "chosen_shorter": 0.5}


def test_ches_confounds_flag_a_ranking_driven_by_length():
    rng = np.random.default_rng(0)
    chosen = rng.integers(5, 50, 200)
    rejected = rng.integers(5, 50, 200)
    ln = -np.log(rejected / chosen) + rng.normal(0, 0.1, 200)  # LN-CHES high where rejected is much shorter
    conf = ches_confounds(ln, chosen, rejected, rng.uniform(size=200))
    assert conf["length_ratio"]["rho"] < -0.9 and abs(conf["edit_distance"]["rho"]) < 0.2
    lines = describe_confounds(conf)
    assert "strong" in lines[0] and "strong" not in lines[1]
