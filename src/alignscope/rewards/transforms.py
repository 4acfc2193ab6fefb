"""Reward transforms: standardise with statistics fixed on a reference sample, log-sigmoid centring, clipping.

Reward variance is not scale-free (science.md §2): transforms change how fast RL can move.
"""

from __future__ import annotations

import torch

from alignscope.errors import ConfigError


class Standardizer:
    """(r - mean) / std with mean and std fixed by `fit` on a reference sample, not per batch."""

    def __init__(self) -> None:
        self.mean: float | None = None
        self.std: float | None = None

    def fit(self, rewards: torch.Tensor) -> "Standardizer":
        r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
        std = float(r.std(unbiased=True)) if r.numel() > 1 else 0.0
        if std == 0.0:
            raise ConfigError("cannot standardise: the reference rewards have zero std", "fit on a sample whose rewards vary")
        self.mean, self.std = float(r.mean()), std
        return self

    def __call__(self, rewards: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            raise ConfigError("Standardizer used before fit()", "call fit() on a reference sample of rewards first")
        return (torch.as_tensor(rewards, dtype=torch.float32) - self.mean) / self.std


def log_sigmoid_centring(rewards: torch.Tensor, ref_rewards: torch.Tensor) -> torch.Tensor:
    """log sigma(r - r_ref) (Wang et al. 2024): diminishing returns above the reference."""
    return torch.nn.functional.logsigmoid(torch.as_tensor(rewards) - torch.as_tensor(ref_rewards))


def clip(rewards: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return torch.clamp(torch.as_tensor(rewards), low, high)
