"""Over-optimisation: the gold reward against d = √KL(π‖π_ref) (Gao, Schulman, Hilton 2022).

Best-of-n follows gold = d(α − β·d) and RL follows gold = d(α − β·log d). Both are linear in
(α, β), so an ordinary least-squares solve fits them exactly and without a starting guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignscope.diagnostics._arrays import as_f64, same_length
from alignscope.errors import DataError


@dataclass
class GaoFit:
    """A fitted Gao curve. `d_peak` is where the fitted gold reward peaks (inf when β ≤ 0: no peak)."""

    form: str  # "bon" or "rl"
    alpha: float
    beta: float
    r2: float
    d_peak: float
    n_points: int

    def predict(self, d: Any) -> np.ndarray:
        """The fitted gold reward at distances `d` (the RL form is 0 at d = 0, its limit)."""
        d = np.asarray(d, dtype=np.float64)
        if self.form == "bon":
            return d * (self.alpha - self.beta * d)
        safe = np.where(d > 0, d, 1.0)
        return np.where(d > 0, d * (self.alpha - self.beta * np.log(safe)), 0.0)


def sqrt_kl(kl: Any) -> np.ndarray:
    """d = √KL, clipping the small negative values sampled KL estimators can return."""
    return np.sqrt(np.clip(as_f64(kl, "kl"), 0.0, None))


def best_of_n_curve(selector: Any, value: Any) -> np.ndarray:
    """E[value of the selector-best of n samples], n = 1..N, averaged over prompts ([P, N] in, [N] out).

    The n samples are a uniformly random n-subset of the N drawn per prompt, so every n gets an
    exact, unbiased estimate from one sample set: with samples sorted by `selector`, the i-th
    smallest (1-based) is the best of the subset with probability C(i−1, n−1)/C(N, n) (the
    estimator of Nakano et al. 2021, used by Gao et al. 2022). Pass the proxy as `selector` and
    the gold reward as `value` for the over-optimisation curve, or the proxy for both. Ties in
    `selector` are broken by sample order.
    """
    s, v = as_f64(selector, "selector", 2), as_f64(value, "value", 2)
    if s.shape != v.shape:
        raise DataError(f"selector has shape {s.shape} but value has {v.shape}")
    n_max = s.shape[1]
    if s.size == 0:
        raise DataError("no samples to select from", field="selector")
    order = np.argsort(s, axis=1, kind="stable")
    sorted_v = np.take_along_axis(v, order, 1).mean(0)
    # In log space: the binomials overflow a float (N ≳ 1000) long before their ratio does.
    log_fact = np.array([math.lgamma(k + 1) for k in range(n_max + 1)])
    i, n = np.arange(1, n_max + 1)[None, :], np.arange(1, n_max + 1)[:, None]
    valid = i >= n
    log_w = (log_fact[i - 1] - log_fact[n - 1] - log_fact[np.where(valid, i - n, 0)]
             - (log_fact[n_max] - log_fact[n] - log_fact[n_max - n]))
    weights = np.where(valid, np.exp(np.where(valid, log_w, 0.0)), 0.0)
    return weights @ sorted_v


def _fit(form: str, d: Any, gold: Any, basis: Callable[[np.ndarray], np.ndarray],
         peak: Callable[[float, float], float]) -> GaoFit:
    dd, g = as_f64(d, "d", 1), as_f64(gold, "gold", 1)
    same_length(d=dd, gold=g)
    if np.any(dd < 0):
        raise DataError("d = sqrt(KL) must be non-negative", field="d")
    keep = dd > 0 if form == "rl" else np.ones_like(dd, dtype=bool)
    dd, g = dd[keep], g[keep]
    if len(dd) < 2 or len(np.unique(dd)) < 2:
        raise DataError(f"fitting the {form} form needs at least 2 distinct d values (d > 0 for rl), got {len(np.unique(dd))}")
    X = np.column_stack([dd, -basis(dd)])
    (alpha, beta), *_ = np.linalg.lstsq(X, g, rcond=None)
    resid = g - X @ np.array([alpha, beta])
    ss_res, ss_tot = float(resid @ resid), float(((g - g.mean()) ** 2).sum())
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res <= 1e-12 * max(1.0, float(g @ g)) else 0.0
    return GaoFit(form, float(alpha), float(beta), r2, peak(float(alpha), float(beta)), len(dd))


def fit_bon(d: Any, gold: Any) -> GaoFit:
    """Fit gold = d(α − β·d) for best-of-n; the peak is at d* = α / (2β)."""
    return _fit("bon", d, gold, lambda x: x * x, lambda a, b: a / (2 * b) if b > 0 else math.inf)


def fit_rl(d: Any, gold: Any) -> GaoFit:
    """Fit gold = d(α − β·log d) for RL (points with d = 0 dropped); the peak is at d* = exp(α/β − 1)."""

    def peak(a: float, b: float) -> float:
        if b <= 0:
            return math.inf
        expo = a / b - 1.0
        return math.exp(expo) if expo < 700 else math.inf

    return _fit("rl", d, gold, lambda x: x * np.log(x), peak)


@dataclass
class GoldPeak:
    """Where the gold reward peaked and whether the proxy kept rising after it while gold fell."""

    peak_step: float
    peak_gold: float
    final_gold: float
    proxy_at_peak: float | None
    final_proxy: float | None
    overoptimized: bool


def gold_peak(steps: Any, gold: Any, proxy: Any | None = None, tolerance: float = 0.0) -> GoldPeak:
    """The step of the highest gold reward (the first one on ties), after sorting by step.

    Over-optimisation is detected when the peak is not the last point, the final gold reward is
    more than `tolerance` below the peak, and the final proxy reward is above the proxy at the
    peak: the proxy kept rising while the gold reward fell. Without `proxy` it is never detected.
    """
    s, g = as_f64(steps, "steps", 1), as_f64(gold, "gold", 1)
    n = same_length(steps=s, gold=g)
    if n == 0:
        raise DataError("no points to find a peak in", field="gold")
    order = np.argsort(s, kind="stable")
    s, g = s[order], g[order]
    k = int(np.argmax(g))
    proxy_at_peak = final_proxy = None
    detected = False
    if proxy is not None:
        p = as_f64(proxy, "proxy", 1)
        same_length(steps=s, proxy=p)
        p = p[order]
        proxy_at_peak, final_proxy = float(p[k]), float(p[-1])
        detected = k < n - 1 and g[-1] < g[k] - tolerance and p[-1] > p[k]
    return GoldPeak(float(s[k]), float(g[k]), float(g[-1]), proxy_at_peak, final_proxy, bool(detected))
