"""Losses for unpaired feedback `(x, y, good/bad)`: KTO and BCO, as in TRL's KTOTrainer and BCOTrainer.

Both compare the implicit reward `r = β·(log π(y|x) - log π_ref(y|x))` against a reference point
instead of against a paired response: KTO against a batch estimate of KL(π || π_ref), BCO against a
running mean of the rewards. Reference points are detached: they are baselines, not targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class UnpairedLossOutput:
    """Per-example losses and detached implicit rewards `β·(logp - ref_logp)`, both [B]."""

    losses: torch.Tensor
    rewards: torch.Tensor


def kto_kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z_ref: mean log-ratio on mismatched (prompt, completion) pairs.

    Mismatched pairs make this an estimate of KL(π || π_ref) that the policy cannot game by raising
    the likelihood of the very completions it is trained on. A KL is non-negative, so negative
    estimates (sampling noise) are clamped to 0. Returns a detached scalar.
    """
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def _reference_point(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    kl: float | torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> UnpairedLossOutput:
    """KTO (Ethayarajh et al. 2024, eq. 7): `λ_D(1 - σ(β(ρ - z)))` if desirable else `λ_U(1 - σ(β(z - ρ)))`.

    ρ is the log-ratio, z the KL reference point (see `kto_kl_estimate`; detached and clamped at 0
    here too). The weights let one balance unequal numbers of good and bad examples.
    """
    labels = labels.to(torch.bool)
    z = _reference_point(kl, policy_logps).clamp(min=0)
    logratios = policy_logps - ref_logps
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (logratios - z)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z - logratios)))
    return UnpairedLossOutput(torch.where(labels, desirable, undesirable), (beta * logratios).detach())


def bco_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    delta: float | torch.Tensor,
    beta: float,
) -> UnpairedLossOutput:
    """BCO (Jung et al. 2024): a logistic classifier of good vs bad whose logit is the implicit reward.

    Desirable: `-log σ(r - δ)`; undesirable: `-log σ(-(r - δ))`, with δ the running mean of rewards
    (passed in, detached) shifting the decision boundary so the classifier stays balanced.
    """
    labels = labels.to(torch.bool)
    rewards = beta * (policy_logps - ref_logps)
    shifted = rewards - _reference_point(delta, rewards)
    losses = torch.where(labels, -F.logsigmoid(shifted), -F.logsigmoid(-shifted))
    return UnpairedLossOutput(losses, rewards.detach())
