"""The reference losses (the spec): hand-computed values, gradcheck, identities between losses, and errors."""

from __future__ import annotations

import math

import pytest
import torch
from sgpo.ops import LOSS_TYPES, preference_loss, preference_losses, sequence_logps
from sgpo.reference import BATCH_COUPLED, sequence_logps_reference

# two pairs, chosen to make the hand computations easy to follow
CHOSEN = [-10.0, -3.0]
REJECTED = [-12.0, -2.0]
REF_CHOSEN = [-11.0, -3.5]
REF_REJECTED = [-11.0, -2.5]
# s_w = [1, 0.5], s_l = [-1, 0.5], Delta = [2, 0]
S_W, S_L = [1.0, 0.5], [-1.0, 0.5]


def _pairs(dtype=torch.float32, requires_grad=False):
    tensors = [torch.tensor(v, dtype=dtype) for v in (CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED)]
    if requires_grad:
        tensors[0].requires_grad_()
        tensors[1].requires_grad_()
    return tensors


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _hand(loss_type: str, beta: float, e: float = 0.0, p_w=None, p_l=None) -> list[float]:
    out = []
    for i, (sw, sl) in enumerate(zip(S_W, S_L)):
        z = beta * (sw - sl)
        if loss_type == "sigmoid":
            out.append(-(1 - e) * _log_sigmoid(z) - e * _log_sigmoid(-z))
        elif loss_type == "hinge":
            out.append(max(0.0, 1 - z))
        elif loss_type == "ipo":
            out.append((sw - sl - 1 / (2 * beta)) ** 2)
        elif loss_type == "robust":
            out.append((-(1 - e) * _log_sigmoid(z) + e * _log_sigmoid(-z)) / (1 - 2 * e))
        elif loss_type == "sppo_hard":
            out.append((sw - 1 / (2 * beta)) ** 2 + (sl + 1 / (2 * beta)) ** 2)
        elif loss_type == "sppo":
            out.append(((sw - (p_w[i] - 0.5) / beta) ** 2 + (sl - (p_l[i] - 0.5) / beta) ** 2) / 2)
    return out


@pytest.mark.parametrize(
    "loss_type,kwargs",
    [
        ("sigmoid", {}),
        ("sigmoid", {"label_smoothing": 0.2}),
        ("hinge", {}),
        ("ipo", {}),
        ("robust", {"label_smoothing": 0.1}),
        ("sppo_hard", {}),
        ("sppo", {"chosen_win_prob": [0.9, 0.6], "rejected_win_prob": [0.2, 0.4]}),
    ],
)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_losses_match_hand_computation(loss_type, kwargs, beta):
    expected = _hand(
        loss_type,
        beta,
        e=kwargs.get("label_smoothing", 0.0),
        p_w=kwargs.get("chosen_win_prob"),
        p_l=kwargs.get("rejected_win_prob"),
    )
    out = preference_losses(*_pairs(torch.float64), loss_type=loss_type, beta=beta, **kwargs)
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([beta * s for s in S_W])
    assert out.rejected_rewards.tolist() == pytest.approx([beta * s for s in S_L])
    mean = preference_loss(*_pairs(torch.float64), loss_type=loss_type, beta=beta, **kwargs)
    assert float(mean) == pytest.approx(sum(expected) / 2, rel=1e-12)


def test_ipo_length_normalised_divides_each_log_ratio():
    beta, len_w, len_l = 0.1, [4.0, 5.0], [2.0, 1.0]
    expected = [(sw / lw - sl / ll - 1 / (2 * beta)) ** 2 for sw, sl, lw, ll in zip(S_W, S_L, len_w, len_l)]
    out = preference_losses(
        *_pairs(torch.float64), loss_type="ipo", beta=beta, chosen_lengths=len_w, rejected_lengths=len_l
    )
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("space", ["probability", "margin"])
def test_ssapo_matches_hand_computation(space):
    beta = 0.5
    weights = [[0.25, 0.75], [1.0, 0.0]]
    shifts = [[0.1, 0.0], [0.3, 0.0]]
    expected = []
    for i, (sw, sl) in enumerate(zip(S_W, S_L)):
        z = beta * (sw - sl)
        total = 0.0
        for w, d in zip(weights[i], shifts[i]):
            if space == "probability":
                total += w * -math.log(max(_sigmoid(z) - d, 1e-6))
            else:
                total += w * -_log_sigmoid(z - d)
        expected.append(total)
    out = preference_losses(
        *_pairs(torch.float64),
        loss_type="ssapo",
        beta=beta,
        worst_case=(torch.tensor(weights), torch.tensor(shifts)),
        space=space,
    )
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_ssapo_probability_floor_keeps_the_loss_finite():
    # a displacement beyond the point itself would give log of a negative number without the 1e-6 floor
    out = preference_losses(
        *_pairs(torch.float64),
        loss_type="ssapo",
        worst_case=([[1.0], [1.0]], [[2.0], [2.0]]),
        space="probability",
    )
    assert out.losses.tolist() == pytest.approx([-math.log(1e-6)] * 2)


