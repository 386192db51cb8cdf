"""Label log-probs of ``hidden @ weight.T + bias`` without ever holding the (B, T, V) logits.

Only positions whose label counts are projected (prompt tokens are often half of a batch). They are processed in
tiles of up to ``chunk_tokens`` tokens by a block of the vocabulary: the forward keeps a running logsumexp per token
(online softmax) and picks the label's logit from the block that holds it; the backward recomputes each tile's
logits, turns them into ``grad * (onehot(label) - exp(logit - logsumexp))`` and accumulates

    grad_hidden += G @ W_block,   grad_weight[block] += G.T @ hidden,   grad_bias[block] += G.sum(0).

Tiling over the vocabulary as well as tokens bounds the memory of a tile while every matmul keeps a long reduction.
The backward finishes each block of grad_weight over every token chunk before it starts the next, so a low-precision
head needs one block's float32 sum, not a float32 copy of its whole gradient.

Two implementations, both registered as custom ops so ``torch.compile`` traces through them: on CUDA (and on CPU
under ``TRITON_INTERPRET=1``) the Triton path of :mod:`sgpo.ops.fused_linear_triton`, which folds each cuBLAS tile in
one pass; elsewhere, and for float64, the plain PyTorch code below. :func:`sgpo.ops.dispatch.fused_linear_plan`
chooses, from measured settings where the device benchmark has recorded some for the GPU.
"""

from __future__ import annotations

import dataclasses

import torch

from sgpo.ops import fused_linear_triton
from sgpo.ops.dispatch import FusedLinearPlan, fused_linear_plan
from sgpo.ops.logps import reduce_tokens, valid_rows
from sgpo.reference import check_labels, compute_dtype

# Tokens per chunk: each chunk rereads the whole head once per pass, so chunks are large.
CHUNK_TOKENS = 4096
# Elements of one (tokens x vocabulary) tile: 64 MB of float32, a few wide vocabulary blocks per chunk. On CPU an 8 MB
# tile took 1.6x as long (many narrow matmuls), while the tile stays a small fraction of the unfused logits.
_TILE_ELEMENTS = 1 << 24
# Vocabulary blocks are a multiple of this, so the matmuls keep aligned, reasonably wide shapes.
_BLOCK_ALIGN = 256


