"""Triton kernel from the four per-pair log-prob vectors to per-pair losses and their gradients (DESIGN 1.1).

One launch covers every per-pair loss type (a compile-time switch), f-DPO's divergences, length normalisation, SPPO's
win probabilities, the SSAPO follower's (weights, shifts) and the per-pair weights. The forward writes
d loss_i / d chosen_i and d loss_i / d rejected_i next to loss_i (a handful of flops per pair), so the backward is a
multiply; the reference log-probs get the negated gradients. Everything is computed in float32. Each branch follows
:func:`sgpo.reference.preference_losses_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from sgpo.reference import EXP_CAP, ORPO_LOGP_CAP, PROB_FLOOR

# The kernel's compile-time switch; the numbers are the branches of _preference_kernel. sigmoid_norm, cpo and simpo
# are the sigmoid branch (with lengths, without a reference, with a margin); aot sorts in PyTorch, then takes it too.
LOSS_IDS = {
    "sigmoid": 0,
    "hinge": 1,
    "ipo": 2,
    "robust": 3,
    "sppo_hard": 4,
    "sppo": 5,
    "ssapo": 6,
    "exo_pair": 7,
    "nca_pair": 8,
    "bco_pair": 9,
    "apo_zero": 10,
    "apo_down": 11,
    "discopop": 12,
    "sft": 13,
    "orpo": 14,
    "sigmoid_norm": 0,
    "cpo": 0,
    "simpo": 0,
}
F_DIVERGENCE_IDS = {"reverse_kl": 0, "forward_kl": 1, "js_divergence": 2, "alpha_divergence": 3}


@triton.jit
def _log1p(x):
    # log(1 + x) accurate for tiny x (Goldberg's trick); Triton has no portable log1p.
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * x / tl.where(u == 1.0, 1.0, u - 1.0))


@triton.jit
def _log_sigmoid(z):
    return tl.minimum(z, 0.0) - _log1p(tl.exp(-tl.abs(z)))


@triton.jit
def _sigmoid(z):
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _f_score(s, alpha, exp_cap, F_DIV: tl.constexpr):
    # (f'(exp s), its derivative in s): f-DPO's scores, sgpo.reference.f_divergence_scores
    if F_DIV == 1:  # forward KL: 1 - exp(-s)
        e = tl.exp(tl.minimum(-s, exp_cap))
        return 1.0 - e, tl.where(-s < exp_cap, e, 0.0)
    elif F_DIV == 2:  # Jensen-Shannon: log 2 + log sigmoid(s)
        return 0.6931471805599453 + _log_sigmoid(s), _sigmoid(-s)
    elif F_DIV == 3:  # alpha divergence: (exp((alpha - 1) s) - 1) / (alpha - 1)
        t = (alpha - 1.0) * s
        e = tl.exp(tl.minimum(t, exp_cap))
        return (e - 1.0) / (alpha - 1.0), tl.where(t < exp_cap, e, 0.0)
    else:
        return s, tl.full(s.shape, 1.0, tl.float32)


@triton.jit
def _log1m_exp(x, cap):
    # log(1 - exp(x)) for x <= cap < 0 and its derivative -exp(x) / (1 - exp(x)); 1 - exp(x) = -expm1(x) by Kahan's
    # trick (u - 1) * x / log(u) where exp(x) is near 1 (Triton has no expm1), plain 1 - exp(x) below log(1/2)
    x = tl.minimum(x, cap)
    u = tl.exp(x)
    near_one = x > -0.6931471805599453
    kahan = tl.where(u == 1.0, -x, (1.0 - u) * x / tl.log(tl.where(near_one & (u != 1.0), u, 0.5)))
    one_minus = tl.where(near_one, kahan, 1.0 - u)
    return tl.log(one_minus), -u / one_minus


@triton.jit
def _preference_kernel(
    chosen_ptr,
    rejected_ptr,
    ref_chosen_ptr,
    ref_rejected_ptr,
    chosen_win_ptr,
    rejected_win_ptr,
    wc_weights_ptr,
    wc_shifts_ptr,
    pair_weights_ptr,
    chosen_len_ptr,
    rejected_len_ptr,
    loss_ptr,
    grad_chosen_ptr,
    grad_rejected_ptr,
    n_pairs,
    n_pieces,
    beta,
    label_smoothing,
    prob_floor,
    f_alpha,
    exp_cap,
    discopop_tau,
    margin,
    orpo_cap,
    LOSS: tl.constexpr,
    F_DIV: tl.constexpr,
    PROBABILITY_SPACE: tl.constexpr,
    HAS_PAIR_WEIGHTS: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n_pairs
    s_w = tl.load(chosen_ptr + offs, mask=live, other=0.0) - tl.load(ref_chosen_ptr + offs, mask=live, other=0.0)
    s_l = tl.load(rejected_ptr + offs, mask=live, other=0.0) - tl.load(ref_rejected_ptr + offs, mask=live, other=0.0)
    # u: the f-divergence scores of the log-ratios, per token where lengths are given; g = du/ds
    u_w, g_w = _f_score(s_w, f_alpha, exp_cap, F_DIV)
    u_l, g_l = _f_score(s_l, f_alpha, exp_cap, F_DIV)
    if HAS_LENGTHS:
        len_w = tl.load(chosen_len_ptr + offs, mask=live, other=1.0)
        len_l = tl.load(rejected_len_ptr + offs, mask=live, other=1.0)
        u_w = u_w / len_w
        u_l = u_l / len_l
        g_w = g_w / len_w
        g_l = g_l / len_l
    z = beta * (u_w - u_l) - margin
    a = beta * u_w
    b = beta * u_l
    half_over_beta = 0.5 / beta

    # Each branch sets the loss and its derivatives d_w, d_l with respect to u_w and u_l.
    if LOSS == 0:  # sigmoid (also sigmoid_norm, cpo, simpo); label_smoothing > 0 is conservative DPO
        loss = -(1.0 - label_smoothing) * _log_sigmoid(z) - label_smoothing * _log_sigmoid(-z)
        dz = -(1.0 - label_smoothing) * _sigmoid(-z) + label_smoothing * _sigmoid(z)
        d_w = beta * dz
        d_l = -d_w
    elif LOSS == 1:  # hinge
        loss = tl.maximum(1.0 - z, 0.0)
        d_w = tl.where(1.0 - z > 0.0, -beta, 0.0)
        d_l = -d_w
    elif LOSS == 2:  # ipo
        gap = u_w - u_l - half_over_beta
        loss = gap * gap
        d_w = 2.0 * gap
        d_l = -d_w
    elif LOSS == 3:  # robust (rDPO, arXiv 2403.00409, eq. 5)
        scale = 1.0 / (1.0 - 2.0 * label_smoothing)
        loss = (-(1.0 - label_smoothing) * _log_sigmoid(z) + label_smoothing * _log_sigmoid(-z)) * scale
        dz = (-(1.0 - label_smoothing) * _sigmoid(-z) - label_smoothing * _sigmoid(z)) * scale
        d_w = beta * dz
        d_l = -d_w
    elif LOSS == 4:  # sppo_hard
        gap_w = u_w - half_over_beta
        gap_l = u_l + half_over_beta
        loss = gap_w * gap_w + gap_l * gap_l
        d_w = 2.0 * gap_w
        d_l = 2.0 * gap_l
    elif LOSS == 5:  # sppo (arXiv 2405.00675, eq. 4.2), eta = 1/beta
        p_w = tl.load(chosen_win_ptr + offs, mask=live, other=0.5)
        p_l = tl.load(rejected_win_ptr + offs, mask=live, other=0.5)
        gap_w = u_w - (p_w - 0.5) / beta
        gap_l = u_l - (p_l - 0.5) / beta
        loss = 0.5 * (gap_w * gap_w + gap_l * gap_l)
        d_w = gap_w
        d_l = gap_l
    elif LOSS == 6:  # ssapo leader (arXiv 2502.18099, Alg. 1 step 4): expected loss under the follower's worst case
        pieces = tl.arange(0, BLOCK_K)
        tile = offs[:, None] * n_pieces + pieces[None, :]
        in_tile = live[:, None] & (pieces[None, :] < n_pieces)
        weight = tl.load(wc_weights_ptr + tile, mask=in_tile, other=0.0)
        shift = tl.load(wc_shifts_ptr + tile, mask=in_tile, other=0.0)
        if PROBABILITY_SPACE:
            # l(p) = -log(max(p, 1e-6)) at p = sigmoid(z) - D
            moved = _sigmoid(z)[:, None] - shift
            kept = moved >= prob_floor
            loss = tl.sum(weight * -tl.log(tl.maximum(moved, prob_floor)), axis=1)
            d_p = tl.sum(tl.where(kept, -weight / tl.where(kept, moved, 1.0), 0.0), axis=1)
            dz = d_p * _sigmoid(z) * _sigmoid(-z)
        else:
            # l = -log sigmoid(z - D)
            moved = z[:, None] - shift
            loss = tl.sum(-weight * _log_sigmoid(moved), axis=1)
            dz = tl.sum(-weight * _sigmoid(-moved), axis=1)
        d_w = beta * dz
        d_l = -d_w
    elif LOSS == 7:  # exo_pair (arXiv 2402.00856, eq. 16): q (log q - log(1 - e)) + (1 - q)(log(1 - q) - log e)
        log_keep = tl.log(1.0 - label_smoothing)
        log_flip = tl.log(label_smoothing)
        q = _sigmoid(z)
        loss = q * (_log_sigmoid(z) - log_keep) + _sigmoid(-z) * (_log_sigmoid(-z) - log_flip)
        # dL/dq = z - log(1 - e) + log e, dq/dz = q (1 - q)
        dz = q * _sigmoid(-z) * (z - log_keep + log_flip)
        d_w = beta * dz
        d_l = -d_w
    elif LOSS == 8:  # nca_pair (arXiv 2402.05369)
        loss = -_log_sigmoid(a) - 0.5 * _log_sigmoid(-a) - 0.5 * _log_sigmoid(-b)
        d_w = beta * (-_sigmoid(-a) + 0.5 * _sigmoid(a))
        d_l = beta * 0.5 * _sigmoid(b)
    elif LOSS == 9:  # bco_pair (arXiv 2404.04656), reward shift 0
        loss = -_log_sigmoid(a) - _log_sigmoid(-b)
        d_w = -beta * _sigmoid(-a)
        d_l = beta * _sigmoid(b)
    elif LOSS == 10:  # apo_zero (arXiv 2408.06266, eq. 7)
        loss = 1.0 - _sigmoid(a) + _sigmoid(b)
        d_w = -beta * _sigmoid(a) * _sigmoid(-a)
        d_l = beta * _sigmoid(b) * _sigmoid(-b)
    elif LOSS == 11:  # apo_down (arXiv 2408.06266, eq. 8)
        loss = _sigmoid(a) + 1.0 - _sigmoid(z)
        slope = beta * _sigmoid(z) * _sigmoid(-z)
        d_w = beta * _sigmoid(a) * _sigmoid(-a) - slope
        d_l = slope
    elif LOSS == 12:  # discopop (arXiv 2406.08414, eq. 5): -log sigmoid(z) (1 - m) + exp(-z) m, m = sigmoid(z / tau)
        zt = z / discopop_tau
        keep = _sigmoid(-zt)
        modulated = tl.exp(-z + _log_sigmoid(zt))
        loss = -_log_sigmoid(z) * keep + modulated
        # m (1 - m) as a product of two sigmoids: 1 - m would cancel where m is near 1
        spread = _sigmoid(zt) * keep / discopop_tau
        dz = -_sigmoid(-z) * keep + _log_sigmoid(z) * spread + modulated * (keep / discopop_tau - 1.0)
        d_w = beta * dz
        d_l = -d_w
    elif LOSS == 13:  # sft: the chosen response's NLL (per token with lengths)
        loss = -u_w
        d_w = tl.full(u_w.shape, -1.0, tl.float32)
        d_l = tl.zeros(u_w.shape, tl.float32)
    else:  # orpo (arXiv 2403.07691, eq. 7): -beta log sigmoid(log odds(y_w) - log odds(y_l))
        log1m_w, dlog1m_w = _log1m_exp(u_w, orpo_cap)
        log1m_l, dlog1m_l = _log1m_exp(u_l, orpo_cap)
        dlog1m_w = tl.where(u_w <= orpo_cap, dlog1m_w, 0.0)
        dlog1m_l = tl.where(u_l <= orpo_cap, dlog1m_l, 0.0)
        log_odds = (u_w - u_l) - (log1m_w - log1m_l)
        loss = -beta * _log_sigmoid(log_odds)
        d_odds = -beta * _sigmoid(-log_odds)
        d_w = d_odds * (1.0 - dlog1m_w)
        d_l = d_odds * (dlog1m_l - 1.0)

    d_w = d_w * g_w
    d_l = d_l * g_l
    if HAS_PAIR_WEIGHTS:
        pair_weight = tl.load(pair_weights_ptr + offs, mask=live, other=0.0)
        loss = loss * pair_weight
        d_w = d_w * pair_weight
        d_l = d_l * pair_weight
    tl.store(loss_ptr + offs, loss, mask=live)
    tl.store(grad_chosen_ptr + offs, d_w, mask=live)
    tl.store(grad_rejected_ptr + offs, d_l, mask=live)


# Elements of one program's (pairs x pieces) tile: 8 per thread at the default 4 warps. A 1024 x 8 tile (K = 6) took
# all 255 registers and spilled on sm_80 and sm_90 (benchmarks/kernel_resources.py).
_TILE_ELEMENTS = 1024


def launch_blocks(n_pieces: int) -> tuple[int, int]:
    """(BLOCK, BLOCK_K): pairs per program and the padded number of worst-case pieces that the kernel launches with.

    A pure function of the number of pieces so that the ahead-of-time compile check
    (``benchmarks/kernel_resources.py``) compiles the blocks real launches use.
    """
    if n_pieces < 1:
        raise ValueError(f"n_pieces: expected a number of worst-case pieces >= 1, got {n_pieces}")
    block_k = triton.next_power_of_2(n_pieces)
    return max(1, _TILE_ELEMENTS // block_k), block_k


def _f32(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    # Absent inputs are never read (their constexpr switch is off); any float32 pointer will do.
    return like if tensor is None else tensor.to(torch.float32).contiguous()


def preference_pair_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_win_prob: torch.Tensor | None,
    rejected_win_prob: torch.Tensor | None,
    wc_weights: torch.Tensor | None,
    wc_shifts: torch.Tensor | None,
    pair_weights: torch.Tensor | None,
    chosen_lengths: torch.Tensor | None,
    rejected_lengths: torch.Tensor | None,
    loss_type: str,
    beta: float,
    label_smoothing: float,
    space: str,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    discopop_tau: float = 0.05,
    margin: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair (loss, d loss / d chosen, d loss / d rejected), float32 (B,); arguments already validated.

    ``margin`` is subtracted from the sigmoid branch's beta * (u_w - u_l) (SimPO's gamma).
    """
    if f_divergence_type == "alpha_divergence" and abs(f_alpha_divergence_coef - 1.0) < 1e-6:
        f_divergence_type = "reverse_kl"
    chosen = chosen.to(torch.float32).contiguous()
    n_pairs = chosen.shape[0]
    losses, grad_chosen, grad_rejected = (torch.empty_like(chosen) for _ in range(3))
    n_pieces = wc_weights.shape[1] if wc_weights is not None else 1
    block, block_k = launch_blocks(max(n_pieces, 1))
    if n_pairs:
        grid = (triton.cdiv(n_pairs, block),)
        _preference_kernel[grid](
            chosen,
            _f32(rejected, chosen),
            _f32(ref_chosen, chosen),
            _f32(ref_rejected, chosen),
            _f32(chosen_win_prob, chosen),
            _f32(rejected_win_prob, chosen),
            _f32(wc_weights, chosen),
            _f32(wc_shifts, chosen),
            _f32(pair_weights, chosen),
            _f32(chosen_lengths, chosen),
            _f32(rejected_lengths, chosen),
            losses,
            grad_chosen,
            grad_rejected,
            n_pairs,
            n_pieces,
            float(beta),
            float(label_smoothing),
            PROB_FLOOR,
            float(f_alpha_divergence_coef),
            EXP_CAP,
            float(discopop_tau),
            float(margin),
            ORPO_LOGP_CAP,
            LOSS=LOSS_IDS[loss_type],
            F_DIV=F_DIVERGENCE_IDS[f_divergence_type],
            PROBABILITY_SPACE=space == "probability",
            HAS_PAIR_WEIGHTS=pair_weights is not None,
            HAS_LENGTHS=chosen_lengths is not None,
            BLOCK=block,
            BLOCK_K=block_k,
        )
    return losses, grad_chosen, grad_rejected
