"""Pitfall diagnostics as pure functions over arrays (numpy, torch or lists in; float64 out).

CHES and its similarity baselines, reward variance and accuracy, the likelihood-displacement
monitor, Gao over-optimisation fits (docs/science.md: "Reward variance", "Likelihood displacement", "Over-optimisation"), and the detectors that turn them into
warnings with a mitigation.
"""

from alignscope.diagnostics.accuracy import (
    on_policy_accuracy,
    per_prompt_accuracy,
    tie_aware_accuracy,
)
from alignscope.diagnostics.ches import ches, ches_filter, ln_ches
from alignscope.diagnostics.displacement import displacement_stats, mass_gainers
from alignscope.diagnostics.overoptimization import (
    GaoFit,
    GoldPeak,
    fit_bon,
    fit_rl,
    gold_peak,
    sqrt_kl,
)
from alignscope.diagnostics.similarity import (
    final_embedding_inner_product,
    normalized_edit_distance,
)
from alignscope.diagnostics.variance import (
    TeacherRow,
    low_variance_fraction,
    per_prompt_variance,
    standardize_global,
    teacher_table,
)
from alignscope.diagnostics.warnings import (
    Pitfall,
    detect_displacement,
    detect_flat_objective,
    detect_overoptimization,
    format_pitfall,
)

__all__ = [
    "GaoFit", "GoldPeak", "Pitfall", "TeacherRow",
    "ches", "ches_filter", "detect_displacement", "detect_flat_objective", "detect_overoptimization",
    "displacement_stats", "final_embedding_inner_product", "fit_bon", "fit_rl", "format_pitfall",
    "gold_peak", "ln_ches", "low_variance_fraction", "mass_gainers", "normalized_edit_distance",
    "on_policy_accuracy", "per_prompt_accuracy", "per_prompt_variance", "sqrt_kl", "standardize_global",
    "teacher_table", "tie_aware_accuracy",
]
