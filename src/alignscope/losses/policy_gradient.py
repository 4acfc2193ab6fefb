"""Policy-gradient pieces as pure tensor functions: advantages, KL estimators, surrogate losses.

Rewards come in groups: `[num_prompts, n]`, n samples per prompt.
"""

from __future__ import annotations

import math

import torch


def reinforce_advantages(rewards: torch.Tensor, baseline: str | float = "mean") -> torch.Tensor:
    """r - b with b the group mean ('mean'), zero ('none'), or a constant."""
    if baseline == "mean":
        return rewards - rewards.mean(dim=-1, keepdim=True)
    if baseline == "none":
        return rewards.clone()
    return rewards - float(baseline)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO: A_i = r_i - mean_{j != i} r_j = n/(n-1) * (r_i - mean)."""
    n = rewards.shape[-1]
    if n < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    return (rewards - rewards.mean(dim=-1, keepdim=True)) * n / (n - 1)


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: (r - mean) / (std + eps), std unbiased as in TRL's GRPOTrainer (torch.std default)."""
    return (rewards - rewards.mean(dim=-1, keepdim=True)) / (rewards.std(dim=-1, keepdim=True) + eps)


def dr_grpo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: r - mean, no std normalisation (Liu et al. 2025)."""
    return rewards - rewards.mean(dim=-1, keepdim=True)


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """log pi - log pi_ref: unbiased, can be negative per token."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """exp(ref - logp) - (ref - logp) - 1: unbiased and non-negative (Schulman's k3)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def _aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str, max_len: int | None) -> torch.Tensor:
    m = mask.to(per_token.dtype)
    if how == "token_mean":
        return (per_token * m).sum() / m.sum().clamp(min=1)
    if how == "seq_mean":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    if how == "dr_grpo":
        return (per_token * m).sum() / (per_token.shape[0] * (max_len or per_token.shape[1]))
    raise ValueError(f"unknown loss aggregation '{how}' (token_mean, seq_mean, dr_grpo)")


def policy_gradient_loss(
    token_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    old_token_logps: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    loss_agg: str = "token_mean",
    max_len: int | None = None,
    kl_coef: float = 0.0,
    ref_token_logps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Clipped surrogate -min(ratio*A, clip(ratio)*A) (+ kl_coef * k3 to the reference).

    `advantages` is [B] (one per sequence) or [B, T] (per token, e.g. from GAE). With no old
    log-probs the ratio is 1 and the gradient is plain REINFORCE.
    """
    old = token_logps.detach() if old_token_logps is None else old_token_logps
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(token_logps - old)
    per_token = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    if kl_coef and ref_token_logps is not None:
        per_token = per_token + kl_coef * kl_k3(token_logps, ref_token_logps)
    return _aggregate(per_token, mask, loss_agg, max_len)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over [B, T] per-token rewards; returns (advantages, returns)."""
    m = mask.to(values.dtype)
    adv = torch.zeros_like(values)
    last = torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    for t in reversed(range(values.shape[1])):
        next_v = values[:, t + 1] * m[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last * (m[:, t + 1] if t + 1 < values.shape[1] else 0)) * m[:, t]
        adv[:, t] = last
    return adv, (adv + values) * m


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2) -> torch.Tensor:
    """PPO's clipped value loss: 0.5 * max((v - R)^2, (clip(v) - R)^2), token mean."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return _aggregate(per_token, mask, "token_mean", None)


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        return None


class AdaptiveKLController:
    """Ziegler et al. (2019): move the coefficient so that the KL tracks `target`."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = max(-0.2, min(0.2, current_kl / self.target - 1))
        self.value *= 1 + error * n_steps / self.horizon


def kl_penalised_rewards(scores: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL at every token, plus the score on the last response token."""
    m = mask.to(token_kl.dtype)
    rewards = -kl_coef * token_kl * m
    last = m.sum(-1).long() - 1
    rewards[torch.arange(len(last)), last] += scores
    return rewards


def best_of_n_kl_bound(n: int) -> float:
    """KL(best-of-n || pi) <= log n - (n-1)/n (Stiennon et al.; exact for continuous rewards)."""
    return math.log(n) - (n - 1) / n
