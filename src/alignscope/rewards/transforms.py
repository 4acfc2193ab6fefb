"""Reward transforms: standardise with statistics fixed on a reference sample, log-sigmoid centring, clipping,
and DAPO's overlong penalty.

Reward variance is not scale-free (docs/science.md, "Reward variance"), so a transform changes how fast RL can move;
statistics are fixed once (`fit`) rather than recomputed per batch so the reward a response gets
does not depend on the batch it lands in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from alignscope.errors import ConfigError, did_you_mean

TRANSFORMS = ("standardize", "clip", "log_sigmoid_centring")


def _as_float(rewards: Any) -> torch.Tensor:
    return torch.as_tensor(rewards, dtype=torch.float32)


class Standardizer:
    """(r − mean) / std with mean and unbiased std fixed by `fit` on a reference sample.

    Unbiased std, as in `diagnostics.variance.standardize_global`, so standardised variances
    there and here agree.
    """

    def __init__(self) -> None:
        self.mean: float | None = None
        self.std: float | None = None

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def fit(self, rewards: Any) -> Standardizer:
        r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
        if r.numel() < 2:
            raise ConfigError(f"cannot standardise from {r.numel()} reference reward(s)", "fit on at least 2 rewards")
        std = float(r.std())
        if not std > 0:
            raise ConfigError("cannot standardise: the reference rewards have zero std", "fit on a sample whose rewards vary")
        self.mean, self.std = float(r.mean()), std
        return self

    def __call__(self, rewards: Any) -> torch.Tensor:
        if self.mean is None or self.std is None:
            raise ConfigError("Standardizer used before fit()", "call fit() on a reference sample of rewards first")
        return (_as_float(rewards) - self.mean) / self.std


def log_sigmoid_centring(rewards: Any, ref_rewards: Any) -> torch.Tensor:
    """log σ(r − r_ref) (Wang et al. 2024, "Transforming and combining rewards").

    Diminishing returns above the reference reward r_ref (e.g. a reference policy's reward for
    the same prompt): the RL signal concentrates on responses that are still worse than r_ref.
    """
    return torch.nn.functional.logsigmoid(_as_float(rewards) - _as_float(ref_rewards))


def clip(rewards: Any, low: float, high: float) -> torch.Tensor:
    """Clamp to [low, high]: bounds the reward an outlier can collect from an exploited RM."""
    if low > high:
        raise ConfigError(f"clip needs low <= high, got [{low}, {high}]")
    return torch.clamp(_as_float(rewards), low, high)


class RewardTransform:
    """A chain of transforms built from a config list, applied in order.

    Steps: `"standardize"` (needs `fit`), `{"clip": [low, high]}`, and `"log_sigmoid_centring"`
    (r_ref passed at call time) or `{"log_sigmoid_centring": r_ref}` (a constant r_ref).
    Example: `RewardTransform(["standardize", {"clip": [-5, 5]}]).fit(ref_rewards)(rewards)`.
    `fit` feeds the reference rewards through the chain, so a standardiser placed after another
    step is fitted on that step's output.
    """

    def __init__(self, steps: Sequence[str | dict[str, Any]] = ()):
        if isinstance(steps, (str, dict)):
            steps = [steps]
        self.steps: list[tuple[str, Any]] = [self._parse(s) for s in steps]

    @staticmethod
    def _parse(step: str | dict[str, Any]) -> tuple[str, Any]:
        if isinstance(step, dict):
            if len(step) != 1:
                raise ConfigError(f"a reward transform step must have exactly one key, got {sorted(step)}", 'write e.g. {"clip": [-5, 5]}')
            name, arg = next(iter(step.items()))
        else:
            name, arg = step, None
        if name not in TRANSFORMS:
            raise ConfigError(f"unknown reward transform '{name}'{did_you_mean(str(name), TRANSFORMS)}", f"use one of {', '.join(TRANSFORMS)}")
        if name == "standardize":
            if arg is not None:
                raise ConfigError("'standardize' takes no argument (its statistics come from fit())")
            return name, Standardizer()
        if name == "clip":
            if not isinstance(arg, (list, tuple)) or len(arg) != 2:
                raise ConfigError(f"'clip' needs [low, high], got {arg!r}", 'write {"clip": [-5, 5]}')
            low, high = float(arg[0]), float(arg[1])
            if low > high:
                raise ConfigError(f"'clip' needs low <= high, got [{low}, {high}]")
            return name, (low, high)
        return name, None if arg is None else float(arg)

    def fit(self, sample: Any, ref_rewards: Any = None) -> RewardTransform:
        """Fit every standardiser on a reference sample of rewards, as the sample arrives at its step."""
        fit_upto = max((i + 1 for i, (name, _) in enumerate(self.steps) if name == "standardize"), default=0)
        r = _as_float(sample)
        for name, arg in self.steps[:fit_upto]:
            if name == "standardize":
                arg.fit(r)
            r = self._apply(name, arg, r, ref_rewards)
        return self

    def _apply(self, name: str, arg: Any, r: torch.Tensor, ref_rewards: Any) -> torch.Tensor:
        if name == "standardize":
            return arg(r)
        if name == "clip":
            return clip(r, *arg)
        centre = arg if arg is not None else ref_rewards
        if centre is None:
            raise ConfigError("'log_sigmoid_centring' needs reference rewards", "call the transform with ref_rewards=..., or give a constant")
        return log_sigmoid_centring(r, centre)

    def __call__(self, rewards: Any, ref_rewards: Any = None) -> torch.Tensor:
        """Apply the chain; `ref_rewards` is r_ref for a log-sigmoid step without a constant."""
        r = _as_float(rewards)
        for name, arg in self.steps:
            r = self._apply(name, arg, r, ref_rewards)
        return r


def overlong_penalty(lengths: Any, max_len: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), scaled by `penalty`.

    0 up to max_len − buffer tokens, then falling linearly to −penalty at max_len, and −penalty
    beyond: a response cut at the length cap is punished for its length, not scored as if finished.
    """
    if buffer < 0 or buffer > max_len:
        raise ConfigError(f"overlong_buffer must be in [0, max_len={max_len}], got {buffer}")
    n = _as_float(lengths)
    start = max_len - buffer
    ramp = (start - n) / buffer if buffer else torch.zeros_like(n)
    out = torch.where(n <= start, torch.zeros_like(n), torch.where(n <= max_len, ramp, torch.full_like(n, -1.0)))
    return penalty * out
