"""RL options against values worked out by hand: scale_rewards, loss_type aggregation, GSPO's
sequence-level ratio, clip-higher, token entropy and the entropy bonus, the KL estimator switch,
DAPO's overlong penalty, and what a masked (truncated) completion contributes.

Complements test_rl_policy_gradient.py (group-scaled GRPO, the kl_k* formulas, the symmetric clip
and loss types with a constant per-row loss are covered there)."""

from __future__ import annotations

import math

import pytest
import torch

from alignscope.errors import ConfigError
from alignscope.losses import policy_gradient as pg
from alignscope.rewards.transforms import overlong_penalty
from alignscope.training.rl import RLConfig, compute_advantages

LOG = math.log


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


# --- grpo_advantages(scale=...)

R = torch.tensor([[0.0, 2.0], [0.0, 6.0]])  # centred: [[-1, 1], [-3, 3]]


def test_grpo_scale_group_batch_none():
    # group: std [0, 2] = sqrt(2) (unbiased: (1 + 1)/1 = 2), std [0, 6] = sqrt(18) = 3·sqrt(2):
    # ±1/(1.414214 + 0.0001) = ±0.707057 and ±3/(4.242641 + 0.0001) = ±0.707090 (eps moves them off 1/sqrt 2 = 0.707107)
    g = 1 / (math.sqrt(2) + 1e-4)
    g2 = 3 / (3 * math.sqrt(2) + 1e-4)
    assert close(pg.grpo_advantages(R, scale="group"), [[-g, g], [-g2, g2]])
    assert abs(g - 0.707057) < 1e-6 and abs(g2 - 0.707090) < 1e-6
    # batch: one std over [0, 2, 0, 6]: mean 2, squared deviations 4 + 0 + 4 + 16 = 24, /3 = 8,
    # std 2·sqrt(2) = 2.828427 -> [[-1, 1], [-3, 3]] / 2.828527 = ±0.353541, ±1.060623
    b = 2 * math.sqrt(2) + 1e-4
    assert close(pg.grpo_advantages(R, scale="batch"), [[-1 / b, 1 / b], [-3 / b, 3 / b]])
    assert close(pg.grpo_advantages(R, scale="batch"), [[-0.353541, 0.353541], [-1.060623, 1.060623]])
    # none: r − group mean only (= Dr. GRPO)
    assert close(pg.grpo_advantages(R, scale="none"), [[-1.0, 1.0], [-3.0, 3.0]])


def test_grpo_batch_scale_keeps_flat_groups_at_zero():
    r = torch.tensor([[1.0, 1.0], [0.0, 4.0]])
    # centred [[0, 0], [-2, 2]]; batch std over [1, 1, 0, 4]: mean 1.5, squares 0.25 + 0.25 + 2.25 + 6.25 = 9,
    # /3 = 3, std sqrt(3) = 1.732051 -> ±2/1.732151 = ±1.154634; the flat group stays 0
    assert close(pg.grpo_advantages(r, scale="batch"), [[0.0, 0.0], [-1.154634, 1.154634]])
    # every reward equal: 0/(0 + eps) = 0, not NaN
    assert close(pg.grpo_advantages(torch.ones(2, 3), scale="batch"), torch.zeros(2, 3))


def test_grpo_unknown_scale():
    with pytest.raises(ConfigError, match="unknown scale_rewards 'grup'.*did you mean 'group'"):
        pg.grpo_advantages(R, scale="grup")


def test_compute_advantages_passes_scale_rewards_and_kl_in_reward():
    mask = torch.ones(4, 2, dtype=torch.bool)
    zero_kl = torch.zeros(4, 2)
    b = 2 * math.sqrt(2) + 1e-4  # the batch std above
    cfg = RLConfig(algorithm="grpo", prompts="x", reward="x", samples_per_prompt=2, scale_rewards="batch")
    adv, ret = compute_advantages(cfg, R, mask, zero_kl, 0.0, None)
    assert ret is None and adv.shape == (4,)
    assert close(adv, [-1 / b, 1 / b, -3 / b, 3 / b])
    # scale_rewards null = group
    cfg = RLConfig(algorithm="grpo", prompts="x", reward="x", samples_per_prompt=2)
    g, g2 = 1 / (math.sqrt(2) + 1e-4), 3 / (3 * math.sqrt(2) + 1e-4)
    assert close(compute_advantages(cfg, R, mask, zero_kl, 0.0, None)[0], [-g, g, -g2, g2])
    # kl_mode reward: score − coef·Σ_t kl. kl sums [1, 0, 1, 0] with coef 1: [0 − 1, 2, 0 − 1, 6] = [[-1, 2], [-1, 6]]
    # -> centred (scale none) [[-1.5, 1.5], [-3.5, 3.5]]
    kl = torch.tensor([[0.5, 0.5], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    cfg = RLConfig(algorithm="grpo", prompts="x", reward="x", samples_per_prompt=2, scale_rewards="none", kl_mode="reward")
    assert close(compute_advantages(cfg, R, mask, kl, 1.0, None)[0], [-1.5, 1.5, -3.5, 3.5])
    # kl_mode loss: the KL is not charged in the reward
    cfg = RLConfig(algorithm="grpo", prompts="x", reward="x", samples_per_prompt=2, scale_rewards="none", kl_mode="loss")
    assert close(compute_advantages(cfg, R, mask, kl, 1.0, None)[0], [-1.0, 1.0, -3.0, 3.0])


# --- aggregate_tokens(loss_type)

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])  # the 100s sit on padding
MASK = torch.tensor([[True, True, True], [True, False, False]])