def test_ssapo_single_unshifted_piece_is_dpo_in_margin_space():
    gen = torch.Generator().manual_seed(0)
    logps = [torch.randn(17, generator=gen, dtype=torch.float64) * 5 for _ in range(4)]
    worst = (torch.ones(17, 1), torch.zeros(17, 1))
    ssapo = preference_losses(*logps, loss_type="ssapo", worst_case=worst, space="margin", beta=0.3).losses
    dpo = preference_losses(*logps, loss_type="sigmoid", beta=0.3).losses
    torch.testing.assert_close(ssapo, dpo, rtol=1e-12, atol=1e-12)


def test_sppo_with_certain_outcomes_is_half_sppo_hard():
    gen = torch.Generator().manual_seed(1)
    logps = [torch.randn(9, generator=gen, dtype=torch.float64) for _ in range(4)]
    soft = preference_losses(
        *logps, loss_type="sppo", beta=0.2, chosen_win_prob=torch.ones(9), rejected_win_prob=torch.zeros(9)
    ).losses
    hard = preference_losses(*logps, loss_type="sppo_hard", beta=0.2).losses
    torch.testing.assert_close(soft, hard / 2, rtol=1e-12, atol=1e-12)


def test_robust_without_noise_is_dpo():
    logps = _pairs(torch.float64)
    robust = preference_losses(*logps, loss_type="robust", label_smoothing=0.0).losses
    dpo = preference_losses(*logps, loss_type="sigmoid").losses
    torch.testing.assert_close(robust, dpo)


def test_weights_multiply_each_pair_before_the_mean():
    logps = _pairs(torch.float64)
    per_pair = preference_losses(*logps, loss_type="hinge").losses
    weighted = preference_loss(*logps, loss_type="hinge", weights=[2.0, 0.5])
    assert float(weighted) == pytest.approx(float((per_pair * torch.tensor([2.0, 0.5])).mean()))


