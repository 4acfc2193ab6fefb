"""Pitfall detectors: turn diagnostic numbers into named warnings that say what to do about them.

Each detector returns a (possibly empty) list so callers can concatenate them; a `Pitfall` holds
only JSON-friendly fields so it can be logged with `pitfall.__dict__`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alignscope.diagnostics.overoptimization import gold_peak
from alignscope.diagnostics.variance import low_variance_fraction

DISPLACEMENT_FIX = "filter high-CHES pairs (alignscope audit data --filter), add an NLL term (loss: [sigmoid, sft]), or lower beta"
FLAT_OBJECTIVE_FIX = "select prompts by reward variance (alignscope select-prompts), dynamic sampling, or another RM"


@dataclass
class Pitfall:
    """A detected pitfall: `size` is its headline number (a fraction or a reward gap)."""

    name: str
    size: float
    message: str
    mitigation: str


def detect_displacement(stats: Mapping[str, Any], max_fraction_fell: float = 0.5, what: str = "eval pairs") -> list[Pitfall]:
    """Likelihood displacement from `displacement_stats` output.

    Fires when more than `max_fraction_fell` of the pairs lost chosen log-prob, or when the mean
    chosen log-prob change is negative: DPO is then lowering the responses it should raise.
    """
    fell, mean = float(stats["fraction_chosen_fell"]), float(stats["mean_chosen_change"])
    if fell <= max_fraction_fell and mean >= 0:
        return []
    return [Pitfall(
        name="likelihood displacement",
        size=fell,
        message=f"chosen log-prob fell for {fell:.0%} of {what} (mean change {mean:+.3f} nats)",
        mitigation=DISPLACEMENT_FIX,
    )]


def detect_flat_objective(per_prompt_var: Any, threshold: float = 0.1, max_fraction: float = 0.5) -> list[Pitfall]:
    """Flat RL objective: more than `max_fraction` of prompts have (standardised) reward variance
    at or below `threshold`, where the policy gradient nearly vanishes however low the reward."""
    frac = low_variance_fraction(per_prompt_var, threshold)
    if frac <= max_fraction:
        return []
    return [Pitfall(
        name="flat RL objective",
        size=frac,
        message=f"{frac:.0%} of prompts have reward variance <= {threshold:g}: their gradients nearly vanish",
        mitigation=FLAT_OBJECTIVE_FIX,
    )]


def detect_overoptimization(steps: Any, proxy: Any, gold: Any, tolerance: float = 0.0) -> list[Pitfall]:
    """Over-optimisation: the gold reward peaked and fell (by more than `tolerance`) while the
    proxy reward kept rising; `size` is the gold reward lost since the peak."""
    peak = gold_peak(steps, gold, proxy, tolerance)
    if not peak.overoptimized:
        return []
    step = int(peak.peak_step) if float(peak.peak_step).is_integer() else peak.peak_step
    lost = peak.peak_gold - peak.final_gold
    return [Pitfall(
        name="over-optimisation",
        size=lost,
        message=(f"gold reward peaked at step {step} ({peak.peak_gold:.3f}) and fell to {peak.final_gold:.3f} "
                 f"while the proxy rose from {peak.proxy_at_peak:.3f} to {peak.final_proxy:.3f}"),
        mitigation=f"stop at checkpoint {step}, raise the KL coefficient, use an RM ensemble",
    )]


def format_pitfall(pitfall: Pitfall) -> str:
    """One plain line: the pitfall, its size, what was seen, and the mitigation."""
    return f"{pitfall.name} (size {pitfall.size:.3g}): {pitfall.message}; mitigation: {pitfall.mitigation}"
