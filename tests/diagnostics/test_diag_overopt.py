"""Gao et al. (2022) over-optimisation fits and the gold-peak detector."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignscope.diagnostics import fit_bon, fit_rl, gold_peak, sqrt_kl
from alignscope.errors import DataError


def test_fit_bon_recovers_known_parameters():
    d = np.linspace(0.0, 5.0, 11)
    fit = fit_bon(d, d * (1.5 - 0.25 * d))
    assert (fit.alpha, fit.beta) == (pytest.approx(1.5), pytest.approx(0.25))
    assert fit.r2 == pytest.approx(1.0) and fit.n_points == 11
    assert fit.d_peak == pytest.approx(3.0)  # alpha / (2 beta)
    np.testing.assert_allclose(fit.predict([0.0, 2.0]), [0.0, 2.0 * (1.5 - 0.5)])


def test_fit_rl_recovers_known_parameters_and_drops_d_zero():
    d = np.linspace(0.0, 6.0, 13)
    gold = np.zeros_like(d)
    gold[1:] = d[1:] * (2.0 - 0.5 * np.log(d[1:]))
    fit = fit_rl(d, gold)
    assert (fit.alpha, fit.beta) == (pytest.approx(2.0), pytest.approx(0.5))
    assert fit.r2 == pytest.approx(1.0) and fit.n_points == 12
    assert fit.d_peak == pytest.approx(math.exp(2.0 / 0.5 - 1.0))  # root of alpha - beta (log d + 1)
    assert fit.predict([0.0])[0] == 0.0


def test_fit_without_a_peak_and_too_few_points():
    d = np.array([1.0, 2.0, 3.0])
    assert fit_bon(d, 2.0 * d + 0.5 * d * d).d_peak == math.inf  # beta < 0: still rising
    with pytest.raises(DataError):
        fit_rl([0.0, 1.0], [0.0, 1.0])
    with pytest.raises(DataError):
        fit_bon([-1.0, 1.0, 2.0], [0.0, 1.0, 2.0])


def test_sqrt_kl_clips_negative_estimates():
    np.testing.assert_allclose(sqrt_kl([-0.01, 0.0, 4.0]), [0.0, 0.0, 2.0])


def test_gold_peak():
    peak = gold_peak([40, 0, 10, 30, 20], gold=[1, 0, 1, 1.5, 2], proxy=[4, 0, 1, 3, 2])  # unsorted steps
    assert (peak.peak_step, peak.peak_gold, peak.final_gold) == (20, 2, 1)
    assert (peak.proxy_at_peak, peak.final_proxy, peak.overoptimized) == (2, 4, True)
    # proxy also fell after the peak, or gold never fell, or no proxy: nothing detected
    assert not gold_peak([0, 1, 2], gold=[0, 2, 1], proxy=[0, 2, 1]).overoptimized
    assert not gold_peak([0, 1, 2], gold=[0, 1, 2], proxy=[0, 1, 2]).overoptimized
    assert not gold_peak([0, 1, 2], gold=[0, 2, 1]).overoptimized
    assert not gold_peak([0, 1, 2], gold=[0, 2, 1.95], proxy=[0, 1, 2], tolerance=0.1).overoptimized
