"""The loss types beyond DESIGN 1.1 (TRL 1.16's table, f-DPO, SimPO/CPO/ORPO): hand-computed values, finiteness at
extreme margins, WPO's per-token quantity from the fused head, and the errors that name a bad option."""

from __future__ import annotations

import math

import pytest
import torch
from sgpo import ops
from sgpo.reference import LENGTH_NORMALISED, LOSS_TYPES, REFERENCE_FREE, preference_losses_reference
from test_ops import loss_kwargs, preference_inputs

# one pair: s_w = 1, s_l = -1 (log-probs -10, -12 against a reference at -11, -11)
PAIR = [torch.tensor([v], dtype=torch.float64) for v in (-10.0, -12.0, -11.0, -11.0)]


def _ls(x: float) -> float:
    return -math.log1p(math.exp(-x))


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def hand(loss_type: str, beta: float) -> float:
    sw, sl = 1.0, -1.0
    z = beta * (sw - sl)
    a, b = beta * sw, beta * sl
    return {
        "nca_pair": -_ls(a) - 0.5 * _ls(-a) - 0.5 * _ls(-b),
        "bco_pair": -_ls(a) - _ls(-b),
        "apo_zero": 1 - _sig(a) + _sig(b),
        "apo_down": _sig(a) + 1 - _sig(z),
        "discopop": -_ls(z) * (1 - _sig(z / 0.05)) + math.exp(-z) * _sig(z / 0.05),
        "exo_pair": _sig(z) * (_ls(z) - math.log(1 - 0.01)) + _sig(-z) * (_ls(-z) - math.log(0.01)),
        "sft": 10.0,
        "cpo": -_ls(beta * (-10.0 + 12.0)),
        "simpo": -_ls(beta * (-10.0 + 12.0) - 0.5),
        "orpo": -beta * _ls((-10 + 12) - (math.log(1 - math.exp(-10)) - math.log(1 - math.exp(-12)))),
    }[loss_type]


