"""Similarity baselines that CHES is compared against (in the paper they do not order pairs by
how much they displace): token edit distance and the final-position embedding inner product."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from alignscope.diagnostics._arrays import as_f64
from alignscope.errors import DataError


def _levenshtein(a: np.ndarray, b: np.ndarray) -> int:
    """Levenshtein distance with one numpy pass per row of the DP table.

    Within a row the insertion chain cur[j] = min(cur[j-1] + 1, t[j]) is a running minimum:
    cur[j] = j + min_{k<=j}(t[k] − k), so the row needs no Python loop over columns.
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    cols = np.arange(m + 1)
    prev = cols.copy()
    for i, tok in enumerate(a, start=1):
        t = np.empty(m + 1, dtype=np.int64)
        t[0] = i
        np.minimum(prev[1:] + 1, prev[:-1] + (b != tok), out=t[1:])
        prev = np.minimum.accumulate(t - cols) + cols
    return int(prev[-1])


def normalized_edit_distance(a_tokens: Sequence[Hashable], b_tokens: Sequence[Hashable]) -> float:
    """Levenshtein distance between two token sequences divided by the longer length, in [0, 1].

    Tokens may be ids or strings; two empty sequences are at distance 0.
    """
    longest = max(len(a_tokens), len(b_tokens))
    if longest == 0:
        return 0.0
    vocab: dict[Hashable, int] = {}
    a = np.fromiter((vocab.setdefault(t, len(vocab)) for t in a_tokens), dtype=np.int64, count=len(a_tokens))
    b = np.fromiter((vocab.setdefault(t, len(vocab)) for t in b_tokens), dtype=np.int64, count=len(b_tokens))
    return _levenshtein(a, b) / longest


def final_embedding_inner_product(h_pos: Any, h_neg: Any) -> np.ndarray:
    """Row-wise ⟨h+, h−⟩ of the final-position hidden states ([B, d] each → [B], float64)."""
    hp, hn = as_f64(h_pos, "h_pos", ndim=2), as_f64(h_neg, "h_neg", ndim=2)
    if hp.shape != hn.shape:
        raise DataError(f"h_pos has shape {hp.shape} but h_neg has {hn.shape}; pairs must align")
    return np.einsum("bd,bd->b", hp, hn)
