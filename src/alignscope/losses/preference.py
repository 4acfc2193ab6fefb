"""Pairwise preference losses over per-sequence log-probabilities, under TRL 1.x `DPOTrainer.loss_type` names.

Inputs are summed log-probabilities of the response tokens, shape [B]. Every loss returns per-example
values; the caller reduces. Rewards are the implicit rewards TRL logs as `rewards/chosen` and
`rewards/rejected`: `beta * (logp - ref_logp)`, detached. With `h` the margin of log-ratios
`(logp+ - ref+) - (logp- - ref-)` (docs/science.md, "Direct preference losses"):

- `sigmoid` (DPO; conservative DPO with label smoothing ε): `-(1-ε) log σ(βh) - ε log σ(-βh)`
- `robust` (Chowdhury et al., unbiased under flip rate ε < ½): `(-(1-ε) log σ(βh) + ε log σ(-βh)) / (1-2ε)`
- `hinge`: `max(0, 1 - βh)`; `ipo`: `(h̄ - 1/(2β))²` on per-token mean log-ratios, as TRL
- `exo_pair`: reverse KL between σ(βh) and the smoothed label, ε = `label_smoothing` (1e-3 when 0)
- `nca_pair`, `bco_pair`, `sppo_hard`, `apo_zero`, `apo_down`: per-response terms, as TRL 1.x
  (TRL 1.x's `bco_pair` has no running reward shift: `-log σ(βa) - log σ(-βb)`)
- `sigmoid_norm`: length-normalised DPO *with* the reference, `-log σ(β(a/|y+| - b/|y-|))` (TRL 1.x)
- `simpo` (SimPO, TRL's CPOTrainer `loss_type="simpo"`): reference-free,
  `-log σ(β·logp+/|y+| - β·logp-/|y-| - γ)` with γ = `simpo_gamma`
- `sft`: NLL of the chosen tokens averaged over all chosen tokens of the batch (TRL 1.x's `sft`,
  the term RPO adds to DPO; with `simpo` it is CPO's `cpo_alpha` term)

Everything goes through `logsigmoid`/`sigmoid`, which stay finite for margins in the thousands.
The equivalence against TRL's own trainers is tested in tests/perf/test_trl_equivalence.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignscope.errors import ConfigError, did_you_mean

PREFERENCE_LOSSES: tuple[str, ...] = (
    "sigmoid",
    "ipo",
    "hinge",
    "robust",
    "sigmoid_norm",
    "simpo",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "exo_pair",
    "sft",
)

REFERENCE_FREE: frozenset[str] = frozenset({"simpo", "sft"})

EXO_DEFAULT_EPSILON = 1e-3


@dataclass
class PreferenceLossOutput:
    """Per-example losses and the detached implicit rewards that go into the training metrics."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


