"""The displacement monitor, mass gainers and the pitfall detectors."""

from __future__ import annotations

import json

import pytest
import torch

from alignscope.diagnostics import (
    Pitfall,
    detect_displacement,
    detect_flat_objective,
    detect_overoptimization,
    displacement_stats,
    format_pitfall,
    mass_gainers,
)
from alignscope.errors import DataError

# chosen changes -1, 0, +1, -1; rejected changes -3, -3, 0, -4
START_C, NOW_C = [-10.0, -12.0, -8.0, -5.0], [-11.0, -12.0, -7.0, -6.0]
START_R, NOW_R = [-11.0, -10.0, -9.0, -4.0], [-14.0, -13.0, -9.0, -8.0]


def test_displacement_stats_by_hand():
    s = displacement_stats(START_C, NOW_C, START_R, NOW_R)
    assert s == {
        "n_pairs": 4,
        "mean_chosen_change": -0.25,  # (-1 + 0 + 1 - 1) / 4
        "mean_rejected_change": -2.5,  # (-3 - 3 + 0 - 4) / 4
        "fraction_chosen_fell": 0.5,  # pairs 0 and 3
        "ranking_accuracy": 1.0,  # -11>-14, -12>-13, -7>-9, -6>-8
        "ranking_accuracy_start": 0.5,  # -10>-11 yes, -12>-10 no, -8>-9 yes, -5>-4 no
    }
    assert all(type(v) in (int, float) for v in s.values())  # JSON-ready
    assert displacement_stats(*(torch.tensor(x) for x in (START_C, NOW_C, START_R, NOW_R))) == s


def test_displacement_stats_rejects_bad_input():
    with pytest.raises(DataError):
        displacement_stats([1.0], [1.0, 2.0], [1.0], [1.0])
    with pytest.raises(DataError):
        displacement_stats([], [], [], [])


def test_mass_gainers():
    # gains: -0.3, 0, +0.25, +0.05 -> only positive gains, largest first
    assert mass_gainers([0.5, 0.3, 0.1, 0.1], [0.2, 0.3, 0.35, 0.15], top_k=3) == [(2, pytest.approx(0.25)), (3, pytest.approx(0.05))]
    assert mass_gainers([0.5, 0.3, 0.1, 0.1], [0.2, 0.3, 0.35, 0.15], top_k=1) == [(2, pytest.approx(0.25))]


def test_detect_displacement():
    found = detect_displacement(displacement_stats(START_C, NOW_C, START_R, NOW_R))
    assert [p.name for p in found] == ["likelihood displacement"] and found[0].size == 0.5
    assert "alignscope audit data --filter" in found[0].mitigation and "loss: [sigmoid, sft]" in found[0].mitigation
    assert detect_displacement({"fraction_chosen_fell": 0.25, "mean_chosen_change": 0.3}) == []
    assert len(detect_displacement({"fraction_chosen_fell": 0.75, "mean_chosen_change": 0.3})) == 1


def test_detect_flat_objective():
    found = detect_flat_objective([0.0, 0.0, 0.05, 0.5], threshold=0.1)
    assert found[0].name == "flat RL objective" and found[0].size == 0.75
    assert "alignscope select-prompts" in found[0].mitigation
    assert detect_flat_objective([0.0, 0.5, 0.6, 0.7], threshold=0.1) == []


def test_detect_overoptimization_names_the_checkpoint():
    found = detect_overoptimization([0, 10, 20, 30, 40], proxy=[0, 1, 2, 3, 4], gold=[0, 1, 2, 1.5, 1])
    assert found[0].name == "over-optimisation" and found[0].size == 1.0
    assert found[0].mitigation.startswith("stop at checkpoint 20, raise the KL coefficient, use an RM ensemble")
    assert detect_overoptimization([0, 10, 20], proxy=[0, 1, 2], gold=[0, 1, 2]) == []


def test_format_pitfall_is_one_plain_line_and_pitfalls_serialise():
    p = Pitfall("likelihood displacement", 0.625, "chosen log-prob fell for 62% of eval pairs", "lower beta")
    line = format_pitfall(p)
    assert "\n" not in line
    assert line == "likelihood displacement (size 0.625): chosen log-prob fell for 62% of eval pairs; mitigation: lower beta"
    assert json.loads(json.dumps(p.__dict__))["size"] == 0.625
