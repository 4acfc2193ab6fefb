"""Policy-gradient pieces as pure tensor functions: advantages, KL estimators, surrogate losses.

Group-based methods take rewards shaped `[num_prompts, n]` (n samples per prompt) and return
advantages of the same shape. Token-level tensors are `[B, T]` with a `mask` marking response
tokens (right padding). Keeping these pure lets tests check every formula by hand and lets the
RL loop combine them freely.
"""

from __future__ import annotations

import math

import torch

from alignscope.errors import ConfigError, did_you_mean

BASELINES = ("mean", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
KL_ESTIMATORS = ("k1", "k2", "k3")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def _need_group(rewards: torch.Tensor, method: str) -> None:
    if rewards.dim() < 1 or rewards.shape[-1] < 2:
        raise ConfigError(
            f"{method} needs at least 2 samples per prompt (rewards shaped [num_prompts, n]), got shape {tuple(rewards.shape)}",
            "sample n >= 2 responses per prompt",
        )


def reinforce_advantages(rewards: torch.Tensor, baseline: str | float = "mean") -> torch.Tensor:
    """r − b, with b the group mean ('mean'), zero ('none') or a constant: a baseline cuts variance, not bias."""
    if isinstance(baseline, str):
        if baseline == "mean":
            return rewards - rewards.mean(dim=-1, keepdim=True)
        if baseline == "none":
            return rewards.clone()
        raise ConfigError(f"unknown REINFORCE baseline '{baseline}'{did_you_mean(baseline, BASELINES)}", "use mean, none, or a number")
    return rewards - float(baseline)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = r_i − mean_{j≠i} r_j = n/(n−1)·(r_i − mean).

    The leave-one-out baseline does not depend on r_i, so the estimator stays unbiased.
    """
    _need_group(rewards, "RLOO")
    n = rewards.shape[-1]
    return (rewards - rewards.mean(dim=-1, keepdim=True)) * (n / (n - 1))


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: str = "group") -> torch.Tensor:
    """GRPO (Shao et al. 2024): (r − group mean) / (std + eps), TRL's `scale_rewards`.

    scale="group" divides by each group's std, "batch" by the std of every reward of the batch
    (PPO-Lite's choice), "none" not at all (Dr. GRPO). The std is unbiased (n − 1) and eps = 1e-4,
    exactly as TRL's GRPOTrainer. Groups whose rewards all agree get advantage 0.
    """
    _need_group(rewards, "GRPO")
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if scale == "group":
        return centred / (rewards.std(dim=-1, keepdim=True) + eps)
    if scale == "batch":
        return centred / ((rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())) + eps)
    if scale == "none":
        return centred
    raise ConfigError(f"unknown scale_rewards '{scale}'{did_you_mean(scale, SCALE_REWARDS)}", f"use one of {', '.join(SCALE_REWARDS)}")


def dr_grpo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025): r − mean; dividing by the std up-weights near-flat groups."""
    return grpo_advantages(rewards, scale="none")


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """log π − log π_ref per sampled token: unbiased for KL(π‖π_ref), high variance, can be negative."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """½(log π − log π_ref)²: biased but low variance and non-negative (Schulman's k2)."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """exp(d) − d − 1 with d = log π_ref − log π: unbiased and non-negative (Schulman's k3)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL(π‖π_ref) by Schulman's estimator `k1`, `k2` or `k3` (see each)."""
    funcs = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
    if estimator not in funcs:
        raise ConfigError(f"unknown KL estimator '{estimator}'{did_you_mean(estimator, KL_ESTIMATORS)}", f"use one of {', '.join(KL_ESTIMATORS)}")
    return funcs[estimator](logp, ref_logp)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution, −Σ p log p, from logits [..., V]: the full
    distribution's entropy (differentiable), not the sampled token's −log p."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def aggregate_tokens(
    per_token: torch.Tensor, mask: torch.Tensor, loss_type: str = "bnpo", max_len: int | None = None, num_items: float | None = None
) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar, with TRL's `loss_type` meanings.

    grpo: mean over each sequence's tokens, then over sequences (a short response weighs more per
    token); bnpo: mean over every response token of this batch; dr_grpo: token sum / (B·max_len),
    a constant normaliser (Liu et al. 2025); dapo: token sum / `num_items`, the response tokens of
    the whole rollout batch per optimizer step, so every mini-batch of a rollout shares one
    normaliser (Yu et al. 2025). With the rollout batch in one mini-batch, dapo equals bnpo.
    """
    m = mask.to(per_token.dtype)
    if loss_type == "grpo":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    if loss_type == "bnpo":
        return (per_token * m).sum() / m.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        return (per_token * m).sum() / (per_token.shape[0] * (max_len or per_token.shape[1]))
    if loss_type == "dapo":
        return (per_token * m).sum() / max(float(m.sum()) if num_items is None else float(num_items), 1.0)
    raise ConfigError(f"unknown loss_type '{loss_type}'{did_you_mean(loss_type, LOSS_TYPES)}", f"use one of {', '.join(LOSS_TYPES)}")


def micro_batch_weight(loss_type: str, part_mask: torch.Tensor, batch_mask: torch.Tensor) -> float:
    """The weight of a micro-batch's loss (aggregated by `loss_type` over the micro-batch alone) such that the
    weighted micro-batch losses sum to the loss of their whole mini-batch: gradient accumulation that leaves the
    update unchanged. bnpo: its share of the tokens; grpo and dr_grpo: its share of the sequences; dapo: 1
    (its normaliser, `num_items`, is already the rollout's)."""
    if loss_type == "bnpo":
        return float(part_mask.sum()) / max(float(batch_mask.sum()), 1.0)
    if loss_type in ("grpo", "dr_grpo"):
        return part_mask.shape[0] / batch_mask.shape[0]
    if loss_type == "dapo":
        return 1.0
    raise ConfigError(f"unknown loss_type '{loss_type}'{did_you_mean(loss_type, LOSS_TYPES)}", f"use one of {', '.join(LOSS_TYPES)}")


def importance_ratio(token_logps: torch.Tensor, old_token_logps: torch.Tensor, mask: torch.Tensor, level: str = "token") -> torch.Tensor:
    """π/π_old per token [B, T], or GSPO's per sequence [B, 1]: exp of the mean token log-ratio
    over the response (Zheng et al. 2025), as TRL's `importance_sampling_level`."""
    log_ratio = token_logps - old_token_logps
    if level == "token":
        return torch.exp(log_ratio)
    if level == "sequence":
        m = mask.to(log_ratio.dtype)
        return torch.exp((log_ratio * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1))
    raise ConfigError(f"unknown importance_sampling_level '{level}'{did_you_mean(level, IMPORTANCE_SAMPLING_LEVELS)}", "use token or sequence")


def policy_gradient_loss(
    token_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    old_token_logps: torch.Tensor | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "bnpo",
    max_len: int | None = None,
    num_items: float | None = None,
    importance_sampling_level: str = "token",
    kl_coef: float = 0.0,
    ref_token_logps: torch.Tensor | None = None,
    kl_estimator: str = "k3",
    use_bias_correction_kl: bool = False,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> torch.Tensor:
    """The clipped surrogate −min(ρ·A, clip(ρ, 1−ε, 1+ε_high)·A), ρ = π/π_old, plus kl_coef·KL to π_ref,
    aggregated by `loss_type`, minus entropy_coef × the token-mean entropy.

    `advantages` is [B] (one per sequence, broadcast over its tokens) or [B, T] (per token, GAE).
    Without `old_token_logps` the ratio is 1 (old = detached current), so the gradient is plain
    REINFORCE: −A·∇log π. ε_high > ε is DAPO's clip-higher (None: ε). The KL term (`kl_estimator`,
    k3 as GRPO) is the "KL in the loss" variant; pass kl_coef=0 when the KL is put in the reward
    (`kl_penalised_scores`). `use_bias_correction_kl` weights each KL term by ρ, TRL's importance
    correction for a KL estimated on samples of π_old. The entropy bonus is a token mean whatever
    `loss_type`, as TRL's.
    """
    old = token_logps.detach() if old_token_logps is None else old_token_logps
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    ratio = importance_ratio(token_logps, old, mask, importance_sampling_level)
    high = epsilon if epsilon_high is None else epsilon_high
    per_token = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + high) * adv)
    if kl_coef:
        if ref_token_logps is None:
            raise ConfigError("kl_coef is set but no reference log-probabilities were given", "pass ref_token_logps, or kl_coef=0")
        kl = kl_estimate(token_logps, ref_token_logps, kl_estimator)
        per_token = per_token + kl_coef * (kl * ratio if use_bias_correction_kl else kl)
    per_token = per_token.expand_as(token_logps)
    loss = aggregate_tokens(per_token, mask, loss_type, max_len, num_items)
    if entropy_coef:
        if entropy is None:
            raise ConfigError("entropy_coef is set but no token entropies were given", "pass entropy, or entropy_coef=0")
        loss = loss - entropy_coef * aggregate_tokens(entropy, mask, "bnpo")
    return loss


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded [B, T] tokens.

    δ_t = r_t + γ·V_{t+1} − V_t (V = 0 after the last response token), A_t = δ_t + γλ·A_{t+1};
    returns (advantages, returns = A + V), both zero on padding.
    """
    m = mask.to(values.dtype)
    adv = torch.zeros_like(values)
    nxt_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        nxt_m = m[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(nxt_adv)
        nxt_v = values[:, t + 1] * nxt_m if t + 1 < values.shape[1] else torch.zeros_like(nxt_adv)
        delta = rewards[:, t] + gamma * nxt_v - values[:, t]
        nxt_adv = (delta + gamma * lam * nxt_adv * nxt_m) * m[:, t]
        adv[:, t] = nxt_adv
    return adv, (adv + values) * m


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """PPO's clipped value loss ½·max((V − R)², (V_clip − R)²), V_clip = V_old + clip(V − V_old, ±clip); token mean."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return aggregate_tokens(per_token, mask, "bnpo")