@dataclass
class OrpoLossOutput:
    """ORPO per-example losses, rewards as TRL logs them, and the per-example log-odds ratio."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    log_odds: torch.Tensor


def check_loss_type(loss_type: str) -> None:
    """Raise ConfigError for a name not in PREFERENCE_LOSSES, suggesting the closest one."""
    if loss_type not in PREFERENCE_LOSSES:
        raise ConfigError(
            f"unknown preference loss type '{loss_type}'" + did_you_mean(loss_type, PREFERENCE_LOSSES),
            f"choose from {', '.join(PREFERENCE_LOSSES)}",
        )


def _mean_logps(logps: torch.Tensor, lengths: torch.Tensor | None, which: str, loss_type: str) -> torch.Tensor:
    if lengths is None:
        raise ConfigError(
            f"loss '{loss_type}' is length-normalised and needs {which}_lengths",
            f"pass {which}_lengths (response token counts, shape [B])",
        )
    return logps / lengths.to(logps.dtype).clamp(min=1)


def _check_params(loss_type: str, beta: float, label_smoothing: float) -> None:
    if not beta > 0 or not math.isfinite(beta):
        raise ConfigError(f"beta must be a positive number, got {beta}")
    if loss_type == "exo_pair":
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"'exo_pair' needs label_smoothing in [0, 1), got {label_smoothing}")
    elif not 0 <= label_smoothing < 0.5:
        raise ConfigError(
            f"label_smoothing must be in [0, 0.5), got {label_smoothing}",
            "ε is the assumed rate of flipped labels; at ½ the labels carry no information",
        )


def preference_loss(
    loss_type: str,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> PreferenceLossOutput:
    """One preference loss by TRL name, per example ([B]), with detached implicit rewards.

    `simpo_gamma` is SimPO's target reward margin (TRL's CPOConfig name); only `simpo` reads it.
    """
    check_loss_type(loss_type)
    _check_params(loss_type, beta, label_smoothing)
    if chosen_logps.shape != rejected_logps.shape:
        raise ValueError(f"chosen_logps {tuple(chosen_logps.shape)} and rejected_logps {tuple(rejected_logps.shape)} differ")

    if loss_type == "sft":
        _mean_logps(chosen_logps, chosen_lengths, "chosen", loss_type)
        # One token-level mean over the batch, as TRL: every chosen token weighs the same.
        nll = -chosen_logps.sum() / chosen_lengths.to(chosen_logps.dtype).sum().clamp(min=1)
        return PreferenceLossOutput(
            nll.expand_as(chosen_logps), (beta * chosen_logps).detach(), (beta * rejected_logps).detach()
        )
    if loss_type == "simpo":
        chosen_r = beta * _mean_logps(chosen_logps, chosen_lengths, "chosen", loss_type)
        rejected_r = beta * _mean_logps(rejected_logps, rejected_lengths, "rejected", loss_type)
        z = chosen_r - rejected_r - simpo_gamma
        losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
        return PreferenceLossOutput(losses, chosen_r.detach(), rejected_r.detach())

    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ConfigError(
            f"loss '{loss_type}' needs reference log-probabilities",
            f"pass ref_chosen_logps and ref_rejected_logps, or use a reference-free loss ({', '.join(sorted(REFERENCE_FREE))})",
        )
    a = chosen_logps - ref_chosen_logps
    b = rejected_logps - ref_rejected_logps
    chosen_r, rejected_r = beta * a, beta * b
    z = chosen_r - rejected_r  # β·h
    eps = label_smoothing

    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - z)
    elif loss_type == "ipo":
        # As TRL: IPO works on per-token average log-ratios when lengths are known.
        if chosen_lengths is not None and rejected_lengths is not None:
            a, b = a / chosen_lengths.clamp(min=1), b / rejected_lengths.clamp(min=1)
            chosen_r, rejected_r = beta * a, beta * b
        losses = (a - b - 1 / (2 * beta)) ** 2
    elif loss_type == "sigmoid_norm":
        h = _mean_logps(a, chosen_lengths, "chosen", loss_type) - _mean_logps(b, rejected_lengths, "rejected", loss_type)
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "exo_pair":
        eps = eps or EXO_DEFAULT_EPSILON
        losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
            F.logsigmoid(-z) - math.log(eps)
        )
    elif loss_type == "nca_pair":
        losses = -F.logsigmoid(chosen_r) - 0.5 * F.logsigmoid(-chosen_r) - 0.5 * F.logsigmoid(-rejected_r)
    elif loss_type == "bco_pair":
        losses = -F.logsigmoid(chosen_r) - F.logsigmoid(-rejected_r)
    elif loss_type == "sppo_hard":
        losses = (a - 0.5 / beta) ** 2 + (b + 0.5 / beta) ** 2
    elif loss_type == "apo_zero":
        losses = (1 - torch.sigmoid(chosen_r)) + torch.sigmoid(rejected_r)
    else:  # apo_down
        losses = torch.sigmoid(chosen_r) + (1 - torch.sigmoid(z))
    return PreferenceLossOutput(losses, chosen_r.detach(), rejected_r.detach())


def combined_preference_loss(
    specs: Sequence[tuple[str, float]],
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    **kwargs,
) -> PreferenceLossOutput:
    """Weighted sum of preference losses, e.g. `[("sigmoid", 1.0), ("sft", 1.0)]` for RPO (DPO + NLL).

    Rewards come from the first term that uses the reference model (the implicit reward is what the
    metrics are about), or from the first term when all are reference-free.
    """
    if not specs:
        raise ConfigError("no loss terms given", "give at least one (loss_type, weight) pair")
    for name, weight in specs:
        check_loss_type(name)
        if not math.isfinite(weight):
            raise ConfigError(f"weight of loss '{name}' must be finite, got {weight}")
    outputs = [
        preference_loss(name, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **kwargs)
        for name, _ in specs
    ]
    losses = sum(w * o.losses for (_, w), o in zip(specs, outputs))
    source = next((o for (name, _), o in zip(specs, outputs) if name not in REFERENCE_FREE), outputs[0])
    return PreferenceLossOutput(losses, source.chosen_rewards, source.rejected_rewards)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2 (Mächler 2012).

    Each branch sees only inputs on its own side: `torch.where` differentiates both, and log1p(-exp(x))
    at x near 0 (exp rounds to 1) is -inf, whose zero-weighted gradient is still NaN."""
    x = x.clamp(max=-torch.finfo(x.dtype).tiny ** 0.25)
    near = x > -math.log(2)
    return torch.where(near, torch.log(-torch.expm1(torch.where(near, x, -1.0))), torch.log1p(-torch.exp(torch.where(near, -1.0, x))))


def orpo_loss(
    chosen_mean_logps: torch.Tensor,
    rejected_mean_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    *,
    beta: float,
) -> OrpoLossOutput:
    """ORPO (TRL's ORPOTrainer): `chosen_nll - β·log σ(log odds(y+) - log odds(y-))`, per example.

    The odds use per-token mean log-probabilities, `odds(y) = p/(1-p)` with `log p` the mean, so the
    odds ratio does not simply reward short responses. `beta` is ORPO's λ. A mean log-prob of exactly
    0 (p = 1, infinite odds) is nudged just below 0 to keep the loss finite.
    """
    log_odds = (chosen_mean_logps - _log1mexp(chosen_mean_logps)) - (
        rejected_mean_logps - _log1mexp(rejected_mean_logps)
    )
    losses = chosen_nll - beta * F.logsigmoid(log_odds)
    return OrpoLossOutput(
        losses,
        (beta * chosen_mean_logps).detach(),
        (beta * rejected_mean_logps).detach(),
        log_odds.detach(),
    )
