"""CHES: the centered hidden embedding similarity of a preference pair (Razin et al. 2024).

Inputs are what the scoring engine returns per response: `S` = the sum of the final-norm hidden
states at the |y| positions that predict response tokens (`ScoreOutput.hidden_sum`, [N, d]) and
`n` = |y| (`ScoreOutput.n_tokens`, [N]). A high CHES means the gradient that raises y+ barely
separates it from y-, so DPO's push-down on y- drags y+ down too: the pair likely displaces.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from alignscope.diagnostics._arrays import as_f64, same_length
from alignscope.errors import ConfigError, DataError


def _pair(S_pos: Any, S_neg: Any) -> tuple[np.ndarray, np.ndarray]:
    sp, sn = as_f64(S_pos, "S_pos", ndim=2), as_f64(S_neg, "S_neg", ndim=2)
    if sp.shape != sn.shape:
        raise DataError(f"S_pos has shape {sp.shape} but S_neg has {sn.shape}; pairs must align")
    return sp, sn


def ches(S_pos: Any, S_neg: Any) -> np.ndarray:
    """Raw CHES per pair, ⟨S+, S−⟩ − ‖S+‖² = ⟨S+, S− − S+⟩ ([B], float64).

    Asymmetric on purpose: it measures how much of y+'s own direction y- shares.
    """
    sp, sn = _pair(S_pos, S_neg)
    return np.einsum("bd,bd->b", sp, sn - sp)


def ln_ches(S_pos: Any, S_neg: Any, n_pos: Any, n_neg: Any) -> np.ndarray:
    """Length-normalised CHES, ⟨S+, S−⟩/(|y+||y−|) − ‖S+‖²/|y+|² ([B], float64).

    Raw CHES grows with response length, so filtering uses this form to compare pairs fairly.
    """
    sp, sn = _pair(S_pos, S_neg)
    npos, nneg = as_f64(n_pos, "n_pos", ndim=1), as_f64(n_neg, "n_neg", ndim=1)
    same_length(S_pos=sp, n_pos=npos, n_neg=nneg)
    if np.any(npos <= 0) or np.any(nneg <= 0):
        raise DataError("response lengths must be positive (|y| counts the EOS token)", field="n_pos/n_neg")
    cross = np.einsum("bd,bd->b", sp, sn) / (npos * nneg)
    self_sim = np.einsum("bd,bd->b", sp, sp) / (npos * npos)
    return cross - self_sim


def ches_filter(
    scores: Any,
    drop_fraction: float | None = None,
    threshold: float | None = None,
    keep_lowest_fraction: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split pair indices into (keep_idx, drop_idx), both sorted ascending, by CHES score.

    Exactly one rule: `drop_fraction` drops the ⌊f·N⌋ highest-scoring pairs (never more than
    asked); `threshold` drops every pair scoring strictly above it; `keep_lowest_fraction` keeps
    the ⌈f·N⌉ lowest-scoring pairs (never fewer than asked; the paper keeps the lowest 5%). Ties
    are broken by index, so the split is deterministic.
    """
    chosen = [k for k, v in {"drop_fraction": drop_fraction, "threshold": threshold,
                             "keep_lowest_fraction": keep_lowest_fraction}.items() if v is not None]
    if len(chosen) != 1:
        raise ConfigError(
            f"ches_filter needs exactly one of drop_fraction, threshold, keep_lowest_fraction; got {chosen or 'none'}",
            "pass a single rule, e.g. drop_fraction=0.1",
        )
    s = as_f64(scores, "scores", ndim=1)
    n = len(s)
    if threshold is not None:
        drop_mask = s > threshold
    else:
        frac = drop_fraction if drop_fraction is not None else keep_lowest_fraction
        if not 0.0 <= frac <= 1.0:
            raise ConfigError(f"{chosen[0]} must be in [0, 1], got {frac}")
        if drop_fraction is not None:
            n_keep = n - math.floor(drop_fraction * n + 1e-9)
        else:
            n_keep = math.ceil(keep_lowest_fraction * n - 1e-9)
        order = np.argsort(s, kind="stable")
        drop_mask = np.ones(n, dtype=bool)
        drop_mask[order[:n_keep]] = False
    idx = np.arange(n)
    return idx[~drop_mask], idx[drop_mask]
