"""Reward-model accuracy, off-policy (fixed pairs) and on-policy (pairs of policy samples).

Ties count ½ everywhere (docs/science.md, "Reward variance" and "Implicit reward models"): an RM that cannot tell two responses apart is
guessing. For on-policy accuracy a pair the *gold* reward ties has no correct order, so it is left
out of the denominator. The reference code of Razin et al. 2025 (princeton-pli/what-makes-good-rm,
`__compute_per_prompt_ranking_accuracy`) instead scores sign agreement, which counts an RM tie as 0
and a gold tie as 1 only when the RM ties too; the two agree whenever nothing ties.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alignscope.diagnostics._arrays import as_f64, same_length
from alignscope.errors import DataError


def pair_wins(chosen: Any, rejected: Any) -> Any:
    """Per pair 1[c > r] + ½·1[c = r], elementwise on numpy arrays or torch tensors alike.

    The one home of the tie convention: training metrics (`rewards/accuracies`, on tensors, where a
    NaN must not raise before the NaN guard sees it), the displacement monitor and
    `tie_aware_accuracy` all score pairs through it.
    """
    return (chosen > rejected) * 1.0 + 0.5 * (chosen == rejected)


def tie_aware_accuracy(chosen_scores: Any, rejected_scores: Any) -> float:
    """Mean of `pair_wins` over pairs: the off-policy accuracy of an RM on fixed pairs."""
    c, r = as_f64(chosen_scores, "chosen_scores", ndim=1), as_f64(rejected_scores, "rejected_scores", ndim=1)
    if same_length(chosen_scores=c, rejected_scores=r) == 0:
        raise DataError("no pairs to score", field="chosen_scores")
    return float(np.mean(pair_wins(c, r)))


def per_prompt_accuracy(rm_rewards: Any, gold_rewards: Any) -> np.ndarray:
    """On-policy accuracy of each prompt over all n(n−1)/2 pairs of its samples ([P], float64).

    A pair scores 1 if the RM orders it strictly as the gold reward does, 0 if strictly opposite,
    ½ if the RM ties; pairs the gold reward ties are excluded. A prompt whose pairs all tie under
    gold has no defined accuracy and gets NaN.
    """
    rm, gold = as_f64(rm_rewards, "rm_rewards", ndim=2), as_f64(gold_rewards, "gold_rewards", ndim=2)
    if rm.shape != gold.shape:
        raise DataError(f"rm_rewards has shape {rm.shape} but gold_rewards has {gold.shape}")
    if rm.shape[1] < 2:
        raise DataError("on-policy accuracy needs at least 2 samples per prompt", field="rm_rewards")
    i, j = np.triu_indices(rm.shape[1], k=1)
    rm_sign, gold_sign = np.sign(rm[:, i] - rm[:, j]), np.sign(gold[:, i] - gold[:, j])
    decisive = gold_sign != 0
    score = np.where(rm_sign == 0, 0.5, (rm_sign == gold_sign).astype(np.float64))
    counted = decisive.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, (score * decisive).sum(axis=1) / counted, np.nan)


def on_policy_accuracy(rm_rewards: Any, gold_rewards: Any) -> float:
    """Mean per-prompt on-policy accuracy (`per_prompt_accuracy`) over prompts where it is defined.

    Prompts are weighted equally, as in the reference code; NaN when no prompt has a gold-ordered
    pair.
    """
    acc = per_prompt_accuracy(rm_rewards, gold_rewards)
    defined = acc[~np.isnan(acc)]
    return float(defined.mean()) if defined.size else float("nan")
