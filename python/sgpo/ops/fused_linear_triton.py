"""The fused linear log-probs on the GPU: cuBLAS writes each (tokens x vocabulary block) tile of logits in the head's
dtype into one reused buffer, and one Triton pass per tile does everything else (``sgpo.kernels.fused_logps``).

Forward, vocabulary blocks outermost (each block of the head is read from memory once, whatever the token chunks):

    tile = hidden[rows] @ W[block].T (+ bias)            torch.mm into the reused tile, head's dtype
    fold(tile) -> running max, sum, label logit (+ WPO's sum of squares), float32, per counted row

Backward, the same loops: recompute the tile, overwrite it in place with ``g * (onehot - exp(z - lse))`` in the
head's dtype (its column sums go to the bias gradient), then

    grad_hidden[rows] += tile @ W[block]   (float32 accumulator),    grad_W[block] = tile.T @ hidden[rows]

by cuBLAS with float32 accumulation: a block of grad_W summed over several token chunks is accumulated in float32
and rounded once. The host waits twice per step: for the number of counted rows before the first tile (the rows are
kept for the backward), and for the labels' error flag after the last tile of the forward has been queued.

The same driver runs on CPU tensors with the Triton passes interpreted (``TRITON_INTERPRET=1``), which is how the
tests check it against the reference.
"""

from __future__ import annotations

import torch

from sgpo.ops.logps import valid_rows
from sgpo.reference import check_labels


def _kernels():
    from sgpo.kernels import fused_logps

    return fused_logps


def _logits_into(
    buffer: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, start: int, stop: int
) -> torch.Tensor:
    tile = buffer[: hidden.shape[0] * (stop - start)].view(hidden.shape[0], stop - start)
    if bias is None:
        return torch.mm(hidden, weight[start:stop].t(), out=tile)
    return torch.addmm(bias[start:stop], hidden, weight[start:stop].t(), out=tile)


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with float32 accumulation throughout, ``acc`` float32 and ``a``, ``b`` in the head's dtype."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif acc.is_cuda:
        # cuBLAS adds the product into the float32 accumulator before any rounding to the operands' dtype
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        # the CPU has no mixed-dtype addmm; this path exists for the interpreted tests
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def _buffer(n_tokens: int, block: int, weight: torch.Tensor) -> torch.Tensor:
    return torch.empty(max(n_tokens, 1) * block, dtype=weight.dtype, device=weight.device)


def forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_tokens: int,
    block: int,
    num_warps: int,
    with_sum_sq: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token log-probs, logsumexp, WPO's log sum p^2 or an empty tensor, counted rows) of (N, H) ``hidden``; the
    first three are (N,) float32 with 0 at ignored positions."""
    kernels = _kernels()
    vocab, device = weight.shape[0], hidden.device
    rows = valid_rows(labels, ignore_index)
    count = rows.numel()
    x, row_labels = hidden.index_select(0, rows), labels.index_select(0, rows).contiguous()
    running_max = torch.full((count,), -1e30, dtype=torch.float32, device=device)
    running_sum = torch.zeros(count, dtype=torch.float32, device=device)
    label_logit = torch.zeros(count, dtype=torch.float32, device=device)
    running_sq = torch.zeros(count, dtype=torch.float32, device=device) if with_sum_sq else None
    flag = torch.zeros(1, dtype=torch.int32, device=device)
    block = min(block, vocab)
    buffer = _buffer(min(chunk_tokens, count), block, weight)
    for start in range(0, vocab, block):
        stop = min(start + block, vocab)
        for first in range(0, count, chunk_tokens):
            last = min(first + chunk_tokens, count)
            tile = _logits_into(buffer, x[first:last], weight, bias, start, stop)
            kernels.fold_tile(
                tile,
                row_labels[first:last],
                start,
                vocab,
                running_max[first:last],
                running_sum[first:last],
                label_logit[first:last],
                None if running_sq is None else running_sq[first:last],
                flag,
                check_labels=start == 0,
                num_warps=num_warps,
            )
    if bool(flag.item()):
        check_labels(labels, vocab, ignore_index)
    log_sum = running_sum.log()
    row_lse = running_max + log_sum
    token = torch.zeros(labels.shape, dtype=torch.float32, device=device).index_copy_(0, rows, label_logit - row_lse)
    lse = torch.zeros(labels.shape, dtype=torch.float32, device=device).index_copy_(0, rows, row_lse)
    sum_sq = torch.zeros(labels.shape if with_sum_sq else 0, dtype=torch.float32, device=device)
    if with_sum_sq:
        # log sum_v p_v^2 = log sum_v exp(2 (z_v - m)) - 2 log sum_v exp(z_v - m)
        sum_sq.index_copy_(0, rows, running_sq.log() - 2 * log_sum)
    return token, lse, sum_sq, rows


def backward(
    grad_token: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    lse: torch.Tensor,
    rows: torch.Tensor,
    chunk_tokens: int,
    block: int,
    num_warps: int,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_hidden, grad_weight, grad_bias), each an empty tensor where not asked for, from the forward's ``rows``."""
    kernels = _kernels()
    vocab, width = weight.shape
    count, device = rows.numel(), hidden.device
    x, row_labels = hidden.index_select(0, rows), labels.index_select(0, rows).contiguous()
    row_lse = lse.index_select(0, rows).float()
    row_grad = grad_token.index_select(0, rows).float()
    chunks = [(first, min(first + chunk_tokens, count)) for first in range(0, count, chunk_tokens)]
    block = min(block, vocab)
    buffer = _buffer(min(chunk_tokens, count), block, weight)
    grad_rows = torch.zeros(count, width, dtype=torch.float32, device=device) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=weight.dtype, device=device) if need_weight else None
    grad_bias = torch.zeros(vocab, dtype=torch.float32, device=device) if bias is not None else None
    # One block's float32 sum of grad_W where several chunks add into it and the head is in low precision.
    block_sum = None
    if need_weight and len(chunks) > 1 and weight.dtype != torch.float32:
        block_sum = torch.empty(block, width, dtype=torch.float32, device=device)
    for start in range(0, vocab, block):
        stop = min(start + block, vocab)
        if block_sum is not None:
            block_sum.zero_()
        for first, last in chunks:
            tile = _logits_into(buffer, x[first:last], weight, bias, start, stop)
            kernels.grad_tile(
                tile, row_labels[first:last], start, row_lse[first:last], row_grad[first:last], grad_bias, num_warps
            )
            if need_hidden:
                _accumulate(grad_rows[first:last], tile, weight[start:stop])
            if need_weight:
                if block_sum is not None:
                    _accumulate(block_sum[: stop - start], tile.t(), x[first:last])
                elif len(chunks) == 1:
                    torch.mm(tile.t(), x[first:last], out=grad_weight[start:stop])
                else:
                    grad_weight[start:stop].addmm_(tile.t(), x[first:last])
        if block_sum is not None:
            grad_weight[start:stop].copy_(block_sum[: stop - start])
    empty = weight.new_empty(0)
    grad_hidden = empty
    if need_hidden:
        grad_hidden = torch.zeros_like(hidden).index_copy_(0, rows, grad_rows.to(hidden.dtype))
    return (
        grad_hidden,
        grad_weight if need_weight else empty,
        grad_bias.to(bias.dtype) if bias is not None else empty,
    )


@torch.library.custom_op("sgpo::linear_token_logps_triton", mutates_args=())
def linear_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_tokens: int,
    block: int,
    num_warps: int,
    with_sum_sq: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return forward(hidden, weight, bias, labels, ignore_index, chunk_tokens, block, num_warps, with_sum_sq)


@linear_token_logps.register_fake
def _(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_tokens: int,
    block: int,
    num_warps: int,
    with_sum_sq: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # how many rows count is known only from the labels' values
    n_rows = torch.library.get_ctx().new_dynamic_size()
    vector = hidden.new_empty(labels.shape, dtype=torch.float32)
    sum_sq = hidden.new_empty(labels.shape if with_sum_sq else 0, dtype=torch.float32)
    return vector, torch.empty_like(vector), sum_sq, hidden.new_empty(n_rows, dtype=torch.int64)


@torch.library.custom_op("sgpo::linear_token_logps_triton_backward", mutates_args=())
def linear_token_logps_backward(
    grad_token: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    lse: torch.Tensor,
    rows: torch.Tensor,
    chunk_tokens: int,
    block: int,
    num_warps: int,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return backward(
        grad_token, hidden, weight, bias, labels, lse, rows, chunk_tokens, block, num_warps, need_hidden, need_weight
    )


@linear_token_logps_backward.register_fake
def _(
    grad_token: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    lse: torch.Tensor,
    rows: torch.Tensor,
    chunk_tokens: int,
    block: int,
    num_warps: int,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.empty_like(hidden) if need_hidden else weight.new_empty(0),
        torch.empty_like(weight) if need_weight else weight.new_empty(0),
        torch.empty_like(bias) if bias is not None else weight.new_empty(0),
    )
