"""CHES, LN-CHES, the CHES filter and the similarity baselines, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignscope.diagnostics import (
    ches,
    ches_filter,
    final_embedding_inner_product,
    ln_ches,
    normalized_edit_distance,
)
from alignscope.errors import ConfigError, DataError


def test_ches_on_2d_vectors():
    # pair 0: S+ = (1, 2), S- = (3, 1): <S+,S-> = 3 + 2 = 5, |S+|^2 = 1 + 4 = 5 -> CHES = 0
    # pair 1: S+ = (2, 0), S- = (1, 3): <S+,S-> = 2 + 0 = 2, |S+|^2 = 4      -> CHES = -2
    # pair 2: S+ = (1, 3), S- = (2, 0): <S+,S-> = 2,         |S+|^2 = 10     -> CHES = -8 (asymmetric)
    s_pos = [[1.0, 2.0], [2.0, 0.0], [1.0, 3.0]]
    s_neg = [[3.0, 1.0], [1.0, 3.0], [2.0, 0.0]]
    np.testing.assert_array_equal(ches(s_pos, s_neg), [0.0, -2.0, -8.0])


def test_ln_ches_on_2d_vectors():
    # pair 0: |y+| = 2, |y-| = 1: 5/(2*1) - 5/2^2 = 2.5 - 1.25 = 1.25
    # pair 1: |y+| = 4, |y-| = 2: 2/(4*2) - 4/4^2 = 0.25 - 0.25 = 0
    out = ln_ches([[1.0, 2.0], [2.0, 0.0]], [[3.0, 1.0], [1.0, 3.0]], [2, 4], [1, 2])
    np.testing.assert_allclose(out, [1.25, 0.0])


def test_ches_is_computed_in_float64_from_float32_tensors():
    # <S+,S-> = 1e14 + 2 and |S+|^2 = 1e14 + 1: exact in float64, lost entirely in float32
    s_pos = torch.tensor([[1e7, 1.0]], dtype=torch.float32)
    s_neg = torch.tensor([[1e7, 2.0]], dtype=torch.float32)
    out = ches(s_pos, s_neg)
    assert out.dtype == np.float64 and out[0] == 1.0
    assert ln_ches(s_pos, s_neg, torch.tensor([1]), torch.tensor([1]))[0] == 1.0


def test_ches_rejects_mismatched_or_bad_input():
    with pytest.raises(DataError):
        ches([[1.0, 2.0]], [[1.0, 2.0, 3.0]])
    with pytest.raises(DataError):
        ln_ches([[1.0, 2.0]], [[1.0, 2.0]], [0], [1])
    with pytest.raises(DataError):
        ches([[np.nan, 1.0]], [[1.0, 2.0]])


SCORES = [0.5, -1.0, 3.0, 2.0, 0.0]


@pytest.mark.parametrize(
    "rule, keep, drop",
    [
        ({"drop_fraction": 0.4}, [0, 1, 4], [2, 3]),  # drop floor(0.4*5) = 2 highest: 3.0, 2.0
        ({"drop_fraction": 0.5}, [0, 1, 4], [2, 3]),  # floor(2.5) = 2: never drop more than asked
        ({"drop_fraction": 0.0}, [0, 1, 2, 3, 4], []),
        ({"threshold": 0.25}, [1, 4], [0, 2, 3]),  # strictly above 0.25: 0.5, 3.0, 2.0
        ({"threshold": 0.5}, [0, 1, 4], [2, 3]),
        ({"keep_lowest_fraction": 0.2}, [1], [0, 2, 3, 4]),  # ceil(1) = 1 lowest: -1.0
        ({"keep_lowest_fraction": 0.3}, [1, 4], [0, 2, 3]),  # ceil(1.5) = 2: never keep fewer than asked
        ({"keep_lowest_fraction": 1.0}, [0, 1, 2, 3, 4], []),
    ],
)
def test_ches_filter_rules(rule, keep, drop):
    k, d = ches_filter(SCORES, **rule)
    assert k.tolist() == keep and d.tolist() == drop


def test_ches_filter_breaks_ties_by_index():
    keep, drop = ches_filter([1.0, 1.0, 1.0, 1.0], drop_fraction=0.5)
    assert keep.tolist() == [0, 1] and drop.tolist() == [2, 3]


@pytest.mark.parametrize("rule", [{}, {"drop_fraction": 0.1, "threshold": 0.0}, {"keep_lowest_fraction": 1.5},
                                  {"drop_fraction": -0.1}])
def test_ches_filter_needs_exactly_one_valid_rule(rule):
    with pytest.raises(ConfigError):
        ches_filter(SCORES, **rule)


def _levenshtein_reference(a, b) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_normalized_edit_distance_known_values():
    assert normalized_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)  # k->s, e->i, +g
    assert normalized_edit_distance([], []) == 0.0
    assert normalized_edit_distance([1, 2, 3], []) == 1.0
    assert normalized_edit_distance([5, 6, 7], [5, 6, 7]) == 0.0
    assert normalized_edit_distance(["yes", "I", "can"], ["no", "I", "can"]) == pytest.approx(1 / 3)


def test_normalized_edit_distance_matches_plain_dp():
    rng = np.random.default_rng(0)
    for _ in range(30):
        a = rng.integers(0, 6, rng.integers(0, 40)).tolist()
        b = rng.integers(0, 6, rng.integers(0, 40)).tolist()
        expected = _levenshtein_reference(a, b) / max(len(a), len(b), 1)
        assert normalized_edit_distance(a, b) == pytest.approx(expected)


def test_final_embedding_inner_product():
    # (1*3 + 2*4, 0*5 + 1*6) = (11, 6)
    np.testing.assert_array_equal(final_embedding_inner_product([[1, 2], [0, 1]], [[3, 4], [5, 6]]), [11.0, 6.0])
