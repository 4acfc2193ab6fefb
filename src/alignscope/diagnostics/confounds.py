"""Confounds of a pair ranking: does a score order pairs by what it claims, or by length?

On real safety data the top of the LN-CHES ranking was "rejected much shorter than chosen" more
than "chosen and rejected alike" (docs/diagnostics.md), so every CHES audit states the rank
correlation of LN-CHES with the length ratio |y−|/|y+| and with edit distance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alignscope.diagnostics._arrays import as_f64, same_length
from alignscope.errors import DataError

STRONG_RHO = 0.3  # |Spearman rho| from which a confound is reported as strong


def spearman(x: Any, y: Any) -> dict[str, float | int]:
    """Spearman's rank correlation `rho` (average ranks for ties), its two-sided `p` value, and `n`.

    NaN rho and p when fewer than 3 points or either side is constant: no ranking to correlate.
    """
    from scipy.stats import spearmanr

    a, b = as_f64(x, "x", ndim=1), as_f64(y, "y", ndim=1)
    n = same_length(x=a, y=b)
    if n < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return {"rho": float("nan"), "p": float("nan"), "n": n}
    res = spearmanr(a, b)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": n}


def length_ratio(chosen_tokens: Any, rejected_tokens: Any) -> np.ndarray:
    """|rejected| / |chosen| per pair (token counts, EOS included so never zero)."""
    c, r = as_f64(chosen_tokens, "chosen_tokens", ndim=1), as_f64(rejected_tokens, "rejected_tokens", ndim=1)
    same_length(chosen_tokens=c, rejected_tokens=r)
    if np.any(c <= 0):
        raise DataError("chosen lengths must be positive", field="chosen_tokens")
    return r / c


def length_bias(chosen_lengths: Any, rejected_lengths: Any) -> dict[str, float | int]:
    """Fractions of pairs whose chosen response is longer / shorter than the rejected one.

    A set where one side is mostly longer lets any scorer that likes (or dislikes) length look
    accurate, so accuracies on it are read against these.
    """
    c, r = as_f64(chosen_lengths, "chosen_lengths", ndim=1), as_f64(rejected_lengths, "rejected_lengths", ndim=1)
    n = same_length(chosen_lengths=c, rejected_lengths=r)
    if n == 0:
        raise DataError("no pairs", field="chosen_lengths")
    return {"n": n, "chosen_longer": float(np.mean(c > r)), "chosen_shorter": float(np.mean(c < r))}


def ches_confounds(ln_ches: Any, chosen_tokens: Any, rejected_tokens: Any, edit_distance: Any | None = None) -> dict[str, dict]:
    """Spearman(LN-CHES, |y−|/|y+|) as `length_ratio` and, when given, Spearman(LN-CHES, edit distance)."""
    out = {"length_ratio": spearman(ln_ches, length_ratio(chosen_tokens, rejected_tokens))}
    if edit_distance is not None:
        out["edit_distance"] = spearman(ln_ches, edit_distance)
    return out


def describe_confounds(conf: dict[str, dict]) -> list[str]:
    """One sentence per correlation, saying when it is strong enough to drive the ranking."""
    names = {"length_ratio": "the length ratio |rejected|/|chosen|", "edit_distance": "edit distance"}
    lines = []
    for key, s in conf.items():
        if not np.isfinite(s["rho"]):
            lines.append(f"Spearman(LN-CHES, {names[key]}): undefined (constant or fewer than 3 pairs)")
            continue
        text = f"Spearman(LN-CHES, {names[key]}) = {s['rho']:+.2f} (p = {s['p']:.2g}, n = {s['n']})"
        if abs(s["rho"]) >= STRONG_RHO and s["p"] < 0.01:
            text += ": strong, so the LN-CHES ranking partly reflects this"
        lines.append(text)
    return lines
