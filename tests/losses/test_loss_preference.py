"""Pairwise preference losses against values worked out by hand with `math`."""

from __future__ import annotations

import math

import pytest
import torch

from alignscope.errors import ConfigError
from alignscope.losses.preference import (
    PREFERENCE_LOSSES,
    REFERENCE_FREE,
    combined_preference_loss,
    orpo_loss,
    preference_loss,
)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# Two pairs, beta = 0.5.
#   pair 1: log-ratios a = -10 - (-11) = 1,  b = -12 - (-11) = -1, margin h = 2,  βh = 1
#   pair 2: log-ratios a = -5 - (-5) = 0,   b = -4 - (-5) = 1,    margin h = -1, βh = -0.5
BETA = 0.5
CHOSEN, REJECTED = t(-10, -5), t(-12, -4)
REF_CHOSEN, REF_REJECTED = t(-11, -5), t(-11, -5)
CHOSEN_LEN, REJECTED_LEN = t(4, 5), t(6, 1)


def run(loss_type: str, **kw):
    kw.setdefault("beta", BETA)
    return preference_loss(loss_type, CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, **kw)


def check(out, expected: list[float]) -> None:
    assert out.losses.shape == (2,)
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_sigmoid_dpo_by_hand():
    out = run("sigmoid")
    check(out, [math.log(1 + math.exp(-1)), math.log(1 + math.exp(0.5))])
    # Implicit rewards β·(logp - ref_logp): pair 1 (0.5, -0.5), pair 2 (0, 0.5).
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.5, 0.5])
    assert not out.chosen_rewards.requires_grad


def test_sigmoid_label_smoothing_is_conservative_dpo():
    eps = 0.1
    check(
        run("sigmoid", label_smoothing=eps),
        [
            -(1 - eps) * logsig(1) - eps * logsig(-1),
            -(1 - eps) * logsig(-0.5) - eps * logsig(0.5),
        ],
    )


def test_robust_by_hand():
    eps = 0.1
    check(
        run("robust", label_smoothing=eps),
        [
            (-(1 - eps) * logsig(1) + eps * logsig(-1)) / (1 - 2 * eps),
            (-(1 - eps) * logsig(-0.5) + eps * logsig(0.5)) / (1 - 2 * eps),
        ],
    )


def test_robust_without_smoothing_is_dpo():
    assert torch.allclose(run("robust").losses, run("sigmoid").losses)


def test_hinge_by_hand():
    check(run("hinge"), [max(0.0, 1 - 1.0), max(0.0, 1 + 0.5)])


def test_ipo_by_hand():
    # (h - 1/(2β))² with 1/(2β) = 1.
    check(run("ipo"), [(2 - 1) ** 2, (-1 - 1) ** 2])


def test_exo_pair_by_hand():
    def exo(z: float, eps: float) -> float:
        return sig(z) * (logsig(z) - math.log(1 - eps)) + sig(-z) * (logsig(-z) - math.log(eps))

    check(run("exo_pair"), [exo(1.0, 1e-3), exo(-0.5, 1e-3)])  # ε = 0 means TRL's default 1e-3
    check(run("exo_pair", label_smoothing=0.2), [exo(1.0, 0.2), exo(-0.5, 0.2)])


def test_nca_pair_by_hand():
    # β·a, β·b: pair 1 (0.5, -0.5), pair 2 (0, 0.5).
    check(
        run("nca_pair"),
        [
            -logsig(0.5) - 0.5 * logsig(-0.5) - 0.5 * logsig(0.5),
            -logsig(0.0) - 0.5 * logsig(0.0) - 0.5 * logsig(-0.5),
        ],
    )


def test_bco_pair_by_hand_as_trl_1x():
    # TRL 1.x's DPOTrainer: -log σ(βa) - log σ(-βb), no running reward shift.
    check(run("bco_pair"), [-logsig(0.5) - logsig(0.5), -logsig(0.0) - logsig(-0.5)])