def _vocab_block(n_tokens: int, vocab: int) -> int:
    block = max(_BLOCK_ALIGN, _TILE_ELEMENTS // max(n_tokens, 1) // _BLOCK_ALIGN * _BLOCK_ALIGN)
    return min(block, vocab)


class _Tiles:
    """Reusable buffers for one chunk's logit tiles (large allocations would page-fault on every tile)."""

    def __init__(self, n_tokens: int, block: int, weight: torch.Tensor, dtype: torch.dtype) -> None:
        self.raw = torch.empty(n_tokens * block, dtype=weight.dtype, device=weight.device)
        self.wide = self.raw if weight.dtype == dtype else torch.empty_like(self.raw, dtype=dtype)

    def logits(
        self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, wide): the tile in the head's dtype and in the compute dtype (the same tensor for float32)."""
        shape = (hidden.shape[0], stop - start)
        raw = self.raw[: shape[0] * shape[1]].view(shape)
        if bias is None:
            torch.mm(hidden, weight[start:stop].t(), out=raw)
        else:
            torch.addmm(bias[start:stop], hidden, weight[start:stop].t(), out=raw)
        if self.wide is self.raw:
            return raw, raw
        return raw, self.wide[: raw.numel()].view(shape).copy_(raw)


def _accumulate_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
    else:
        acc += torch.mm(a, b)


@torch.library.custom_op("sgpo::linear_token_logps", mutates_args=())
def _linear_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_tokens: int,
    with_sum_sq: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_labels(labels, weight.shape[0], ignore_index)
    dtype = compute_dtype(hidden, weight)
    vocab = weight.shape[0]
    token = torch.zeros(labels.shape, dtype=dtype, device=hidden.device)
    lse = torch.zeros(labels.shape, dtype=dtype, device=hidden.device)
    # WPO's log sum_v p_v^2 per token: sum_v exp(2 (x_v - m)) rides along the online softmax
    sum_sq = torch.zeros(labels.shape if with_sum_sq else 0, dtype=dtype, device=hidden.device)
    rows = valid_rows(labels, ignore_index)
    for first in range(0, rows.numel(), chunk_tokens):
        chunk = rows[first : first + chunk_tokens]
        chunk_hidden, chunk_labels = hidden.index_select(0, chunk), labels.index_select(0, chunk).long()
        n_tokens = chunk.numel()
        block = _vocab_block(n_tokens, vocab)
        tiles = _Tiles(n_tokens, block, weight, dtype)
        running_sq = torch.zeros(n_tokens, dtype=dtype, device=hidden.device)
        running_max = torch.full((n_tokens,), -torch.inf, dtype=dtype, device=hidden.device)
        running_sum = torch.zeros(n_tokens, dtype=dtype, device=hidden.device)
        label_logit = torch.zeros(n_tokens, dtype=dtype, device=hidden.device)
        for start in range(0, vocab, block):
            stop = min(start + block, vocab)
            _, x = tiles.logits(chunk_hidden, weight, bias, start, stop)
            inside = (chunk_labels >= start) & (chunk_labels < stop)
            picked = x.gather(1, (chunk_labels - start).clamp_(0, stop - start - 1).unsqueeze(1)).squeeze(1)
            label_logit = torch.where(inside, picked, label_logit)
            new_max = torch.maximum(running_max, x.amax(1))
            exps = x.sub_(new_max.unsqueeze(1)).exp_()
            rescale = torch.exp(running_max - new_max)
            running_sum = running_sum * rescale + exps.sum(1)
            if with_sum_sq:
                running_sq = running_sq * rescale.square() + exps.square_().sum(1)
            running_max = new_max
        chunk_lse = running_max + running_sum.log()
        token[chunk], lse[chunk] = label_logit - chunk_lse, chunk_lse
        if with_sum_sq:
            sum_sq[chunk] = running_sq.log() - 2 * running_sum.log()
    return token, lse, sum_sq


@_linear_token_logps.register_fake
def _(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_tokens: int,
    with_sum_sq: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype = compute_dtype(hidden, weight)
    sum_sq = hidden.new_empty(labels.shape if with_sum_sq else 0, dtype=dtype)
    return hidden.new_empty(labels.shape, dtype=dtype), hidden.new_empty(labels.shape, dtype=dtype), sum_sq


@torch.library.custom_op("sgpo::linear_token_logps_backward", mutates_args=())
def _linear_token_logps_backward(
    grad_token: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    chunk_tokens: int,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype, vocab = lse.dtype, weight.shape[0]
    need_bias = bias is not None
    # A low-precision head accumulates its gradients in float32 and rounds once: the vocabulary blocks are the outer
    # loop, so a block of grad_weight is finished (summed over every token chunk in float32) before the next begins,
    # and only one block's float32 sum exists at a time beside the gradient in the head's dtype.
    acc_dtype = torch.promote_types(weight.dtype, torch.float32)
    rows = valid_rows(labels, ignore_index)
    n_rows = rows.numel()
    chunks = []
    for first in range(0, n_rows, chunk_tokens):
        chunk = rows[first : first + chunk_tokens]
        chunks.append(
            (
                first,
                hidden.index_select(0, chunk),
                labels.index_select(0, chunk).long(),
                lse.index_select(0, chunk).unsqueeze(1),
                grad_token.index_select(0, chunk).to(dtype),
            )
        )
    width = min(chunk_tokens, max(n_rows, 1))
    block = _vocab_block(width, vocab)
    block_sum = None
    if need_weight and weight.dtype != acc_dtype:
        # the block's float32 sum of grad_weight is a tile too (block x hidden)
        block = min(block, _vocab_block(hidden.shape[1], vocab))
        block_sum = torch.empty(block, weight.shape[1], dtype=acc_dtype, device=weight.device)
    tiles = _Tiles(width, block, weight, dtype)
    row_grad_hidden = (
        torch.zeros(n_rows, hidden.shape[1], dtype=acc_dtype, device=hidden.device) if need_hidden else None
    )
    grad_weight = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(vocab, dtype=acc_dtype, device=weight.device) if need_bias else None
    for start in range(0, vocab, block):
        stop = min(start + block, vocab)
        weight_sum = None
        if need_weight:
            weight_sum = grad_weight[start:stop] if block_sum is None else block_sum[: stop - start].zero_()
        for first, chunk_hidden, chunk_labels, chunk_lse, chunk_grad in chunks:
            raw, x = tiles.logits(chunk_hidden, weight, bias, start, stop)
            inside = (chunk_labels >= start) & (chunk_labels < stop)
            grad_logits = x.sub_(chunk_lse).exp_().mul_(-chunk_grad.unsqueeze(1))
            grad_logits.scatter_add_(
                1,
                (chunk_labels - start).clamp_(0, stop - start - 1).unsqueeze(1),
                torch.where(inside, chunk_grad, 0.0).unsqueeze(1),
            )
            if need_bias:
                grad_bias[start:stop] += grad_logits.sum(0)
            if raw is not grad_logits:
                grad_logits = raw.copy_(grad_logits)
            if need_hidden:
                _accumulate_mm(row_grad_hidden[first : first + chunk_hidden.shape[0]], grad_logits, weight[start:stop])
            if need_weight:
                _accumulate_mm(weight_sum, grad_logits.t(), chunk_hidden)
        if block_sum is not None:
            grad_weight[start:stop].copy_(weight_sum)
    grad_hidden = hidden.new_empty(0)
    if need_hidden:
        grad_hidden = torch.zeros_like(hidden).index_copy_(0, rows, row_grad_hidden.to(hidden.dtype))
    return (
        grad_hidden,
        grad_weight if need_weight else weight.new_empty(0),
        grad_bias.to(bias.dtype) if need_bias else weight.new_empty(0),
    )


@_linear_token_logps_backward.register_fake
def _(
    grad_token: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    chunk_tokens: int,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.empty_like(hidden) if need_hidden else hidden.new_empty(0),
        torch.empty_like(weight) if need_weight else weight.new_empty(0),
        torch.empty_like(bias) if bias is not None else weight.new_empty(0),
    )


class LinearTokenLogps(torch.autograd.Function):
    """(N, H) hidden states and a (V, H) head -> (N,) log p(label), 0 where the label is ignored."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        ignore_index: int,
        plan: FusedLinearPlan,
        with_sum_sq: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if plan.backend == "triton":
            token, lse, sum_sq, rows = fused_linear_triton.linear_token_logps(
                hidden, weight, bias, labels, ignore_index, plan.chunk_tokens, plan.block, plan.num_warps, with_sum_sq
            )
        else:
            token, lse, sum_sq = _linear_token_logps(
                hidden, weight, bias, labels, ignore_index, plan.chunk_tokens, with_sum_sq
            )
            rows = None
        ctx.save_for_backward(hidden, weight, bias, labels, lse, rows)
        ctx.ignore_index, ctx.plan = ignore_index, plan
        if rows is None:
            rows = labels.new_empty(0, dtype=torch.int64)
        ctx.mark_non_differentiable(sum_sq, rows)
        # the counted rows are an output too: under torch.compile their data-dependent length must leave the function
        return token, sum_sq, rows

    @staticmethod
    def backward(ctx, grad_token: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, labels, lse, rows = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        plan = ctx.plan
        if plan.backend == "triton":
            grad_hidden, grad_weight, grad_bias = fused_linear_triton.linear_token_logps_backward(
                grad_token, hidden, weight, bias, labels, lse, rows, plan.chunk_tokens, plan.block, plan.num_warps,
                need_hidden, need_weight,
            )  # fmt: skip
        else:
            grad_hidden, grad_weight, grad_bias = _linear_token_logps_backward(
                grad_token, hidden, weight, bias, labels, lse, ctx.ignore_index, plan.chunk_tokens, need_hidden,
                need_weight,
            )  # fmt: skip
        return (
            grad_hidden if need_hidden else None,
            grad_weight if need_weight else None,
            grad_bias if need_bias else None,
            None,
            None,
            None,
            None,
        )


def _matmul_operands(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The operands in the dtype ``F.linear`` would multiply them in: autocast's where it is on for their device,
    else the head's (a float32 hidden state before a float16 or bfloat16 head, as a mixed-precision model's last norm
    may give, is cast to the head's dtype). The tiles follow that dtype; sums are in float32 whatever it is."""
    dtype = weight.dtype
    if torch.is_autocast_enabled(hidden.device.type) and dtype in (torch.float16, torch.bfloat16, torch.float32):
        dtype = torch.get_autocast_dtype(hidden.device.type)
    if bias is not None and bias.dtype != dtype:
        bias = bias.to(dtype)
    return hidden.to(dtype), weight.to(dtype), bias


def fused_linear_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_tokens: int | None = None,
    log_sum_sq_probs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token label log-probs (B, T) of ``hidden @ weight.T + bias``, 0 at ignored positions.

    The (B, T, V) logits never exist: see :func:`fused_linear_sequence_logps`. ``log_sum_sq_probs=True`` returns
    ``(log_probs, log_sum_sq)`` with each counted token's log sum_v p_v^2 (WPO's weights, arXiv 2406.11827 eq. 2) from
    the same pass, without gradient, 0 at ignored positions.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden: expected shape (B, T, H), got {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"weight: expected shape (V, {hidden.shape[2]}) to match hidden, got {tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias: expected shape ({weight.shape[0]},) to match weight, got {tuple(bias.shape)}")
    if labels.shape != hidden.shape[:2]:
        raise ValueError(f"labels: expected shape {tuple(hidden.shape[:2])} to match hidden, got {tuple(labels.shape)}")
    if chunk_tokens is not None and not (isinstance(chunk_tokens, int) and chunk_tokens >= 1):
        raise ValueError(f"chunk_tokens: expected an integer >= 1, got {chunk_tokens!r}")
    hidden, weight, bias = _matmul_operands(hidden, weight, bias)
    batch, seq_len, width = hidden.shape
    plan = fused_linear_plan(hidden.device, weight.dtype, width, weight.shape[0], batch * seq_len, chunk_tokens)
    if plan.backend == "torch" and chunk_tokens is None:
        plan = dataclasses.replace(plan, chunk_tokens=CHUNK_TOKENS)
    token, sum_sq, _ = LinearTokenLogps.apply(
        hidden.reshape(batch * seq_len, width),
        weight,
        bias,
        labels.reshape(-1),
        ignore_index,
        plan,
        log_sum_sq_probs,
    )
    if log_sum_sq_probs:
        return token.view(batch, seq_len), sum_sq.view(batch, seq_len)
    return token.view(batch, seq_len)


def fused_linear_sequence_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    average: bool = False,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Per-sequence sum (or mean) of label log-probs of ``hidden @ weight.T + bias``; (B,) float32.

    Same result as ``sequence_logps(hidden @ weight.T + bias, labels)`` without ever holding the (B, T, V) logits:
    only positions whose label is not ``ignore_index`` are projected, at most ``chunk_tokens`` at a time and one block
    of the vocabulary at a time, and the backward recomputes each tile. ``hidden`` (B, T, H) is aligned with
    ``labels`` (B, T); ``weight`` is the (V, H) lm_head. A row with every label ignored gives 0.
    """
    token = fused_linear_token_logps(
        hidden, weight, labels, bias=bias, ignore_index=ignore_index, chunk_tokens=chunk_tokens
    )
    return reduce_tokens(token, labels, ignore_index, average)