@pytest.mark.parametrize("loss_type, kwargs, expected", [
    ("grpo", {}, 3.0),  # per sequence (1+2+3)/3 = 2 and 4/1 = 4, then (2 + 4)/2
    ("bnpo", {}, 2.5),  # (1 + 2 + 3 + 4)/4 tokens
    ("dr_grpo", {}, 10 / 6),  # 10/(B·T) = 10/(2·3) with max_len defaulting to T
    ("dr_grpo", {"max_len": 5}, 1.0),  # 10/(2·5)
    ("dapo", {}, 2.5),  # num_items None: this batch's 4 tokens (= bnpo)
    ("dapo", {"num_items": 20}, 0.5),  # 10/20: the whole rollout's tokens
    ("dapo", {"num_items": 0.5}, 10.0),  # the normaliser is at least 1
])
def test_aggregate_tokens_by_loss_type(loss_type, kwargs, expected):
    assert close(pg.aggregate_tokens(PER_TOKEN, MASK, loss_type, **kwargs), expected)


def test_aggregate_tokens_gradients_weigh_tokens_differently():
    x = PER_TOKEN.clone().requires_grad_(True)
    pg.aggregate_tokens(x, MASK, "grpo").backward()
    # grpo: each token of row 0 weighs 1/(3·2), the single token of row 1 weighs 1/(1·2)
    assert close(x.grad, [[1 / 6, 1 / 6, 1 / 6], [0.5, 0.0, 0.0]])
    x.grad = None
    pg.aggregate_tokens(x, MASK, "bnpo").backward()
    assert close(x.grad, [[0.25, 0.25, 0.25], [0.25, 0.0, 0.0]])  # 1/4 per real token
    x.grad = None
    pg.aggregate_tokens(x, MASK, "dr_grpo", max_len=4).backward()
    assert close(x.grad, [[0.125, 0.125, 0.125], [0.125, 0.0, 0.0]])  # 1/(2·4)


def test_unknown_loss_type_in_aggregate():
    with pytest.raises(ConfigError, match="unknown loss_type 'dapoo'"):
        pg.aggregate_tokens(PER_TOKEN, MASK, "dapoo")


# --- a fully masked row: what mask_truncated_completions turns a truncated completion into.
# rl.py builds that mask inline (mask & ~truncated), there is no helper; these pin the aggregation it relies on.


@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", 0.75),  # (1 + 2)/2 = 1.5 for row 0, 0/max(0, 1) = 0 for the masked row; the mean still counts it: 1.5/2
    ("bnpo", 1.5),  # 3/2 real tokens
    ("dr_grpo", 0.5),  # 3/(2·3)
    ("dapo", 1.5),  # 3/2
])
def test_masked_out_row_adds_nothing(loss_type, expected):
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    loss = pg.aggregate_tokens(x, mask, loss_type)
    assert close(loss, expected)
    loss.backward()
    assert close(x.grad[1], [0.0, 0.0, 0.0])


def test_everything_masked_gives_zero_not_nan():
    x = torch.ones(2, 3)
    none = torch.zeros(2, 3, dtype=torch.bool)
    for loss_type in pg.LOSS_TYPES:
        assert close(pg.aggregate_tokens(x, none, loss_type), 0.0)
    # sequence-level ratio of an all-masked row: mean log-ratio 0/1 -> ratio 1
    assert close(pg.importance_ratio(torch.zeros(1, 2), torch.ones(1, 2), none[:1, :2], "sequence"), [[1.0]])


