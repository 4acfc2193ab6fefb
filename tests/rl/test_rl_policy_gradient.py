"""Policy-gradient pieces against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from alignscope.errors import ConfigError
from alignscope.losses import policy_gradient as pg


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


def test_rloo_leave_one_out():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    # mean of the others: (2+3+6)/3 = 11/3, (1+3+6)/3 = 10/3, (1+2+6)/3 = 3, (1+2+3)/3 = 2
    expected = [[1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2]]  # = [-8/3, -4/3, 0, 4]
    assert close(pg.rloo_advantages(r), expected)


def test_grpo_normalisation_uses_unbiased_std():
    r = torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    # group 1: mean 0.5, deviations ±0.5, unbiased var = 4·0.25/3 = 1/3, std = sqrt(1/3) = 0.57735
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # = 0.865876
    # group 2: every reward equal -> deviation 0, std 0 -> advantage 0 (eps avoids 0/0)
    assert close(pg.grpo_advantages(r), [[-a, -a, a, a], [0, 0, 0, 0]])
    assert abs(a - 0.865876) < 1e-6


def test_dr_grpo_no_std():
    r = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 2.0, 3.0, 6.0]])
    assert close(pg.dr_grpo_advantages(r), [[-0.5, -0.5, 0.5, 0.5], [-2.0, -1.0, 0.0, 3.0]])  # r − mean (0.5, 3)


def test_reinforce_baselines():
    r = torch.tensor([[1.0, 3.0]])
    assert close(pg.reinforce_advantages(r), [[-1.0, 1.0]])  # mean 2
    assert close(pg.reinforce_advantages(r, "none"), [[1.0, 3.0]])
    assert close(pg.reinforce_advantages(r, 0.5), [[0.5, 2.5]])
    with pytest.raises(ConfigError, match="did you mean 'mean'"):
        pg.reinforce_advantages(r, "meen")


def test_group_methods_need_two_samples():
    with pytest.raises(ConfigError, match="at least 2 samples"):
        pg.rloo_advantages(torch.tensor([[1.0], [2.0]]))


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # k1 = log 0.5 − log 0.25 = log 2 = 0.693147
    assert close(pg.kl_k1(logp, ref), [math.log(2)])
    # k2 = ½ (log 2)² = 0.240227
    assert close(pg.kl_k2(logp, ref), [0.5 * math.log(2) ** 2])
    # k3: d = ref − logp = log 0.5; exp(d) − d − 1 = 0.5 + 0.693147 − 1 = 0.193147
    assert close(pg.kl_k3(logp, ref), [0.5 + math.log(2) - 1])
    # swapped: d = log 2; 2 − 0.693147 − 1 = 0.306853
    assert close(pg.kl_k3(ref, logp), [2 - math.log(2) - 1])
    same = torch.tensor([-1.3])
    for f in (pg.kl_k1, pg.kl_k2, pg.kl_k3):
        assert close(f(same, same), [0.0])


def test_k1_and_k3_are_unbiased_in_expectation():
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    ref = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    kl = float((pi * (pi / ref).log()).sum())  # exact KL(π‖π_ref)
    # E_{y~π}[k] summed exactly over the three outcomes
    assert abs(float((pi * pg.kl_k1(pi.log(), ref.log())).sum()) - kl) < 1e-12
    assert abs(float((pi * pg.kl_k3(pi.log(), ref.log())).sum()) - kl) < 1e-12
    assert (pg.kl_k3(pi.log(), ref.log()) >= 0).all()


def test_gae_three_steps_and_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv, ret = pg.gae(rewards, values, mask, gamma=1.0, lam=0.9)
    # row 0: δ2 = 1 + 0 − 0.7 = 0.3          A2 = 0.3
    #        δ1 = 0 + 0.7 − 0.6 = 0.1        A1 = 0.1 + 0.9·0.3 = 0.37
    #        δ0 = 0 + 0.6 − 0.5 = 0.1        A0 = 0.1 + 0.9·0.37 = 0.433
    # row 1: one token; the padded values (9) must not leak: δ0 = 2 + 0 − 0.5 = 1.5
    assert close(adv, [[0.433, 0.37, 0.3], [1.5, 0.0, 0.0]])
    assert close(ret, [[0.933, 0.97, 1.0], [2.0, 0.0, 0.0]])  # A + V, 0 on padding
    # λ = 1, γ = 1: returns are the reward-to-go whatever the values
    _, ret1 = pg.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert close(ret1[0], [1.0, 1.0, 1.0])
    # γ = 0.5, λ = 1: reward-to-go discounted: [0.25, 0.5, 1]
    _, ret_g = pg.gae(rewards, values, mask, gamma=0.5, lam=1.0)
    assert close(ret_g[0], [0.25, 0.5, 1.0])


def _surrogate(p_new: float, adv: float) -> tuple[float, float]:
    """Loss and d loss / d log π for one token with π_old = 0.5 and ε = 0.2."""
    logp = torch.tensor([[math.log(p_new)]], requires_grad=True)
    loss = pg.policy_gradient_loss(logp, torch.tensor([adv]), torch.ones(1, 1), old_token_logps=torch.tensor([[math.log(0.5)]]), epsilon=0.2)
    loss.backward()
    return float(loss.detach()), float(logp.grad)


def test_clipped_surrogate_inside_and_outside_the_clip_range():
    # ratio 0.55/0.5 = 1.1, inside [0.8, 1.2]: loss = −1.1·A, gradient −ratio·A
    assert close(_surrogate(0.55, 1.0), (-1.1, -1.1))
    # ratio 1.5 with A > 0: min(1.5, 1.2)·A = 1.2 -> loss −1.2, clipped so no gradient
    assert close(_surrogate(0.75, 1.0), (-1.2, 0.0))
    # ratio 1.5 with A < 0: min(−1.5, −1.2) = −1.5 -> loss 1.5, the pessimistic branch keeps the gradient
    assert close(_surrogate(0.75, -1.0), (1.5, 1.5))
    # ratio 0.5 with A < 0: min(−0.5, −0.8) = −0.8 -> loss 0.8, clipped
    assert close(_surrogate(0.25, -1.0), (0.8, 0.0))
    # ratio 0.5 with A > 0: min(0.5, 0.8) = 0.5 -> loss −0.5
    assert close(_surrogate(0.25, 1.0), (-0.5, -0.5))


def test_ratio_one_is_reinforce_and_trl_loss_types():
    logp = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -7.0, -7.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, 2.0])
    # ratio 1 -> per-token loss −A: row 0: −1, −1; row 1: −2
    assert close(pg.policy_gradient_loss(logp, adv, mask, loss_type="bnpo"), -4 / 3)  # (−1−1−2)/3 tokens of the batch
    assert close(pg.policy_gradient_loss(logp, adv, mask, loss_type="grpo"), -1.5)  # per sequence (−1, −2), then mean
    assert close(pg.policy_gradient_loss(logp, adv, mask, loss_type="dr_grpo", max_len=4), -0.5)  # −4/(2·4)
    assert close(pg.policy_gradient_loss(logp, adv, mask, loss_type="dapo", num_items=8), -0.5)  # −4/8: the rollout's tokens per step
    assert close(pg.policy_gradient_loss(logp, adv, mask, loss_type="dapo"), -4 / 3)  # one mini-batch: = bnpo
    pg.policy_gradient_loss(logp, adv, mask, loss_type="bnpo").backward()
    assert close(logp.grad, [[-1 / 3, -1 / 3, 0.0], [-2 / 3, 0.0, 0.0]])  # −A/3 on real tokens: REINFORCE
    with pytest.raises(ConfigError, match="did you mean 'bnpo'"):
        pg.policy_gradient_loss(logp, adv, mask, loss_type="bnp")


def test_kl_term_in_the_loss():
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    # ratio 1, A = 0 -> the surrogate is 0; k3 = 0.193147, times 0.1
    loss = pg.policy_gradient_loss(logp, torch.tensor([0.0]), torch.ones(1, 1), kl_coef=0.1, ref_token_logps=ref)
    assert close(loss, 0.1 * (0.5 + math.log(2) - 1))
    with pytest.raises(ConfigError, match="reference"):
        pg.policy_gradient_loss(logp, torch.tensor([0.0]), torch.ones(1, 1), kl_coef=0.1)


def test_value_loss_clipping():
    mask = torch.ones(1, 1)
    # V 1.0, V_old 0.5, R 2: V_clip = 0.5 + 0.2 = 0.7; max((1−2)², (0.7−2)²) = 1.69 -> 0.845
    assert close(pg.value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]), mask, clip=0.2), 0.845)
    # V 1.0, V_old 0.9: inside the clip, ½(1−2)² = 0.5
    assert close(pg.value_loss(torch.tensor([[1.0]]), torch.tensor([[0.9]]), torch.tensor([[2.0]]), mask, clip=0.2), 0.5)


def test_kl_controllers():
    fixed = pg.FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05
    ctl = pg.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, 256)  # error clip(12/6 − 1) = 0.2 -> 0.1·(1 + 0.2·256/10000) = 0.100512
    assert close(ctl.value, 0.100512)
    ctl = pg.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(6.6, 256)  # error 0.1 -> 0.1·1.00256
    assert close(ctl.value, 0.100256)
    ctl = pg.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(3.0, 256)  # error −0.5 clipped to −0.2 -> 0.1·(1 − 0.00512)
    assert close(ctl.value, 0.099488)


def test_kl_penalised_rewards():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # −0.5·kl per token, the score added on the last response token; padding stays 0
    assert close(pg.kl_penalised_rewards(scores, kl, mask, 0.5), [[-0.05, -0.1, -0.15 + 1.0], [-0.25 + 2.0, 0.0, 0.0]])
    # sequence level: 1 − 0.5·0.6 = 0.7, 2 − 0.5·0.5 = 1.75
    assert close(pg.kl_penalised_scores(scores, kl, mask, 0.5), [0.7, 1.75])
    with pytest.raises(ValueError, match="at least one response token"):
        pg.kl_penalised_rewards(scores, kl, torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.5)


def test_best_of_n_kl_bound():
    assert pg.best_of_n_kl_bound(1) == 0.0  # log 1 − 0
    assert abs(pg.best_of_n_kl_bound(2) - 0.193147) < 1e-6  # log 2 − 1/2
    assert abs(pg.best_of_n_kl_bound(4) - 0.636294) < 1e-6  # log 4 − 3/4


def test_bias_corrected_kl_weights_each_token_kl_by_the_ratio():
    # Advantage 0 leaves only the KL term: k3 with d = ref - logp = -0.2 is e^-0.2 + 0.2 - 1; the ratio is e^0.5.
    logp, old, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]]), torch.tensor([[-1.2]])
    k3 = math.exp(-0.2) + 0.2 - 1
    kw = dict(old_token_logps=old, kl_coef=1.0, ref_token_logps=ref, kl_estimator="k3")
    plain = pg.policy_gradient_loss(logp, torch.zeros(1), torch.ones(1, 1, dtype=torch.bool), **kw)
    corrected = pg.policy_gradient_loss(logp, torch.zeros(1), torch.ones(1, 1, dtype=torch.bool), use_bias_correction_kl=True, **kw)
    assert plain.item() == pytest.approx(k3, rel=1e-6)
    assert corrected.item() == pytest.approx(k3 * math.exp(0.5), rel=1e-6)
