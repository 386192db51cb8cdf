"""Triton kernel from the four per-pair log-prob vectors to per-pair losses and their gradients (DESIGN 1.1).

One launch covers every loss type (a compile-time switch), the length-normalised IPO, SPPO's win probabilities, the
SSAPO follower's (weights, shifts) and the per-pair weights. The forward writes d loss_i / d chosen_i and
d loss_i / d rejected_i next to loss_i (a handful of flops per pair), so the backward is a multiply; the reference
log-probs get the negated gradients. Everything is computed in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from sgpo.reference import PROB_FLOOR

# The kernel's compile-time switch; the numbers are the branches of _preference_kernel.
LOSS_IDS = {"sigmoid": 0, "hinge": 1, "ipo": 2, "robust": 3, "sppo_hard": 4, "sppo": 5, "ssapo": 6}


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
    LOSS: tl.constexpr,
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
    if HAS_LENGTHS:
        len_w = tl.load(chosen_len_ptr + offs, mask=live, other=1.0)
        len_l = tl.load(rejected_len_ptr + offs, mask=live, other=1.0)
        s_w = s_w / len_w
        s_l = s_l / len_l
    z = beta * (s_w - s_l)
    half_over_beta = 0.5 / beta

    # Each branch sets the loss and its derivatives with respect to s_w and s_l.
    if LOSS == 0:  # sigmoid; label_smoothing > 0 is conservative DPO
        loss = -(1.0 - label_smoothing) * _log_sigmoid(z) - label_smoothing * _log_sigmoid(-z)
        dz = -(1.0 - label_smoothing) * _sigmoid(-z) + label_smoothing * _sigmoid(z)
        d_w = beta * dz
        d_l = -d_w
    elif LOSS == 1:  # hinge
        loss = tl.maximum(1.0 - z, 0.0)
        d_w = tl.where(1.0 - z > 0.0, -beta, 0.0)
        d_l = -d_w
    elif LOSS == 2:  # ipo
        gap = s_w - s_l - half_over_beta
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
        gap_w = s_w - half_over_beta
        gap_l = s_l + half_over_beta
        loss = gap_w * gap_w + gap_l * gap_l
        d_w = 2.0 * gap_w
        d_l = 2.0 * gap_l
    elif LOSS == 5:  # sppo (arXiv 2405.00675, eq. 4.2), eta = 1/beta
        p_w = tl.load(chosen_win_ptr + offs, mask=live, other=0.5)
        p_l = tl.load(rejected_win_ptr + offs, mask=live, other=0.5)
        gap_w = s_w - (p_w - 0.5) / beta
        gap_l = s_l - (p_l - 0.5) / beta
        loss = 0.5 * (gap_w * gap_w + gap_l * gap_l)
        d_w = gap_w
        d_l = gap_l
    else:  # ssapo leader (arXiv 2502.18099, Alg. 1 step 4): expected loss under the follower's worst case
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

    if HAS_LENGTHS:
        d_w = d_w / len_w
        d_l = d_l / len_l
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair (loss, d loss / d chosen, d loss / d rejected), float32 (B,); arguments already validated."""
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
            LOSS=LOSS_IDS[loss_type],
            PROBABILITY_SPACE=space == "probability",
            HAS_PAIR_WEIGHTS=pair_weights is not None,
            HAS_LENGTHS=chosen_lengths is not None,
            BLOCK=block,
            BLOCK_K=block_k,
        )
    return losses, grad_chosen, grad_rejected
