"""Likelihood-displacement monitor: how the log-probs of the chosen and rejected responses of a
fixed evaluation set moved since the start of preference training (docs/science.md, "Likelihood displacement")."""

from __future__ import annotations

from typing import Any

import numpy as np

from alignscope.diagnostics._arrays import as_f64, same_length
from alignscope.diagnostics.accuracy import pair_wins
from alignscope.errors import DataError


def displacement_stats(
    logp_chosen_start: Any,
    logp_chosen_now: Any,
    logp_rejected_start: Any,
    logp_rejected_now: Any,
) -> dict[str, float]:
    """Summary of one evaluation point against the start, as plain floats (ready for JSON).

    Keys: `n_pairs`; `mean_chosen_change` and `mean_rejected_change` (mean of now − start);
    `fraction_chosen_fell` (pairs whose chosen log-prob is strictly lower now: the displacement
    symptom even when the margin grows); `ranking_accuracy` and `ranking_accuracy_start` (fraction
    with log π(y+) > log π(y−), a tie counting ½; preference training often barely changes it).
    """
    cs, cn = as_f64(logp_chosen_start, "logp_chosen_start", 1), as_f64(logp_chosen_now, "logp_chosen_now", 1)
    rs, rn = as_f64(logp_rejected_start, "logp_rejected_start", 1), as_f64(logp_rejected_now, "logp_rejected_now", 1)
    n = same_length(logp_chosen_start=cs, logp_chosen_now=cn, logp_rejected_start=rs, logp_rejected_now=rn)
    if n == 0:
        raise DataError("no evaluation pairs", field="logp_chosen_start")
    return {
        "n_pairs": n,
        "mean_chosen_change": float(np.mean(cn - cs)),
        "mean_rejected_change": float(np.mean(rn - rs)),
        "fraction_chosen_fell": float(np.mean(cn < cs)),
        "ranking_accuracy": float(np.mean(pair_wins(cn, rn))),
        "ranking_accuracy_start": float(np.mean(pair_wins(cs, rs))),
    }


def mass_gainers(probs_start: Any, probs_now: Any, top_k: int = 10) -> list[tuple[int, float]]:
    """The up-to-`top_k` token ids whose probability rose most, as (id, gain) with gain > 0, largest first.

    For single-token or short responses this names where the mass that left y+ went: tokens
    aligned with W_{y+} − W_{y−}, possibly ones opposite in meaning to y+.
    """
    ps, pn = as_f64(probs_start, "probs_start", 1), as_f64(probs_now, "probs_now", 1)
    same_length(probs_start=ps, probs_now=pn)
    gain = pn - ps
    order = np.argsort(-gain, kind="stable")[: max(top_k, 0)]
    return [(int(i), float(gain[i])) for i in order if gain[i] > 0]