@pytest.mark.parametrize("loss_type", ["nca_pair", "bco_pair", "apo_zero", "apo_down", "discopop", "exo_pair", "sft"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_trl_losses_match_hand_computation(loss_type: str, beta: float) -> None:
    smoothing = 0.01 if loss_type == "exo_pair" else 0.0
    out = ops.preference_losses(*PAIR, loss_type=loss_type, beta=beta, label_smoothing=smoothing)
    assert out.losses.item() == pytest.approx(hand(loss_type, beta), rel=1e-12)


@pytest.mark.parametrize("loss_type", ["cpo", "simpo", "orpo"])
def test_reference_free_losses_ignore_the_reference(loss_type: str) -> None:
    out = ops.preference_losses(PAIR[0], PAIR[1], loss_type=loss_type, beta=0.2)
    assert out.losses.item() == pytest.approx(hand(loss_type, 0.2), rel=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(0.2 * -10.0)


def test_aot_sorts_the_batch() -> None:
    chosen, rejected = torch.tensor([0.0, -3.0, -1.0]), torch.tensor([-2.0, -1.0, -1.5])
    ref_chosen, ref_rejected = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, -1.0, 0.0])
    out = ops.preference_losses(chosen, rejected, ref_chosen, ref_rejected, loss_type="aot", beta=1.0)
    delta = torch.sort(chosen - rejected).values - torch.sort(ref_chosen - ref_rejected).values
    torch.testing.assert_close(out.losses, -torch.nn.functional.logsigmoid(delta))
    unpaired = ops.preference_losses(chosen, rejected, ref_chosen, ref_rejected, loss_type="aot_unpaired", beta=1.0)
    delta = torch.sort(chosen - ref_chosen).values - torch.sort(rejected - ref_rejected).values
    torch.testing.assert_close(unpaired.losses, -torch.nn.functional.logsigmoid(delta))


@pytest.mark.parametrize(
    ("divergence", "score"),
    [
        ("forward_kl", lambda s: 1 - math.exp(-s)),
        ("js_divergence", lambda s: math.log(2) + _ls(s)),
        ("alpha_divergence", lambda s: (math.exp(-0.7 * s) - 1) / -0.7),
    ],
)
def test_f_divergences_replace_the_log_ratio_by_its_score(divergence: str, score) -> None:
    out = ops.preference_losses(
        *PAIR, loss_type="sigmoid", beta=0.5, f_divergence_type=divergence, f_alpha_divergence_coef=0.3
    )
    assert out.losses.item() == pytest.approx(-_ls(0.5 * (score(1.0) - score(-1.0))), rel=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(0.5)  # the rewards stay beta * s


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_margins_stay_finite(loss_type: str, dtype: torch.dtype, sign: float) -> None:
    """|Delta| = 1e4: every loss and gradient finite (no 0 * inf, no inf - inf), in float32 and bfloat16 inputs."""
    logps, extras = preference_inputs(4, seed=2)
    chosen = torch.full((4,), -5.0 + 5e3 * sign)
    rejected = torch.full((4,), -5.0 - 5e3 * sign)
    zeros = torch.zeros(4)
    kwargs = loss_kwargs(loss_type, extras)
    if loss_type in ("sigmoid", "hinge", "exo_pair", "robust", "discopop", "sigmoid_norm"):
        # forward KL's score 1 - exp(-s) is the steepest: capped at exp(80), its differences stay finite
        kwargs["f_divergence_type"] = "forward_kl"
    if loss_type == "ipo":
        # ipo squares the score: a forward-KL score of -5e34 would square to inf, a JS score stays bounded
        kwargs["f_divergence_type"] = "js_divergence"
    inputs = [t.to(dtype).requires_grad_() for t in (chosen, rejected, zeros, zeros)]
    if loss_type in REFERENCE_FREE and loss_type != "sft":
        inputs = [(-t.detach().abs() - 1).requires_grad_() for t in inputs[:2]] + [None, None]
    out = preference_losses_reference(*inputs, **kwargs)
    assert bool(torch.isfinite(out.losses).all()), out.losses
    grads = torch.autograd.grad(out.losses.sum(), [t for t in inputs if t is not None], allow_unused=True)
    assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)


def test_fused_head_gives_wpo_log_sum_sq_probs_from_the_same_pass() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(2, 5, 8, generator=generator), torch.randn(300, 8, generator=generator)
    labels = torch.randint(0, 300, (2, 5), generator=generator)
    labels[0, :2] = -100
    token, log_sum_sq = ops.fused_linear_token_logps(hidden, weight, labels, log_sum_sq_probs=True, chunk_tokens=3)
    probs = torch.softmax(hidden.double() @ weight.double().t(), -1)
    expected = torch.where(labels != -100, probs.square().sum(-1).log(), 0.0)
    torch.testing.assert_close(log_sum_sq.double(), expected, rtol=1e-5, atol=1e-5)
    assert not log_sum_sq.requires_grad
    plain = ops.fused_linear_token_logps(hidden, weight, labels, chunk_tokens=3)
    torch.testing.assert_close(token, plain)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_type": "dpo"}, "Unsupported loss_type: 'dpo'; expected one of sigmoid"),
        ({"f_divergence_type": "chi2"}, "f_divergence_type: unknown value 'chi2'"),
        ({"loss_type": "nca_pair", "f_divergence_type": "js_divergence"}, "f_divergence_type: 'js_divergence'"),
        ({"loss_type": "discopop", "discopop_tau": 0.0}, "discopop_tau: expected a finite number > 0, got 0.0"),
        ({"loss_type": "exo_pair"}, r"label_smoothing must be > 0 for loss_type='exo_pair' .*, got 0.0"),
        ({"loss_type": "sigmoid_norm"}, "chosen_lengths: sigmoid_norm divides each log-ratio"),
        ({"loss_type": "aot", "weights": [1.0]}, "weights: aot sorts the batch's log-ratios"),
        ({"loss_type": "hinge", "chosen_lengths": [1.0], "rejected_lengths": [1.0]}, "chosen_lengths: only ipo"),
        ({"loss_type": "simpo", "simpo_gamma": math.nan}, "simpo_gamma: expected a finite number, got nan"),
    ],
)
def test_bad_options_name_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ops.preference_loss(*PAIR, **kwargs)
    with pytest.raises(ValueError, match="ref_chosen_logps: loss_type='sigmoid' needs the reference log-probs"):
        ops.preference_loss(PAIR[0], PAIR[1])


def test_every_length_normalised_loss_uses_the_lengths() -> None:
    logps, extras = preference_inputs(6, seed=4)
    for loss_type in LENGTH_NORMALISED:
        kwargs = loss_kwargs(loss_type, extras)
        with_lengths = ops.preference_losses(*logps, **kwargs).losses
        kwargs.update(chosen_lengths=2 * extras["lengths"][0], rejected_lengths=2 * extras["lengths"][1])
        assert not torch.allclose(ops.preference_losses(*logps, **kwargs).losses, with_lengths), loss_type
