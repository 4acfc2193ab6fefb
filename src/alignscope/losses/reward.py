"""Reward-model losses and helpers: the Bradley-Terry loss and ensemble aggregation (tie-aware accuracy lives in
`diagnostics.accuracy`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignscope.errors import ConfigError, did_you_mean

ENSEMBLE_AGGREGATIONS: tuple[str, ...] = ("mean", "min", "mean_minus_std")


def bt_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Bradley-Terry loss `-log σ(r+ - r- - m) + c·(r+ + r-)²`, elementwise (TRL's RewardTrainer).

    The margin m demands a larger gap for pairs rated far apart. The centering term (TRL's
    `center_rewards_coefficient`) pins the otherwise free offset of the rewards near 0, since BT only
    sees differences. Shapes broadcast, so `[B, k]` per-head rewards with a `[B, 1]` margin work.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    return losses


def aggregate_ensemble(rewards: torch.Tensor, how: str = "mean", k_std: float = 1.0) -> torch.Tensor:
    """Combine `[k, B]` rewards of k reward models into one `[B]` reward.

    `min` and `mean_minus_std` are conservative: they penalise responses the members disagree on,
    which is where a policy exploits a single reward model (over-optimisation, docs/science.md, "Over-optimisation").

    The std is the population std (ddof 0): the k members are the whole ensemble that scores the
    response, not a sample from which to estimate a wider population, and one member gives std 0
    rather than NaN. Every ensemble (a k-head `RewardModel`, an `EnsembleReward`) calls this one.
    """
    if how not in ENSEMBLE_AGGREGATIONS:
        raise ConfigError(
            f"unknown ensemble aggregation '{how}'" + did_you_mean(how, ENSEMBLE_AGGREGATIONS),
            f"choose from {', '.join(ENSEMBLE_AGGREGATIONS)}",
        )
    if rewards.dim() < 1 or rewards.shape[0] == 0:
        raise ValueError(f"rewards must be [k, B] with k >= 1, got shape {tuple(rewards.shape)}")
    if how == "mean":
        return rewards.mean(0)
    if how == "min":
        return rewards.min(0).values
    return rewards.mean(0) - k_std * rewards.std(0, unbiased=False)