class FixedKLController:
    """A constant KL coefficient, with the same `value`/`update` interface as the adaptive one."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Ziegler et al. (2019): a proportional controller that steers the measured KL towards `target`.

    e = clip(KL/target − 1, −0.2, 0.2); β ← β·(1 + e·n_steps/horizon).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ConfigError(f"adaptive KL needs target > 0 and horizon > 0, got {target} and {horizon}")
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    lengths = mask.sum(-1).long()
    if bool((lengths == 0).any()):
        raise ValueError("every sequence needs at least one response token in the mask")
    return lengths - 1


def kl_penalised_rewards(scores: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards for PPO with the KL in the reward (k1 style, Ziegler et al. / InstructGPT).

    r_t = −kl_coef·kl_t on every response token, plus the sequence score on the last one.
    """
    m = mask.to(token_kl.dtype)
    rewards = -kl_coef * token_kl * m
    last = _last_index(mask)
    rewards[torch.arange(len(last), device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


def kl_penalised_scores(scores: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Sequence-level version for REINFORCE/RLOO/GRPO: score − kl_coef·Σ_t kl_t."""
    return scores - kl_coef * (token_kl * mask.to(token_kl.dtype)).sum(-1)


def best_of_n_kl_bound(n: int) -> float:
    """KL(best-of-n ‖ π) ≤ log n − (n−1)/n.

    The formula of Stiennon et al. (2020) and Gao et al. (2022) is an upper bound on the true KL
    (Beirami et al. 2024), tight when no single response carries much probability.
    """
    if n < 1:
        raise ConfigError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n
