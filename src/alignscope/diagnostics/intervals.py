"""How much an accuracy can be trusted: the number of pairs it rests on and a Wilson interval.

An accuracy of 0.58 against 0.56 on a dozen pairs is noise; the Wilson score interval (Wilson
1927) stays inside [0, 1] and keeps a sensible width at small n and at accuracies near 0 or 1,
where the normal approximation p ± z·sqrt(p(1−p)/n) collapses to a point.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from alignscope.diagnostics._arrays import as_f64, same_length
from alignscope.errors import DataError

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion successes/n; (0, 1) when n = 0 (nothing is known).

    `successes` may be fractional (ties counted ½).
    """
    if n < 0 or successes < 0 or successes > n:
        raise DataError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_with_interval(chosen_scores: Any, rejected_scores: Any, z: float = Z95) -> dict[str, float | int]:
    """Tie-aware accuracy (ties ½) on fixed pairs with `n` (pairs), `n_decisive` (pairs the scores do
    not tie) and the Wilson interval `low`..`high` over the n pairs."""
    c, r = as_f64(chosen_scores, "chosen_scores", ndim=1), as_f64(rejected_scores, "rejected_scores", ndim=1)
    n = same_length(chosen_scores=c, rejected_scores=r)
    if n == 0:
        raise DataError("no pairs to score", field="chosen_scores")
    wins = float(np.sum(c > r) + 0.5 * np.sum(c == r))
    low, high = wilson_interval(wins, n, z)
    return {"accuracy": wins / n, "n": n, "n_decisive": int(np.sum(c != r)), "low": low, "high": high}


def decisive_gold_pairs(gold_rewards: Any) -> int:
    """How many within-prompt sample pairs the gold reward orders strictly: what an on-policy
    accuracy rests on (pairs gold ties have no correct order and are left out)."""
    g = as_f64(gold_rewards, "gold_rewards", ndim=2)
    i, j = np.triu_indices(g.shape[1], k=1)
    return int(np.sum(g[:, i] != g[:, j]))


def within_noise(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals overlap, i.e. the data cannot tell the two accuracies apart."""
    return a[0] <= b[1] and b[0] <= a[1]
