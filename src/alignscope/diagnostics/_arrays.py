"""Array coercion shared by the diagnostics: accept numpy, torch or lists, compute in float64."""

from __future__ import annotations

from typing import Any

import numpy as np

from alignscope.errors import DataError


def as_f64(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """`x` as a finite float64 array; torch tensors are detached and moved to the CPU first.

    Float64 because CHES subtracts two large inner products of summed hidden states, and float32
    loses the difference for long responses.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise DataError(f"expected a {ndim}-d array, got shape {tuple(arr.shape)}", field=name)
    if not np.all(np.isfinite(arr)):
        raise DataError("contains NaN or infinite values", "check the scores that produced it", field=name)
    return arr


def same_length(**arrays: np.ndarray) -> int:
    """The common first dimension of `arrays`; a DataError naming them when they differ."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"arrays must have the same length, got {lengths}")
    return next(iter(lengths.values()))
