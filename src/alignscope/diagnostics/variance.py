"""Reward variance, the quantity that decides how fast an RM can teach a policy (Razin et al. 2025).

Estimator: the paper defines Var_{y~π}[r(y)] = ½·E_{y,y'}[(r(y) − r(y'))²] over independent samples.
From n samples we average ½(r_i − r_j)² over the n(n−1) ordered pairs with i ≠ j, which equals the
unbiased sample variance (ddof=1); the reference code (princeton-pli/what-makes-good-rm) likewise
uses `torch.var(dim=1)`, which is unbiased. Standardisation uses the global mean and the global
unbiased std (`tensor.std()` there) over every sampled response, never per prompt, since
per-prompt standardisation would erase exactly the variance differences being measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from alignscope.diagnostics._arrays import as_f64
from alignscope.diagnostics.accuracy import on_policy_accuracy
from alignscope.errors import DataError


def _rewards(x: Any, name: str = "rewards") -> np.ndarray:
    r = as_f64(x, name, ndim=2)
    if r.shape[1] < 2:
        raise DataError(f"need at least 2 samples per prompt to measure variance, got shape {r.shape}", field=name)
    return r


def standardize_global(rewards: Any) -> np.ndarray:
    """(r − mean) / std with the mean and unbiased std over all P·n rewards ([P, n] → [P, n]).

    Variance is not scale-free, so RMs are compared only after this. A constant RM has no scale to
    remove and no variance to give: it maps to all zeros.
    """
    r = _rewards(rewards)
    std = r.std(ddof=1)
    return np.zeros_like(r) if std == 0 else (r - r.mean()) / std


def per_prompt_variance(rewards: Any) -> np.ndarray:
    """½·mean over ordered pairs i≠j of (r_i − r_j)² per prompt, i.e. the unbiased variance ([P])."""
    return _rewards(rewards).var(axis=1, ddof=1)


def low_variance_fraction(var: Any, threshold: float) -> float:
    """Fraction of prompts whose variance is at or below `threshold` (≤, so exact zeros count at 0)."""
    v = as_f64(var, "var", ndim=1)
    if v.size == 0:
        raise DataError("no per-prompt variances given", field="var")
    return float(np.mean(v <= threshold))


@dataclass
class TeacherRow:
    """One RM's line in the teacher table; `score` is the ranking key, higher teaches better."""

    name: str
    mean_variance: float
    low_variance_fraction: float
    raw_variance: float
    offpolicy_accuracy: float | None
    onpolicy_accuracy: float | None
    score: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reason(var: float, low_frac: float, acc: float | None, low: float, accurate: float) -> str:
    # Flat on most prompts counts as low variance even when a few prompts carry a large mean: global
    # standardisation of an RM scaled down on 90% of prompts gives those few a huge variance.
    if var < low:
        flat = f"low reward variance ({var:.2f})"
    elif low_frac >= 0.5:
        flat = f"low reward variance on {low_frac:.0%} of prompts (mean {var:.2f})"
    else:
        flat = None
    if acc is None:
        return f"{flat or f'reward variance {var:.2f}'}, accuracy not measured: ranked by variance alone"
    if flat:
        if acc >= accurate:
            return f"accurate ({acc:.2f}) but {flat}: slow teacher under this policy"
        return f"{flat} and inaccurate ({acc:.2f}): poor teacher under this policy"
    if acc >= accurate:
        return f"accurate ({acc:.2f}) with high reward variance ({var:.2f}): fast teacher toward the gold reward"
    return f"high reward variance ({var:.2f}) but inaccurate ({acc:.2f}): fast, but may raise the proxy more than the gold reward"


def teacher_table(
    rms: Mapping[str, tuple[Any, float | None]],
    gold: Any | None = None,
    threshold: float = 0.1,
    accurate: float = 0.7,
) -> list[TeacherRow]:
    """Rank candidate RMs by how well they should teach *this* policy, best first.

    `rms` maps a name to (rewards [P, n] on the policy's samples, off-policy accuracy or None);
    `gold` [P, n] gives on-policy accuracy. Score = (2·acc − 1)·mean_x Var_x^(1/3): the theorem bounds
    the time to raise the reward by Ω(Var^(−1/3)), so speed grows like Var^(1/3), and accuracy sets
    the direction (0.5 is a coin flip). acc is on-policy when measured, else off-policy, else 1.
    `threshold` marks a prompt (and a mean) as low-variance; `accurate` is the bar for "accurate".
    """
    rows = []
    for name, (rewards, offpolicy) in rms.items():
        var = per_prompt_variance(standardize_global(rewards))
        mean_var = float(var.mean())
        onpolicy = None
        if gold is not None:
            onpolicy = on_policy_accuracy(rewards, gold)
            onpolicy = None if np.isnan(onpolicy) else onpolicy
        acc = onpolicy if onpolicy is not None else offpolicy
        # Per prompt, the time to move the reward scales as Var_x^(-1/3): average the speeds, not the variances,
        # so an RM that is flat on half the prompts is not rescued by large variance on the rest.
        speed = float(np.mean(np.cbrt(np.maximum(var, 0.0))))
        score = (2.0 * (1.0 if acc is None else acc) - 1.0) * speed
        low_frac = low_variance_fraction(var, threshold)
        rows.append(TeacherRow(
            name=name,
            mean_variance=mean_var,
            low_variance_fraction=low_frac,
            # The theorem's variance is the raw one: a reward scaled down on every prompt keeps its standardised
            # variance (standardisation undoes the scale) but teaches no faster than its raw variance allows.
            raw_variance=float(per_prompt_variance(rewards).mean()),
            offpolicy_accuracy=None if offpolicy is None else float(offpolicy),
            onpolicy_accuracy=onpolicy,
            score=float(score),
            reason=_reason(mean_var, low_frac, acc, threshold, accurate),
        ))
    return sorted(rows, key=lambda r: (-r.score, r.name))
