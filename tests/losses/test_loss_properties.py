"""Property-based checks: finiteness at extreme log-probs, monotonicity in the margin, PL shift invariance."""

from __future__ import annotations

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from alignscope.losses.preference import PREFERENCE_LOSSES, orpo_loss, preference_loss
from alignscope.losses.ranking import plackett_luce_loss, pro_loss
from alignscope.losses.reward import bt_loss
from alignscope.losses.sft import sft_loss
from alignscope.losses.unpaired import bco_loss, kto_kl_estimate, kto_loss

FAST = settings(max_examples=60, deadline=None)

logp = st.floats(min_value=-1e4, max_value=0.0, allow_nan=False)
logps4 = st.lists(logp, min_size=4, max_size=4)
lengths4 = st.lists(st.integers(1, 4096), min_size=4, max_size=4)
betas = st.floats(min_value=1e-3, max_value=10.0)


def f32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


@FAST
@given(
    loss_type=st.sampled_from(PREFERENCE_LOSSES),
    c=logps4,
    r=logps4,
    rc=logps4,
    rr=logps4,
    lc=lengths4,
    lr=lengths4,
    beta=betas,
    eps=st.floats(0.0, 0.49),
)
def test_preference_losses_finite_for_extreme_logps(loss_type, c, r, rc, rr, lc, lr, beta, eps):
    chosen, rejected = f32(c).requires_grad_(), f32(r).requires_grad_()
    out = preference_loss(
        loss_type,
        chosen,
        rejected,
        f32(rc),
        f32(rr),
        beta=beta,
        label_smoothing=eps,
        simpo_gamma=1.0,
        chosen_lengths=f32(lc),
        rejected_lengths=f32(lr),
    )
    out.losses.sum().backward()
    grads = [g for g in (chosen.grad, rejected.grad) if g is not None]  # "sft" ignores the rejected response
    for x in (out.losses, out.chosen_rewards, out.rejected_rewards, *grads):
        assert torch.isfinite(x).all()


@FAST
@given(c=logps4, r=logps4, beta=betas)
@example(c=[0.0, 0.0, 0.0, -3.6256532294069424e-10], r=[0.0, 0.0, 0.0, 0.0], beta=1.0)  # once a NaN gradient (torch.where)
def test_orpo_finite_for_extreme_mean_logps(c, r, beta):
    chosen = f32(c).requires_grad_()
    out = orpo_loss(chosen, f32(r), -chosen, beta=beta)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(chosen.grad).all()
    assert torch.isfinite(out.log_odds).all()


@FAST
@given(p=logps4, q=logps4, labels=st.lists(st.booleans(), min_size=4, max_size=4), beta=betas)
def test_unpaired_losses_finite(p, q, labels, beta):
    policy = f32(p).requires_grad_()
    lab = torch.tensor(labels)
    kl = kto_kl_estimate(f32(p), f32(q))
    kto = kto_loss(policy, f32(q), lab, kl, beta=beta)
    bco = bco_loss(policy, f32(q), lab, 0.5, beta)
    (kto.losses.sum() + bco.losses.sum()).backward()
    assert torch.isfinite(kto.losses).all() and torch.isfinite(bco.losses).all()
    assert torch.isfinite(policy.grad).all()


@FAST
@given(
    rows=st.lists(st.lists(logp, min_size=5, max_size=5), min_size=2, max_size=2),
    n_valid=st.lists(st.integers(1, 5), min_size=2, max_size=2),
    lengths=st.lists(st.integers(1, 4096), min_size=5, max_size=5),
)
def test_ranking_and_reward_losses_finite(rows, n_valid, lengths):
    logps = f32(rows).requires_grad_()
    mask = torch.arange(5).unsqueeze(0) < torch.tensor(n_valid).unsqueeze(1)
    pl = plackett_luce_loss(logps, mask)
    pro = pro_loss(logps, f32([lengths, lengths]), mask, sft_weight=1.0).losses
    bt = bt_loss(logps[:, 0], logps[:, 1], center_coef=0.01)
    sft = sft_loss(logps[:, 0], torch.tensor(lengths[:2]))
    (pl.sum() + pro.sum() + bt.sum() + sft).backward()
    assert all(torch.isfinite(x).all() for x in (pl, pro, bt, sft, logps.grad))


def _margin_loss(loss_type: str, h: float, beta: float, eps: float) -> float:
    """Loss at log-ratio margin h (chosen log-ratio h, rejected 0), in float64."""
    chosen, zero = torch.tensor([h], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    return preference_loss(loss_type, chosen, zero, zero, zero, beta=beta, label_smoothing=eps).losses.item()


@FAST
@given(
    loss_type=st.sampled_from(["sigmoid", "hinge", "robust", "ipo"]),
    h=st.floats(-1e3, 1e3),
    step=st.floats(0.0, 1e3),
    beta=st.floats(0.01, 5.0),
    eps=st.floats(0.0, 0.49),
)
def test_dpo_family_non_increasing_in_margin(loss_type, h, step, beta, eps):
    if loss_type == "sigmoid":
        eps = 0.0  # label-smoothed DPO has its minimum at a finite margin, so it is not monotone
    h1, h2 = h, h + step
    if loss_type == "ipo":
        # IPO is a parabola with its minimum at margin 1/(2β): monotone only below it.
        top = 1 / (2 * beta)
        h1, h2 = min(h1, top), min(h2, top)
    l1, l2 = _margin_loss(loss_type, h1, beta, eps), _margin_loss(loss_type, h2, beta, eps)
    assert l2 <= l1 + 1e-9 * (1 + abs(l1))


@FAST
@given(
    scores=st.lists(st.lists(st.floats(-50, 50), min_size=4, max_size=4), min_size=3, max_size=3),
    shift=st.floats(-1e3, 1e3),
    n_valid=st.lists(st.integers(1, 4), min_size=3, max_size=3),
)
def test_plackett_luce_invariant_to_constant_shift(scores, shift, n_valid):
    s = torch.tensor(scores, dtype=torch.float64)
    mask = torch.arange(4).unsqueeze(0) < torch.tensor(n_valid).unsqueeze(1)
    base, shifted = plackett_luce_loss(s, mask), plackett_luce_loss(s + shift, mask)
    assert torch.allclose(base, shifted, rtol=1e-9, atol=1e-8)
    assert (base >= 0).all()
