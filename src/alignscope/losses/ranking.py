"""Listwise losses for rankings `y1 > y2 > ... > yn` of n ≥ 2 responses, and Curry-DPO's pair curriculum.

Inputs are `[B, n]`, best response first. A boolean mask `[B, n]` marks real responses when rankings
have different lengths; masked entries take no part in the loss and get no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignscope.errors import ConfigError


@dataclass
class RankingLossOutput:
    """Per-example losses [B] and the detached scores [B, n] they were computed from."""

    losses: torch.Tensor
    scores: torch.Tensor


def _check_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, n], got shape {tuple(scores.shape)}")
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if mask.shape != scores.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from scores shape {tuple(scores.shape)}")
    return mask.to(torch.bool)


def plackett_luce_loss(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Negative Plackett-Luce log-likelihood of the given order: `-Σ_k log(e^{s_k} / Σ_{j≥k} e^{s_j})`.

    PRO's objective: each response must beat all responses ranked below it. The last term is
    log 1 = 0, so the sum runs over k = 1..n-1 in effect. With n = 2 this is `-log σ(s1 - s2)`, the
    DPO loss when the scores are `β·(logp - ref_logp)`. Returns [B].
    """
    mask = _check_mask(scores, mask)
    # A finite stand-in for -inf keeps fully masked tails finite, so `where` passes no NaN gradient.
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    tail_lse = torch.logcumsumexp(filled.flip(-1), dim=-1).flip(-1)  # log Σ_{j≥k} e^{s_j}
    terms = torch.where(mask, filled - tail_lse, torch.zeros_like(filled))
    return -terms.sum(-1)


def pro_loss(
    policy_logps: torch.Tensor,
    lengths: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    sft_weight: float = 0.0,
) -> RankingLossOutput:
    """PRO (Song et al. 2024): Plackett-Luce over per-token mean log-probs, plus optional NLL on the top response.

    Mean rather than summed log-probs keep the ranking from tracking response length. `sft_weight`
    adds `sft_weight · (-mean logp of y1)`, the SFT term PRO uses to keep the best response likely.
    """
    mask = _check_mask(policy_logps, mask)
    scores = policy_logps / lengths.to(policy_logps.dtype).clamp(min=1)
    losses = plackett_luce_loss(scores, mask)
    if sft_weight:
        losses = losses - sft_weight * scores[:, 0]
    return RankingLossOutput(losses, scores.detach())


def plackett_luce_dpo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
) -> RankingLossOutput:
    """DPO's Plackett-Luce generalisation (Rafailov et al. 2023, App. A.3): scores `β·(logp - ref_logp)`.

    The returned scores are the implicit rewards of each response, for metrics.
    """
    if not beta > 0:
        raise ConfigError(f"beta must be positive, got {beta}")
    scores = beta * (policy_logps - ref_logps)
    return RankingLossOutput(plackett_luce_loss(scores, mask), scores.detach())


def curry_pairs(scores: Sequence[float]) -> list[tuple[int, int, float]]:
    """Curry-DPO (Pattnaik et al. 2024): all pairs (i, j) with scores[i] > scores[j], easy to hard.

    Pairs with the largest rating gap are the easiest to learn and come first. Tied pairs carry no
    preference and are left out. Ties in the gap keep index order, so the curriculum is deterministic.
    """
    pairs = [
        (i, j, float(scores[i]) - float(scores[j]))
        for i in range(len(scores))
        for j in range(len(scores))
        if scores[i] > scores[j]
    ]
    return sorted(pairs, key=lambda p: -p[2])