LENGTHS = {
    "chosen_lengths": torch.tensor([3.0, 1.0, 7.0, 2.0, 5.0, 4.0], dtype=torch.float64),
    "rejected_lengths": torch.tensor([2.0, 6.0, 1.0, 3.0, 3.0, 8.0], dtype=torch.float64),
}
EXTRAS = {
    "robust": {"label_smoothing": 0.15},
    "exo_pair": {"label_smoothing": 0.01},
    "aot": {"label_smoothing": 0.1},
    "aot_unpaired": {"label_smoothing": 0.1},
    "discopop": {"discopop_tau": 0.4},
    "sft": LENGTHS,
    "sigmoid_norm": LENGTHS,
    "simpo": {"simpo_gamma": 0.2, "label_smoothing": 0.1, **LENGTHS},
    "cpo": {"label_smoothing": 0.1},
    "orpo": LENGTHS,
    "sppo": {
        "chosen_win_prob": torch.rand(6, dtype=torch.float64),
        "rejected_win_prob": torch.rand(6, dtype=torch.float64),
    },
    "ssapo": {
        "worst_case": (
            torch.softmax(torch.randn(6, 3, dtype=torch.float64), -1),
            0.05 * torch.rand(6, 3, dtype=torch.float64),
        ),
        "space": "probability",
    },
}


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradcheck_float64(loss_type):
    gen = torch.Generator().manual_seed(3)
    logps = [torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    weights = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1

    kwargs = {"weights": weights, **EXTRAS.get(loss_type, {})}
    if loss_type in BATCH_COUPLED:
        del kwargs["weights"]

    def fn(*xs):
        return preference_loss(*xs, loss_type=loss_type, beta=0.7, **kwargs)

    assert torch.autograd.gradcheck(fn, logps)


def test_ssapo_margin_gradcheck_float64():
    gen = torch.Generator().manual_seed(4)
    logps = [torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    worst = (
        torch.softmax(torch.randn(5, 4, generator=gen, dtype=torch.float64), -1),
        torch.rand(5, 4, dtype=torch.float64),
    )
    assert torch.autograd.gradcheck(
        lambda *xs: preference_loss(*xs, loss_type="ssapo", worst_case=worst, space="margin", beta=0.4), logps
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_inputs_are_computed_in_float32(dtype):
    logps = _pairs(dtype)
    out = preference_loss(*logps, loss_type="sigmoid", beta=0.5)
    assert out.dtype == torch.float32
    expected = preference_loss(*[t.float() for t in logps], loss_type="sigmoid", beta=0.5)
    torch.testing.assert_close(out, expected)


# --- errors name the argument ---------------------------------------------------------------------------------


def test_unknown_loss_type_lists_the_valid_ones():
    with pytest.raises(ValueError, match="loss_type") as info:
        preference_loss(*_pairs(), loss_type="kto")
    for name in LOSS_TYPES:
        assert name in str(info.value)


def test_shape_mismatch_names_the_argument():
    chosen, rejected, ref_chosen, ref_rejected = _pairs()
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        preference_loss(chosen, rejected, ref_chosen, ref_rejected[:1])
    with pytest.raises(ValueError, match="chosen_logps"):
        preference_loss(chosen.reshape(2, 1), rejected, ref_chosen, ref_rejected)


def test_sppo_needs_win_probabilities():
    with pytest.raises(ValueError, match="chosen_win_prob"):
        preference_loss(*_pairs(), loss_type="sppo")
    with pytest.raises(ValueError, match="rejected_win_prob"):
        preference_loss(*_pairs(), loss_type="sppo", chosen_win_prob=[0.5, 0.5])
    with pytest.raises(ValueError, match="chosen_win_prob"):
        preference_loss(*_pairs(), loss_type="sppo", chosen_win_prob=[1.5, 0.5], rejected_win_prob=[0.5, 0.5])


def test_ssapo_needs_a_worst_case_of_the_right_shape():
    with pytest.raises(ValueError, match="worst_case"):
        preference_loss(*_pairs(), loss_type="ssapo")
    with pytest.raises(ValueError, match="worst_case.weights"):
        preference_loss(*_pairs(), loss_type="ssapo", worst_case=(torch.ones(3, 2), torch.zeros(3, 2)))
    with pytest.raises(ValueError, match="worst_case.shifts"):
        preference_loss(*_pairs(), loss_type="ssapo", worst_case=(torch.ones(2, 2), torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="space"):
        preference_loss(*_pairs(), loss_type="ssapo", worst_case=(torch.ones(2, 1), torch.zeros(2, 1)), space="logit")


@pytest.mark.parametrize("value", [-0.1, 0.5, 0.7])
def test_robust_label_smoothing_range(value):
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss(*_pairs(), loss_type="robust", label_smoothing=value)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_beta_must_be_positive_and_finite(beta):
    with pytest.raises(ValueError, match="beta"):
        preference_loss(*_pairs(), beta=beta)


def test_weights_must_be_nonnegative():
    with pytest.raises(ValueError, match="weights"):
        preference_loss(*_pairs(), weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="weights"):
        preference_loss(*_pairs(), weights=[1.0, 1.0, 1.0])


# --- sequence_logps -------------------------------------------------------------------------------------------


def test_sequence_logps_matches_a_loop_over_tokens():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 7, 11, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 7), generator=gen)
    labels[0, :3] = -100
    labels[2, :] = -100
    for average in (False, True):
        out = sequence_logps(logits, labels, average=average)
        for b in range(3):
            total, count = 0.0, 0
            for t in range(7):
                if labels[b, t] != -100:
                    row = logits[b, t].tolist()
                    top = max(row)
                    lse = top + math.log(sum(math.exp(v - top) for v in row))
                    total += row[labels[b, t]] - lse
                    count += 1
            expected = total / count if (average and count) else total
            assert float(out[b]) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # every label ignored: defined as 0, never NaN
    assert float(sequence_logps(logits, labels, average=True)[2]) == 0.0


def test_sequence_logps_dtype_and_gradcheck():
    logits = torch.randn(2, 5, 6, dtype=torch.bfloat16)
    labels = torch.randint(0, 6, (2, 5))
    assert sequence_logps(logits, labels).dtype == torch.float32
    logits64 = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    labels[1, 2] = -100
    assert torch.autograd.gradcheck(lambda x: sequence_logps_reference(x, labels, average=True), (logits64,))


def test_sequence_logps_errors():
    logits = torch.randn(2, 4, 5)
    with pytest.raises(ValueError, match="labels"):
        sequence_logps(logits, torch.full((2, 4), 5))
    with pytest.raises(ValueError, match="labels"):
        sequence_logps(logits, torch.full((2, 3), 1))
    with pytest.raises(ValueError, match="logits"):
        sequence_logps(logits[0], torch.full((4,), 1))
    with pytest.raises(ValueError, match="labels"):
        sequence_logps(logits, torch.zeros(2, 4))