def test_sppo_hard_by_hand():
    # (a - 1/(2β))² + (b + 1/(2β))², 1/(2β) = 1.
    check(run("sppo_hard"), [(1 - 1) ** 2 + (-1 + 1) ** 2, (0 - 1) ** 2 + (1 + 1) ** 2])


def test_apo_zero_by_hand():
    check(run("apo_zero"), [(1 - sig(0.5)) + sig(-0.5), (1 - sig(0.0)) + sig(0.5)])


def test_apo_down_by_hand():
    check(run("apo_down"), [sig(0.5) + (1 - sig(1.0)), sig(0.0) + (1 - sig(-0.5))])


def test_sigmoid_norm_is_length_normalised_dpo_with_reference_by_hand():
    out = run("sigmoid_norm", chosen_lengths=CHOSEN_LEN, rejected_lengths=REJECTED_LEN)
    # Per-token log-ratios: pair 1 a/4 - b/6 = 1/4 + 1/6, pair 2 0/5 - 1/1 = -1.
    h1, h2 = 1 / 4 + 1 / 6, -1.0
    check(out, [-logsig(BETA * h1), -logsig(BETA * h2)])
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, 0.0])  # β·(logp - ref), as every reference loss
    # It differs from SimPO, which ignores the reference.
    simpo = preference_loss("simpo", CHOSEN, REJECTED, beta=BETA, simpo_gamma=0.0, chosen_lengths=CHOSEN_LEN,
                            rejected_lengths=REJECTED_LEN)
    assert out.losses.tolist() != pytest.approx(simpo.losses.tolist())


def test_simpo_by_hand():
    gamma = 0.3
    out = preference_loss(
        "simpo",
        CHOSEN,
        REJECTED,
        beta=BETA,
        simpo_gamma=gamma,
        chosen_lengths=CHOSEN_LEN,
        rejected_lengths=REJECTED_LEN,
    )
    # Mean log-probs: pair 1 chosen -10/4 = -2.5, rejected -12/6 = -2; pair 2 chosen -5/5 = -1, rejected -4/1 = -4.
    z1 = 0.5 * -2.5 - 0.5 * -2 - gamma  # -0.55
    z2 = 0.5 * -1 - 0.5 * -4 - gamma  # 1.2
    check(out, [math.log(1 + math.exp(-z1)), math.log(1 + math.exp(-z2))])
    assert out.chosen_rewards.tolist() == pytest.approx([-1.25, -0.5])
    assert out.rejected_rewards.tolist() == pytest.approx([-1.0, -2.0])


def test_sft_term_is_batch_token_mean_nll_of_chosen():
    # As TRL 1.x: one mean over all chosen tokens of the batch, (10 + 5) / (4 + 5), given to every pair.
    out = preference_loss("sft", CHOSEN, REJECTED, chosen_lengths=CHOSEN_LEN, beta=BETA)
    check(out, [15 / 9, 15 / 9])
    assert out.chosen_rewards.tolist() == pytest.approx([-5.0, -2.5])  # β·logp, no reference


def test_combined_is_weighted_sum_with_rewards_from_reference_term():
    kw = dict(beta=BETA, chosen_lengths=CHOSEN_LEN, rejected_lengths=REJECTED_LEN)
    out = combined_preference_loss(
        [("sft", 0.5), ("sigmoid", 1.0)], CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, **kw
    )
    expected = [
        0.5 * 15 / 9 + math.log(1 + math.exp(-1)),
        0.5 * 15 / 9 + math.log(1 + math.exp(0.5)),
    ]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, 0.0])  # from "sigmoid", not "sft"
    only_free = combined_preference_loss([("sft", 2.0)], CHOSEN, REJECTED, **kw)
    assert only_free.losses.tolist() == pytest.approx([2 * 15 / 9, 2 * 15 / 9])
    assert only_free.chosen_rewards.tolist() == pytest.approx([-5.0, -2.5])


