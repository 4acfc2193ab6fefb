"""KTO, BCO, Plackett-Luce/PRO and Curry-DPO pairs against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from alignscope.losses.preference import preference_loss
from alignscope.losses.ranking import (
    curry_pairs,
    plackett_luce_dpo_loss,
    plackett_luce_loss,
    pro_loss,
)
from alignscope.losses.unpaired import bco_loss, kto_kl_estimate, kto_loss


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# Three unpaired examples, beta = 0.2: log-ratios ρ = (1, -1, 0), labels good, bad, good.
POLICY, REF = t(-3, -6, -4), t(-4, -5, -4)
LABELS = torch.tensor([True, False, True])


def test_kto_by_hand():
    out = kto_loss(POLICY, REF, LABELS, torch.tensor(0.5), beta=0.2, desirable_weight=1.0, undesirable_weight=1.5)
    expected = [
        1 - sig(0.2 * (1 - 0.5)),
        1.5 * (1 - sig(0.2 * (0.5 - (-1)))),
        1 - sig(0.2 * (0 - 0.5)),
    ]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert out.rewards.tolist() == pytest.approx([0.2, -0.2, 0.0])


def test_kto_reference_point_is_clamped_and_detached():
    kl = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    negative = kto_loss(POLICY.clone().requires_grad_(), REF, LABELS, kl, beta=0.2)
    zero = kto_loss(POLICY, REF, LABELS, 0.0, beta=0.2)
    assert torch.equal(negative.losses, zero.losses)
    assert zero.losses.tolist() == pytest.approx([1 - sig(0.2), 1 - sig(0.2), 0.5])
    negative.losses.sum().backward()
    assert kl.grad is None


def test_kto_gradient_direction():
    policy = POLICY.clone().requires_grad_()
    kto_loss(policy, REF, LABELS, 0.5, beta=0.2).losses.sum().backward()
    # Desirable examples are pushed up, undesirable ones down.
    assert policy.grad[0] < 0 and policy.grad[2] < 0 and policy.grad[1] > 0


def test_kto_kl_estimate_by_hand():
    policy = t(-3, -4).requires_grad_()
    est = kto_kl_estimate(policy, t(-4, -4.5))
    assert est.item() == pytest.approx((1 + 0.5) / 2)
    assert not est.requires_grad
    assert kto_kl_estimate(t(-5, -5), t(-4, -4)).item() == 0.0


def test_bco_by_hand():
    out = bco_loss(POLICY, REF, LABELS, 0.1, 0.2)
    # Rewards β·ρ = (0.2, -0.2, 0); shift δ = 0.1.
    expected = [-logsig(0.2 - 0.1), -logsig(-(-0.2 - 0.1)), -logsig(0.0 - 0.1)]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert out.rewards.tolist() == pytest.approx([0.2, -0.2, 0.0])


def test_plackett_luce_by_hand():
    loss = plackett_luce_loss(t(2, 1, 0).unsqueeze(0))
    expected = -(2 - math.log(math.exp(2) + math.exp(1) + math.exp(0))) - (1 - math.log(math.exp(1) + math.exp(0)))
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_plackett_luce_mask_drops_padding_anywhere():
    scores = torch.tensor([[2.0, 1.0, 0.0, 5.0], [3.0, 0.5, 7.0, 7.0], [2.0, 9.0, 1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False], [True, False, True, True]])
    loss = plackett_luce_loss(scores, mask)
    three = -(2 - math.log(math.exp(2) + math.exp(1) + 1)) - (1 - math.log(math.exp(1) + 1))
    assert loss.tolist() == pytest.approx([three, math.log1p(math.exp(-2.5)), three], rel=1e-12)


def test_plackett_luce_padding_gets_no_gradient_and_stays_finite():
    scores = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss = plackett_luce_loss(scores, mask)
    loss.sum().backward()
    assert loss[1].item() == 0.0  # a single response has nothing to be ranked against
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[0, 2] == 0 and (scores.grad[1] == 0).all()
    assert scores.grad[0, 0] < 0 < scores.grad[0, 1]


def test_plackett_luce_dpo_with_two_responses_is_dpo():
    chosen, rejected = t(-10, -5), t(-12, -4)
    ref_c, ref_r = t(-11, -5), t(-11, -5)
    out = plackett_luce_dpo_loss(torch.stack([chosen, rejected], 1), torch.stack([ref_c, ref_r], 1), beta=0.5)
    dpo = preference_loss("sigmoid", chosen, rejected, ref_c, ref_r, beta=0.5)
    assert torch.allclose(out.losses, dpo.losses)
    assert out.scores[:, 0].tolist() == pytest.approx(dpo.chosen_rewards.tolist())


def test_plackett_luce_dpo_by_hand():
    out = plackett_luce_dpo_loss(t(-1, -2, -3).unsqueeze(0), t(-2, -2, -2).unsqueeze(0), beta=0.5)
    # Scores β·(logp - ref) = (0.5, 0, -0.5).
    e = math.exp
    expected = -(0.5 - math.log(e(0.5) + e(0) + e(-0.5))) - (0 - math.log(e(0) + e(-0.5)))
    assert out.losses.item() == pytest.approx(expected, rel=1e-12)
    assert out.scores[0].tolist() == pytest.approx([0.5, 0.0, -0.5])


def test_pro_by_hand():
    logps, lengths = t(-2, -6, -3).unsqueeze(0), t(2, 3, 1).unsqueeze(0)
    # Mean log-probs (-1, -2, -3).
    e = math.exp
    pl = -(-1 - math.log(e(-1) + e(-2) + e(-3))) - (-2 - math.log(e(-2) + e(-3)))
    assert pro_loss(logps, lengths).losses.item() == pytest.approx(pl, rel=1e-12)
    out = pro_loss(logps, lengths, sft_weight=0.5)
    assert out.losses.item() == pytest.approx(pl + 0.5 * 1.0, rel=1e-12)
    assert out.scores[0].tolist() == pytest.approx([-1.0, -2.0, -3.0])


def test_curry_pairs_easy_to_hard():
    assert curry_pairs([3.0, 1.0, 2.0, 1.0]) == [
        (0, 1, 2.0),
        (0, 3, 2.0),
        (0, 2, 1.0),
        (2, 1, 1.0),
        (2, 3, 1.0),
    ]
    assert curry_pairs([1.0, 1.0]) == []
    assert curry_pairs([0.5, 4.5]) == [(1, 0, 4.0)]