def test_truncated_completion_masked_out_of_the_policy_loss():
    # row 1 is a truncated completion masked out of the loss: only row 0 (A = 1, ratio 1) counts
    logp = torch.tensor([[-1.0, -2.0], [-1.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [False, False]])
    loss = pg.policy_gradient_loss(logp, torch.tensor([1.0, 5.0]), mask, loss_type="bnpo")
    assert close(loss, -1.0)  # (−1 − 1)/2
    loss.backward()
    assert close(logp.grad, [[-0.5, -0.5], [0.0, 0.0]])  # −A/2 on row 0; nothing on the masked row


# --- importance_ratio: token vs sequence (GSPO)

NEW = torch.tensor([[-1.0, -2.0, -3.0], [-2.0, -2.0, -2.0]])
OLD = torch.tensor([[-1.5, -1.0, -4.0], [-2.3, -2.3, -2.3]])
RMASK = torch.tensor([[True, True, False], [True, True, True]])


def test_importance_ratio_token_level():
    # log-ratios [[0.5, −1, 1], [0.3, 0.3, 0.3]]: exp of each, padding included (the loss masks it)
    # = [[1.648721, 0.367879, 2.718282], [1.349859] * 3]
    assert close(pg.importance_ratio(NEW, OLD, RMASK, "token"), [[1.648721, 0.367879, 2.718282], [1.349859] * 3])


def test_importance_ratio_sequence_level():
    # row 0: mean of the response's log-ratios (0.5 − 1)/2 = −0.25 (the padded 1 is ignored): e^−0.25 = 0.778801
    # row 1: mean 0.3: e^0.3 = 1.349859; shape [B, 1]
    out = pg.importance_ratio(NEW, OLD, RMASK, "sequence")
    assert out.shape == (2, 1)
    assert close(out, [[0.778801], [1.349859]])
    with pytest.raises(ConfigError, match="unknown importance_sampling_level 'seq'"):
        pg.importance_ratio(NEW, OLD, RMASK, "seq")


def test_sequence_level_clip_in_the_loss():
    new, old, mask = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]]), torch.ones(1, 2, dtype=torch.bool)
    # token level, A = −1: ratios e^0.5 = 1.648721 and e^−1 = 0.367879
    #   token 0: min(−1.648721, −1.2) = −1.648721 -> 1.648721; token 1: min(−0.367879, −0.8) = −0.8 -> 0.8
    #   mean (1.648721 + 0.8)/2 = 1.224361
    tok = pg.policy_gradient_loss(new, torch.tensor([-1.0]), mask, old_token_logps=old, importance_sampling_level="token")
    assert close(tok, (math.exp(0.5) + 0.8) / 2)
    # sequence level, A = −1: one ratio e^−0.25 = 0.778801 < 0.8: min(−0.778801, −0.8) = −0.8 -> 0.8 on both tokens
    seq = pg.policy_gradient_loss(new, torch.tensor([-1.0]), mask, old_token_logps=old, importance_sampling_level="sequence")
    assert close(seq, 0.8)
    # sequence level, A = +1: min(0.778801, 0.8) = 0.778801 -> loss −0.778801; the gradient is −ratio/2 on each token
    # (d/dlogp_t of exp(mean_t log-ratio) = ratio/2): −0.389400 on both, unlike token level's per-token ratios
    x = new.clone().requires_grad_(True)
    loss = pg.policy_gradient_loss(x, torch.tensor([1.0]), mask, old_token_logps=old, importance_sampling_level="sequence")
    assert close(loss, -math.exp(-0.25))
    loss.backward()
    assert close(x.grad, [[-math.exp(-0.25) / 2] * 2])


# --- clip-higher (epsilon_high)


def _one_token(p_new: float, p_old: float, adv: float, **kw) -> tuple[float, float]:
    logp = torch.tensor([[LOG(p_new)]], requires_grad=True)
    loss = pg.policy_gradient_loss(logp, torch.tensor([adv]), torch.ones(1, 1), old_token_logps=torch.tensor([[LOG(p_old)]]), **kw)
    loss.backward()
    return float(loss.detach()), float(logp.grad)


def test_clip_higher_leaves_a_ratio_between_the_two_bounds_unclipped():
    # ratio 0.5/0.4 = 1.25: above 1 + ε = 1.2, below 1 + ε_high = 1.28
    # ε_high 0.28, A = +1: min(1.25, clip(1.25, 0.8, 1.28) = 1.25) -> loss −1.25, gradient −ratio·A = −1.25
    assert close(_one_token(0.5, 0.4, 1.0, epsilon=0.2, epsilon_high=0.28), (-1.25, -1.25))
    # without ε_high the same ratio is clipped at 1.2: loss −1.2, no gradient
    assert close(_one_token(0.5, 0.4, 1.0, epsilon=0.2), (-1.2, 0.0))
    assert close(_one_token(0.5, 0.4, 1.0, epsilon=0.2, epsilon_high=None), (-1.2, 0.0))