def test_orpo_by_hand():
    chosen_mean, rejected_mean, nll = t(-0.5, -2.0), t(-1.0, -0.25), t(0.5, 2.0)
    out = orpo_loss(chosen_mean, rejected_mean, nll, beta=0.1)

    def log_odds(m: float) -> float:
        return m - math.log(1 - math.exp(m))

    lo1 = log_odds(-0.5) - log_odds(-1.0)
    lo2 = log_odds(-2.0) - log_odds(-0.25)
    assert out.log_odds.tolist() == pytest.approx([lo1, lo2], rel=1e-12)
    assert out.losses.tolist() == pytest.approx([0.5 - 0.1 * logsig(lo1), 2.0 - 0.1 * logsig(lo2)], rel=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([-0.05, -0.2])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.1, -0.025])


def test_orpo_finite_at_probability_one_and_tiny_probability():
    chosen = torch.tensor([0.0, -1e-12, -1e4], requires_grad=True)
    rejected = torch.tensor([-1e4, 0.0, -1e-30])
    out = orpo_loss(chosen, rejected, -chosen, beta=0.1)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(chosen.grad).all()


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen = CHOSEN.clone().requires_grad_()
    rejected = REJECTED.clone().requires_grad_()
    loss = preference_loss("sigmoid", chosen, rejected, REF_CHOSEN, REF_REJECTED, beta=BETA).losses.sum()
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    # And the loss indeed falls when the chosen log-prob rises.
    assert (run("sigmoid").losses > preference_loss("sigmoid", CHOSEN + 0.1, REJECTED, REF_CHOSEN, REF_REJECTED, beta=BETA).losses).all()


@pytest.mark.parametrize("loss_type", ["robust", "ipo", "sigmoid_norm", "simpo", "nca_pair", "bco_pair", "apo_zero", "exo_pair"])
def test_gradient_direction_other_losses(loss_type):
    # Margins here sit below every loss's optimum, so descent must push chosen up and rejected down.
    chosen = t(-8.0, -9.0).requires_grad_()
    rejected = t(-8.0, -7.0).requires_grad_()
    out = preference_loss(
        loss_type,
        chosen,
        rejected,
        t(-8.0, -8.0),
        t(-8.0, -8.0),
        beta=0.1,
        label_smoothing=0.1,
        chosen_lengths=t(2, 2),
        rejected_lengths=t(2, 2),
    )
    out.losses.sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


def test_unknown_loss_type_suggests_close_match():
    with pytest.raises(ConfigError, match="did you mean 'sigmoid'"):
        preference_loss("sigmod", CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED)
    with pytest.raises(ConfigError, match="did you mean 'hinge'"):
        combined_preference_loss([("sigmoid", 1.0), ("hnge", 1.0)], CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED)


@pytest.mark.parametrize("loss_type", sorted(set(PREFERENCE_LOSSES) - REFERENCE_FREE))
def test_missing_reference_is_a_config_error(loss_type):
    with pytest.raises(ConfigError, match="reference"):
        preference_loss(loss_type, CHOSEN, REJECTED, chosen_lengths=CHOSEN_LEN, rejected_lengths=REJECTED_LEN)


def test_missing_lengths_is_a_config_error():
    with pytest.raises(ConfigError, match="chosen_lengths"):
        preference_loss("sft", CHOSEN, REJECTED)
    with pytest.raises(ConfigError, match="rejected_lengths"):
        preference_loss("simpo", CHOSEN, REJECTED, chosen_lengths=CHOSEN_LEN)
    with pytest.raises(ConfigError, match="rejected_lengths"):
        run("sigmoid_norm", chosen_lengths=CHOSEN_LEN)


@pytest.mark.parametrize(
    "kw", [dict(beta=0.0), dict(beta=-1.0), dict(label_smoothing=0.5), dict(label_smoothing=-0.1)]
)
def test_bad_parameters_are_config_errors(kw):
    with pytest.raises(ConfigError):
        run("robust", **kw)


def test_empty_or_non_finite_mixture_is_a_config_error():
    with pytest.raises(ConfigError):
        combined_preference_loss([], CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED)
    with pytest.raises(ConfigError):
        combined_preference_loss([("sigmoid", math.nan)], CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED)
