"""Pure-PyTorch reference ops: the specification every kernel, C++ and CUDA path is checked against.

Notation follows DESIGN 1.1: for a pair (x, y_w, y_l), s(y) = log pi_theta(y|x) - log pi_ref(y|x) summed over response
tokens, Delta = s(y_w) - s(y_l). Every loss is computed in float32, or float64 when an input is float64.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from sgpo.loss_args import (  # noqa: F401  (LOSS_TYPES, SPACES, ... are re-exported: the reference is their home)
    BATCH_COUPLED,
    F_DIVERGENCE_LOSS_TYPES,
    F_DIVERGENCES,
    LENGTH_NORMALISED,
    LOSS_TYPES,
    REFERENCE_FREE,
    SPACES,
    TRL_LOSS_TYPES,
    _vector,
    _worst_case_tensors,
    compute_dtype,
    validate_preference_args,
)

# l(p) = -log(max(p, PROB_FLOOR)) in probability space (DESIGN 1.1, the paper's code)
PROB_FLOOR = 1e-6


class PreferenceLosses(NamedTuple):
    """Per-pair losses and the implicit rewards beta * s(y) for logging."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def check_labels(labels: torch.Tensor, vocab_size: int, ignore_index: int) -> torch.Tensor:
    """Validate labels and return the boolean mask of positions that count."""
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"labels: expected an integer tensor, got dtype {labels.dtype}")
    mask = labels != ignore_index
    bad = mask & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(
            f"labels: value {value} is outside the vocabulary [0, {vocab_size}) and is not ignore_index={ignore_index}"
        )
    return mask