def test_clip_higher_still_clips_above_its_bound_and_leaves_the_low_side():
    # ratio 0.6/0.4 = 1.5 > 1.28, A = +1: clipped at 1.28 -> loss −1.28, no gradient
    assert close(_one_token(0.6, 0.4, 1.0, epsilon=0.2, epsilon_high=0.28), (-1.28, 0.0))
    # A = −1 at ratio 1.5: min(−1.5, −1.28) = −1.5 -> loss 1.5, the pessimistic branch keeps the gradient −A·ratio = 1.5
    assert close(_one_token(0.6, 0.4, -1.0, epsilon=0.2, epsilon_high=0.28), (1.5, 1.5))
    # low side is still 1 − ε: ratio 0.3/0.4 = 0.75, A = −1: min(−0.75, −0.8) = −0.8 -> loss 0.8, clipped
    assert close(_one_token(0.3, 0.4, -1.0, epsilon=0.2, epsilon_high=0.28), (0.8, 0.0))
    # ε_high below ε tightens the top: ratio 1.25 with ε_high 0.1 is clipped at 1.1
    assert close(_one_token(0.5, 0.4, 1.0, epsilon=0.2, epsilon_high=0.1), (-1.1, 0.0))


# --- token_entropy and the entropy bonus


def test_token_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, LOG(3), -1e4, -1e4]])
    # uniform over 4: log 4 = 1.386294
    # p = [1/4, 3/4] (the −1e4 entries are ~0): −(¼ log ¼ + ¾ log ¾) = 0.346574 + 0.215762 = 0.562335
    assert close(pg.token_entropy(logits), [LOG(4), 0.25 * LOG(4) + 0.75 * LOG(4 / 3)])
    assert close(pg.token_entropy(logits), [1.386294, 0.562335])
    # shift-invariant, shape [..., V] -> [...], low-precision logits computed in float32
    assert close(pg.token_entropy(logits + 50.0), [1.386294, 0.562335], tol=1e-5)
    assert pg.token_entropy(torch.zeros(2, 3, 5)).shape == (2, 3)
    assert pg.token_entropy(logits.to(torch.bfloat16)).dtype == torch.float32


def test_token_entropy_gradient():
    # two classes, logits [0, z]: H = −Σ p log p; dH/dz = −z·p0·p1. With z = log 3: p0·p1 = 3/16,
    # dH/dz = −(3/16)·log 3 = −0.205990; dH/d(logit 0) = +0.205990 (only the difference matters)
    z = torch.tensor([0.0, LOG(3)], requires_grad=True)
    pg.token_entropy(z).backward()
    assert close(z.grad, [3 / 16 * LOG(3), -3 / 16 * LOG(3)])


def test_entropy_bonus_is_a_token_mean_whatever_the_loss_type():
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    # A = 0 -> surrogate 0; bonus −0.1·(1 + 2 + 3 + 4)/4 = −0.25 (a grpo-style mean would give −0.1·(2 + 4)/2 = −0.3)
    for loss_type in ("grpo", "bnpo", "dr_grpo"):
        loss = pg.policy_gradient_loss(logp, torch.zeros(2), mask, loss_type=loss_type, entropy=ent, entropy_coef=0.1)
        assert close(loss, -0.25), loss_type
    with pytest.raises(ConfigError, match="no token entropies"):
        pg.policy_gradient_loss(logp, torch.zeros(2), mask, entropy_coef=0.1)


# --- kl_estimate


def test_kl_estimate_switch_by_hand():
    logp, ref = torch.tensor([LOG(0.2)]), torch.tensor([LOG(0.6)])
    # k1 = log 0.2 − log 0.6 = −log 3 = −1.098612 (negative: k1 is unbiased but not non-negative)
    assert close(pg.kl_estimate(logp, ref, "k1"), [-1.098612])
    # k2 = ½ (log 3)² = ½·1.206949 = 0.603474
    assert close(pg.kl_estimate(logp, ref, "k2"), [0.603474])
    # k3: d = ref − logp = log 3: e^d − d − 1 = 3 − 1.098612 − 1 = 0.901388 (also the default)
    assert close(pg.kl_estimate(logp, ref, "k3"), [0.901388])
    assert close(pg.kl_estimate(logp, ref), [0.901388])
    with pytest.raises(ConfigError, match="unknown KL estimator 'k4'"):
        pg.kl_estimate(logp, ref, "k4")


