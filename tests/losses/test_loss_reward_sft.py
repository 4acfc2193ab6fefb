"""Bradley-Terry reward loss, ensembles, tie-aware accuracy and the SFT loss, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from alignscope.errors import ConfigError
from alignscope.losses.reward import aggregate_ensemble, bt_loss
from alignscope.losses.sft import sft_loss


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_bt_loss_by_hand():
    chosen, rejected = t(1.0, 0.0), t(0.5, 2.0)
    assert bt_loss(chosen, rejected).tolist() == pytest.approx(
        [math.log1p(math.exp(-0.5)), math.log1p(math.exp(2.0))], rel=1e-12
    )
    out = bt_loss(chosen, rejected, margin=t(0.2, 0.0), center_coef=0.1)
    expected = [
        math.log1p(math.exp(-(1.0 - 0.5 - 0.2))) + 0.1 * (1.0 + 0.5) ** 2,
        math.log1p(math.exp(-(0.0 - 2.0))) + 0.1 * (0.0 + 2.0) ** 2,
    ]
    assert out.tolist() == pytest.approx(expected, rel=1e-12)


def test_bt_loss_broadcasts_per_head_rewards_with_per_pair_margin():
    chosen = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    rejected = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    out = bt_loss(chosen, rejected, t(0.5, 0.0).unsqueeze(-1))
    assert out.shape == (2, 2)
    assert out[0].tolist() == pytest.approx([math.log1p(math.exp(-0.5)), math.log1p(math.exp(-1.5))])
    assert out[1].tolist() == pytest.approx([math.log1p(math.exp(1.0)), math.log(2)])


def test_bt_gradient_separates_rewards():
    chosen, rejected = t(0.0).requires_grad_(), t(0.0).requires_grad_()
    bt_loss(chosen, rejected).sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.5) and rejected.grad.item() == pytest.approx(0.5)


def test_aggregate_ensemble_by_hand():
    rewards = torch.tensor([[1.0, 4.0], [3.0, 0.0]], dtype=torch.float64)  # k = 2 members, B = 2
    assert aggregate_ensemble(rewards, "mean").tolist() == [2.0, 2.0]
    assert aggregate_ensemble(rewards, "min").tolist() == [1.0, 0.0]
    # Population std over members: (1, 2).
    assert aggregate_ensemble(rewards, "mean_minus_std", k_std=0.5).tolist() == pytest.approx([1.5, 1.0])
    assert aggregate_ensemble(rewards[:1], "mean_minus_std").tolist() == [1.0, 4.0]


def test_aggregate_ensemble_unknown_name():
    with pytest.raises(ConfigError, match="did you mean 'min'"):
        aggregate_ensemble(torch.zeros(2, 3), "mn")


def test_pair_wins_counts_ties_as_half_on_tensors_and_arrays():
    import numpy as np

    from alignscope.diagnostics.accuracy import pair_wins, tie_aware_accuracy

    assert pair_wins(t(1, 2, 3), t(0, 2, 4)).tolist() == [1.0, 0.5, 0.0]
    assert pair_wins(np.array([1, 2, 3]), np.array([0, 2, 4])).tolist() == [1.0, 0.5, 0.0]
    assert pair_wins(t(math.nan), t(0)).tolist() == [0.0]  # no raise: the NaN guard decides
    assert tie_aware_accuracy(t(1, 2, 3), t(0, 2, 4)) == pytest.approx(0.5)


def test_reward_model_ensemble_uses_the_population_std(tiny_model):
    from alignscope.models.reward_model import RewardModel

    rm = RewardModel(tiny_model, num_heads=3, aggregate="mean_minus_std", k_std=2.0)
    per_head = t(1.0, 2.0, 6.0).unsqueeze(0)  # mean 3, population variance (4 + 1 + 9) / 3
    assert rm.aggregate_heads(per_head).tolist() == pytest.approx([3 - 2 * math.sqrt(14 / 3)])
    assert rm.aggregate_heads(per_head).tolist() == aggregate_ensemble(per_head.T, "mean_minus_std", 2.0).tolist()


def test_sft_loss_token_and_sequence_reduction():
    logps, n = t(-6.0, -2.0), torch.tensor([2, 1])
    token = sft_loss(logps, n, reduction="token")
    assert token.dim() == 0 and token.item() == pytest.approx((6 + 2) / (2 + 1))
    assert sft_loss(logps, n, reduction="sequence").tolist() == pytest.approx([6 / 2, 2 / 1])


def test_sft_loss_empty_response_and_bad_reduction():
    assert sft_loss(t(0.0), torch.tensor([0]), reduction="token").item() == 0.0
    with pytest.raises(ConfigError):
        sft_loss(t(-1.0), torch.tensor([1]), reduction="mean")