def sequence_logps_reference(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, average: bool = False
) -> torch.Tensor:
    """Per-sequence sum (or mean) of log p(label) over positions whose label is not ``ignore_index``.

    ``logits`` (B, T, V) are already aligned with ``labels`` (B, T). A row whose labels are all ignored gives 0 (sum and
    mean alike), never NaN. Returns float32 (float64 for float64 logits).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits: expected shape (B, T, V), got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels: expected shape {tuple(logits.shape[:2])} to match logits, got {tuple(labels.shape)}")
    mask = check_labels(labels, logits.shape[-1], ignore_index)
    dtype = compute_dtype(logits)
    logprobs = torch.log_softmax(logits.to(dtype), dim=-1)
    safe = torch.where(mask, labels.long(), torch.zeros_like(labels, dtype=torch.long))
    token = logprobs.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * mask
    total = token.sum(-1)
    if average:
        total = total / mask.sum(-1).clamp(min=1).to(dtype)
    return total


# exp() arguments are capped here (TRL's float32 cap): exp(80) ~ 5.5e34 stays finite in float32, so an f-divergence
# score at an extreme log-ratio is huge, never inf, and a difference of two never NaN
EXP_CAP = 80.0
# ORPO's log(1 - p) at an average log-prob of 0 (p = 1) would be -inf; log-probs are capped just below 0
ORPO_LOGP_CAP = -1e-7


def f_divergence_scores(s: torch.Tensor, f_divergence_type: str, alpha: float) -> torch.Tensor:
    """f'(pi/pi_ref) of f-DPO (arXiv 2309.16240, Thm 1) as a function of the log-ratio s, in TRL 1.16's forms."""
    if f_divergence_type == "forward_kl":
        # f'(t) = 1 - 1/t
        return 1 - torch.exp(torch.clamp(-s, max=EXP_CAP))
    if f_divergence_type == "js_divergence":
        # f'(t) = log(2t / (1 + t)) = log 2 + log sigmoid(log t)
        return math.log(2) + F.logsigmoid(s)
    if f_divergence_type == "alpha_divergence" and abs(alpha - 1.0) >= 1e-6:
        # f'(t) = (t^(alpha - 1) - 1) / (alpha - 1); alpha -> 1 is reverse KL
        return (torch.exp(torch.clamp((alpha - 1.0) * s, max=EXP_CAP)) - 1.0) / (alpha - 1.0)
    return s  # reverse KL (DPO): f'(t) = log t + 1, the constant cancels


def _cdpo(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    # -log sigmoid(z) with conservative label noise (cDPO): mixes in the flipped pair's loss
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def _log1m_exp(x: torch.Tensor) -> torch.Tensor:
    # log(1 - exp(x)) for x < 0, accurate at both ends
    x = x.clamp(max=ORPO_LOGP_CAP)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_log_odds(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """log odds(y_w) - log odds(y_l), odds(y) = p / (1 - p) of the (length-normalised) log-probs (ORPO eq. 4)."""
    return (chosen - rejected) - (_log1m_exp(chosen) - _log1m_exp(rejected))


def preference_losses_reference(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    *,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_win_prob: Any = None,
    rejected_win_prob: Any = None,
    worst_case: Any = None,
    space: str = "probability",
    weights: Any = None,
    chosen_lengths: Any = None,
    rejected_lengths: Any = None,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    discopop_tau: float = 0.05,
    simpo_gamma: float = 0.5,
) -> PreferenceLosses:
    """Per-pair losses (times the per-pair ``weights`` when given) and the implicit rewards; see docs/loss-types.md.

    s_w, s_l are the log-ratios (the log-probs themselves for the reference-free losses), u_w, u_l their f-divergence
    scores divided by the response lengths where given, z = beta * (u_w - u_l). The rewards are beta * s (beta * u for
    the reference-free losses, whose s is normalised).
    """
    validate_preference_args(
        chosen_logps,
        rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        loss_type=loss_type,
        beta=beta,
        label_smoothing=label_smoothing,
        chosen_win_prob=chosen_win_prob,
        rejected_win_prob=rejected_win_prob,
        worst_case=worst_case,
        space=space,
        weights=weights,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef,
        discopop_tau=discopop_tau,
        simpo_gamma=simpo_gamma,
    )
    dtype = compute_dtype(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    batch, device = chosen_logps.shape[0], chosen_logps.device
    chosen, rejected = chosen_logps.to(dtype), rejected_logps.to(dtype)
    if loss_type in REFERENCE_FREE:
        s_w, s_l = chosen, rejected
    else:
        s_w, s_l = chosen - ref_chosen_logps.to(dtype), rejected - ref_rejected_logps.to(dtype)
    u_w = f_divergence_scores(s_w, f_divergence_type, f_alpha_divergence_coef)
    u_l = f_divergence_scores(s_l, f_divergence_type, f_alpha_divergence_coef)
    if chosen_lengths is not None:
        len_w = _vector("chosen_lengths", chosen_lengths, batch, dtype, device)
        len_l = _vector("rejected_lengths", rejected_lengths, batch, dtype, device)
        if bool((len_w <= 0).any()) or bool((len_l <= 0).any()):
            raise ValueError(f"chosen_lengths: every response length must be > 0 for length-normalised {loss_type}")
        u_w, u_l = u_w / len_w, u_l / len_l
    z = beta * (u_w - u_l)
    if loss_type in ("simpo", "cpo", "orpo"):
        s_w, s_l = u_w, u_l
    chosen_rewards, rejected_rewards = (beta * s_w).detach(), (beta * s_l).detach()
    e = label_smoothing

    if loss_type in ("sigmoid", "sigmoid_norm", "cpo"):
        # DPO (arXiv 2305.18290, eq. 7); sigmoid_norm with lengths is Tulu 3's length-normalised DPO (2411.15124);
        # cpo is its reference-free form (CPO, arXiv 2401.08417, eq. 3); label_smoothing > 0 is conservative DPO
        losses = _cdpo(z, e)
    elif loss_type == "hinge":
        # SLiC (arXiv 2305.10425, eq. 1) on the DPO margin
        losses = torch.relu(1 - z)
    elif loss_type == "ipo":
        # IPO (arXiv 2310.12036, eq. 17); with lengths, TRL's per-token form
        losses = (u_w - u_l - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        # rDPO (arXiv 2403.00409, eq. 5): unbiased under label-flip rate e
        losses = (-(1 - e) * F.logsigmoid(z) + e * F.logsigmoid(-z)) / (1 - 2 * e)
    elif loss_type == "exo_pair":
        # EXO (arXiv 2402.00856, eq. 16): KL(softmax(z) || (1 - e, e)) over the pair
        losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-e)) + torch.sigmoid(-z) * (
            F.logsigmoid(-z) - math.log(e)
        )
    elif loss_type == "nca_pair":
        # NCA (arXiv 2402.05369, eq. 11) for a pair
        losses = -F.logsigmoid(beta * s_w) - 0.5 * F.logsigmoid(-beta * s_w) - 0.5 * F.logsigmoid(-beta * s_l)
    elif loss_type == "bco_pair":
        # BCO (arXiv 2404.04656, eq. 7) on a pair, with TRL 1.16's reward shift delta = 0
        losses = -F.logsigmoid(beta * s_w) - F.logsigmoid(-beta * s_l)
    elif loss_type == "sppo_hard":
        losses = (s_w - 1 / (2 * beta)) ** 2 + (s_l + 1 / (2 * beta)) ** 2
    elif loss_type == "sppo":
        # SPPO (arXiv 2405.00675, eq. 4.2) with eta = 1/beta
        p_w = _vector("chosen_win_prob", chosen_win_prob, batch, dtype, device)
        p_l = _vector("rejected_win_prob", rejected_win_prob, batch, dtype, device)
        for name, p in (("chosen_win_prob", p_w), ("rejected_win_prob", p_l)):
            if not bool(((p >= 0) & (p <= 1)).all()):
                raise ValueError(f"{name}: win probabilities must lie in [0, 1]")
        losses = ((s_w - (p_w - 0.5) / beta) ** 2 + (s_l - (p_l - 0.5) / beta) ** 2) / 2
    elif loss_type in ("aot", "aot_unpaired"):
        # AOT (arXiv 2406.05882, eq. 9): the batch's sorted policy margins against its sorted reference margins;
        # unpaired: the sorted chosen log-ratios against the sorted rejected ones
        if loss_type == "aot":
            ref_margins = ref_chosen_logps.to(dtype) - ref_rejected_logps.to(dtype)
            delta = torch.sort(chosen - rejected).values - torch.sort(ref_margins).values
        else:
            delta = torch.sort(s_w).values - torch.sort(s_l).values
        losses = _cdpo(beta * delta, e)
    elif loss_type == "apo_zero":
        # APO-zero (arXiv 2408.06266, eq. 7): raise the chosen likelihood, lower the rejected one
        losses = 1 - torch.sigmoid(beta * s_w) + torch.sigmoid(beta * s_l)
    elif loss_type == "apo_down":
        # APO-down (arXiv 2408.06266, eq. 8): lower both, the rejected one more
        losses = torch.sigmoid(beta * s_w) + 1 - torch.sigmoid(beta * (s_w - s_l))
    elif loss_type == "discopop":
        # DiscoPOP's log-ratio modulated loss (arXiv 2406.08414, eq. 5); exp(-z) * sigmoid(z / tau) in one exp, so
        # an extreme margin gives 0 * inf nowhere
        mix = torch.sigmoid(z / discopop_tau)
        losses = -F.logsigmoid(z) * (1 - mix) + torch.exp(-z + F.logsigmoid(z / discopop_tau))
    elif loss_type == "sft":
        # the chosen responses' NLL, per token where lengths are given (RPO, arXiv 2404.19733, adds it to DPO)
        losses = -(chosen / len_w if chosen_lengths is not None else chosen)
    elif loss_type == "simpo":
        # SimPO (arXiv 2405.14734, eq. 6): length-normalised reference-free margin minus gamma
        losses = _cdpo(z - simpo_gamma, e)
    elif loss_type == "orpo":
        # ORPO (arXiv 2403.07691, eq. 7): the odds-ratio term, weighted by beta (the paper's lambda)
        losses = -beta * F.logsigmoid(orpo_log_odds(u_w, u_l))
    else:
        # SSAPO leader (arXiv 2502.18099, Alg. 1 step 4): expected loss under the follower's worst case
        w, d = _worst_case_tensors(worst_case, batch, dtype, device)
        if space == "probability":
            shifted = torch.sigmoid(z).unsqueeze(-1) - d
            per_piece = -torch.log(shifted.clamp(min=PROB_FLOOR))
        else:
            per_piece = -F.logsigmoid(z.unsqueeze(-1) - d)
        losses = (w * per_piece).sum(-1)

    if weights is not None:
        pair_weights = _vector("weights", weights, batch, dtype, device)
        if not bool((torch.isfinite(pair_weights) & (pair_weights >= 0)).all()):
            raise ValueError("weights: per-pair weights must be finite and >= 0")
        losses = losses * pair_weights
    return PreferenceLosses(losses, chosen_rewards, rejected_rewards)


def preference_loss_reference(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Mean over pairs of :func:`preference_losses_reference`."""
    return preference_losses_reference(*args, **kwargs).losses.mean()