@pytest.mark.parametrize("estimator, kl", [("k1", LOG(2)), ("k2", 0.5 * LOG(2) ** 2), ("k3", 0.5 + LOG(2) - 1)])
def test_kl_estimator_choice_in_the_loss(estimator, kl):
    # A = 0, ratio 1: the loss is kl_coef × the chosen estimator; log 0.5 vs log 0.25:
    # k1 = log 2 = 0.693147, k2 = 0.240227, k3 = 0.193147
    loss = pg.policy_gradient_loss(torch.tensor([[LOG(0.5)]]), torch.tensor([0.0]), torch.ones(1, 1), kl_coef=0.1,
                                   ref_token_logps=torch.tensor([[LOG(0.25)]]), kl_estimator=estimator)
    assert close(loss, 0.1 * kl)


# --- DAPO's overlong penalty


def test_overlong_penalty_ramp():
    # max_len 10, buffer 4: free up to 6 tokens, then (6 − n)/4 down to −1 at 10, −1 beyond; × penalty 0.5
    # n = 0, 6 -> 0; 7 -> −0.25·0.5; 8 -> −0.5·0.5; 10 -> −1·0.5; 12 -> −1·0.5
    out = overlong_penalty([0, 6, 7, 8, 10, 12], max_len=10, buffer=4, penalty=0.5)
    assert close(out, [0.0, 0.0, -0.125, -0.25, -0.5, -0.5])
    assert out.dtype == torch.float32
    # default penalty 1: 9 tokens -> (6 − 9)/4 = −0.75
    assert close(overlong_penalty(torch.tensor([9]), 10, 4), [-0.75])


def test_overlong_penalty_edge_buffers():
    # buffer 0: no ramp, a response at the cap is fine, one beyond it gets −penalty
    assert close(overlong_penalty([10, 11], max_len=10, buffer=0, penalty=2.0), [0.0, -2.0])
    # buffer = max_len: the ramp starts at 0 tokens: 5 -> −0.5, 10 -> −1
    assert close(overlong_penalty([0, 5, 10], max_len=10, buffer=10), [0.0, -0.5, -1.0])
    for bad in (-1, 11):
        with pytest.raises(ConfigError, match="overlong_buffer must be in"):
            overlong_penalty([1], max_len=10, buffer=bad)


def test_overlong_buffer_longer_than_max_new_tokens_is_a_config_error():
    with pytest.raises(ConfigError, match="overlong_buffer \\(9\\) is longer than max_new_tokens \\(8\\)"):
        RLConfig(algorithm="grpo", prompts="x", reward="x", samples_per_prompt=2, max_new_tokens=8, overlong_buffer=9)


def test_micro_batch_weights_by_hand():
    # Mini-batch of 3 sequences with 2, 1, 3 tokens; the micro-batch holds the first two (3 of 6 tokens).
    batch = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    part = batch[:2]
    assert pg.micro_batch_weight("bnpo", part, batch) == pytest.approx(3 / 6)
    assert pg.micro_batch_weight("grpo", part, batch) == pytest.approx(2 / 3)
    assert pg.micro_batch_weight("dr_grpo", part, batch) == pytest.approx(2 / 3)
    assert pg.micro_batch_weight("dapo", part, batch) == 1.0
    with pytest.raises(ConfigError):
        pg.micro_batch_weight("token_mean", part, batch)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_weighted_micro_batch_losses_sum_to_the_mini_batch_loss(loss_type):
    torch.manual_seed(0)
    logp = torch.randn(5, 4, requires_grad=True)
    old, ref, adv = logp.detach() + 0.3 * torch.randn(5, 4), logp.detach() + 0.2 * torch.randn(5, 4), torch.randn(5)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    kw = dict(epsilon=0.2, epsilon_high=0.28, loss_type=loss_type, max_len=4, num_items=float(mask.sum()), kl_coef=0.1)
    whole = pg.policy_gradient_loss(logp, adv, mask, old_token_logps=old, ref_token_logps=ref, **kw)
    parts = sum(pg.micro_batch_weight(loss_type, mask[s], mask)
                * pg.policy_gradient_loss(logp[s], adv[s], mask[s], old_token_logps=old[s], ref_token_logps=ref[s], **kw)
                for s in (slice(0, 2), slice(2, 4), slice(4, 5)))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)
