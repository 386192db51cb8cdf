"""Triton passes over one (tokens x vocabulary block) tile of logits that cuBLAS has just written, for the fused
linear log-probs (``sgpo.ops.fused_linear_triton`` drives them).

Forward, one program per token row: fold the tile into the row's float32 running max and sum (online logsumexp),
pick the label's logit when the label falls in this block, and optionally carry WPO's sum_v exp(2 (z_v - max)).
The first block also checks the label against the vocabulary and raises an error flag instead of a host sync.

Backward, one program per (rows x columns) sub-tile: overwrite the tile in place with
``g * (onehot(label) - exp(z - lse))`` in the tile's dtype, ready for the two cuBLAS products, and add its column
sums to the float32 bias gradient.

Loads are upcast to float32 before arithmetic: that is what the sums need, and bf16 arithmetic is not exact under
the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _fold_tile_kernel(
    tile_ptr,
    stride_row,
    width,
    labels_ptr,
    start,
    vocab,
    max_ptr,
    sum_ptr,
    label_logit_ptr,
    sum_sq_ptr,
    flag_ptr,
    BLOCK_V: tl.constexpr,
    WITH_SUM_SQ: tl.constexpr,
    CHECK_LABELS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = tile_ptr + row * stride_row
    label = tl.load(labels_ptr + row).to(tl.int64)
    if CHECK_LABELS:
        # Rows reaching this kernel are the counted ones: any label outside the vocabulary is an error.
        bad = (label < 0) | (label >= vocab)
        tl.store(flag_ptr, 1, mask=bad)
    running_max = tl.load(max_ptr + row)
    running_sum = tl.load(sum_ptr + row)
    running_sq = 0.0
    if WITH_SUM_SQ:
        running_sq = tl.load(sum_sq_ptr + row)
    for offset in range(0, width, BLOCK_V):
        offs = offset + tl.arange(0, BLOCK_V)
        # -1e30 rather than -inf for masked lanes, so a block of banned (-inf) logits gives exp(-inf + 1e30) = 0, not
        # NaN; set after the upcast, as a half-precision tile cannot hold it.
        in_tile = offs < width
        z = tl.where(in_tile, tl.load(base + offs, mask=in_tile, other=0.0).to(tl.float32), -1e30)
        new_max = tl.maximum(running_max, tl.max(z, axis=0))
        rescale = tl.exp(running_max - new_max)
        exps = tl.exp(z - new_max)
        running_sum = running_sum * rescale + tl.sum(exps, axis=0)
        if WITH_SUM_SQ:
            running_sq = running_sq * rescale * rescale + tl.sum(exps * exps, axis=0)
        running_max = new_max
    tl.store(max_ptr + row, running_max)
    tl.store(sum_ptr + row, running_sum)
    if WITH_SUM_SQ:
        tl.store(sum_sq_ptr + row, running_sq)
    column = label - start
    inside = (column >= 0) & (column < width)
    picked = tl.load(base + tl.where(inside, column, 0), mask=inside, other=0.0).to(tl.float32)
    tl.store(label_logit_ptr + row, picked, mask=inside)


@triton.jit
def _grad_tile_kernel(
    tile_ptr,
    stride_row,
    n_rows,
    width,
    labels_ptr,
    start,
    lse_ptr,
    grad_ptr,
    grad_bias_ptr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_in = rows < n_rows
    col_in = cols < width
    label = tl.load(labels_ptr + rows, mask=row_in, other=-1).to(tl.int64)
    lse = tl.load(lse_ptr + rows, mask=row_in, other=0.0)
    grad = tl.load(grad_ptr + rows, mask=row_in, other=0.0)
    inside = row_in[:, None] & col_in[None, :]
    ptrs = tile_ptr + rows.to(tl.int64)[:, None] * stride_row + cols[None, :]
    z = tl.load(ptrs, mask=inside, other=0.0).to(tl.float32)
    # d log p(label) / d z_v = 1[v = label] - softmax_v
    onehot = (label - start)[:, None] == cols[None, :]
    dz = grad[:, None] * (tl.where(onehot, 1.0, 0.0) - tl.exp(z - lse[:, None]))
    dz = tl.where(inside, dz, 0.0)
    tl.store(ptrs, dz.to(tile_ptr.dtype.element_ty), mask=inside)
    if HAS_BIAS:
        tl.atomic_add(grad_bias_ptr + start + cols, tl.sum(dz, axis=0), mask=col_in)


def fold_block_v(width: int) -> int:
    """The column block of the forward pass over a tile ``width`` wide: at most 4,096 (16 values per thread at
    8 warps), which bounds the registers whatever the tile."""
    if width < 1:
        raise ValueError(f"width: expected a tile width >= 1, got {width}")
    return min(triton.next_power_of_2(width), 4096)


def fold_tile(
    tile: torch.Tensor,
    labels: torch.Tensor,
    start: int,
    vocab: int,
    running_max: torch.Tensor,
    running_sum: torch.Tensor,
    label_logit: torch.Tensor,
    running_sq: torch.Tensor | None,
    flag: torch.Tensor,
    check_labels: bool,
    num_warps: int = 8,
) -> None:
    """Fold ``tile`` (rows x width, unit column stride), the logits of vocabulary ``[start, start + width)``, into the
    float32 per-row state, in place. ``labels`` are the rows' labels (none ignored); ``flag`` (int32, one element)
    becomes 1 when ``check_labels`` and some label lies outside ``[0, vocab)``."""
    if tile.stride(1) != 1:
        raise ValueError(f"tile: expected a unit column stride, got strides {tuple(tile.stride())}")
    n_rows, width = tile.shape
    if n_rows == 0:
        return
    with_sum_sq = running_sq is not None
    _fold_tile_kernel[(n_rows,)](
        tile,
        tile.stride(0),
        width,
        labels,
        start,
        vocab,
        running_max,
        running_sum,
        label_logit,
        running_sq if with_sum_sq else running_sum,
        flag,
        BLOCK_V=fold_block_v(width),
        WITH_SUM_SQ=with_sum_sq,
        CHECK_LABELS=check_labels,
        num_warps=num_warps,
    )


def grad_blocks(num_warps: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of the backward pass: 16 values per thread, the columns a multiple of a 128-byte line."""
    return 16, 32 * num_warps


def grad_tile(
    tile: torch.Tensor,
    labels: torch.Tensor,
    start: int,
    lse: torch.Tensor,
    grad: torch.Tensor,
    grad_bias: torch.Tensor | None,
    num_warps: int = 4,
) -> None:
    """Overwrite ``tile`` (the logits of vocabulary ``[start, start + width)``) with ``grad * (onehot(label) -
    exp(tile - lse))`` per row, in the tile's dtype; add its column sums to ``grad_bias[start:]`` (float32) if given.
    ``lse`` and ``grad`` are float32 per row."""
    if tile.stride(1) != 1:
        raise ValueError(f"tile: expected a unit column stride, got strides {tuple(tile.stride())}")
    n_rows, width = tile.shape
    if n_rows == 0:
        return
    block_m, block_n = grad_blocks(num_warps)
    grid = (triton.cdiv(n_rows, block_m), triton.cdiv(width, block_n))
    _grad_tile_kernel[grid](
        tile,
        tile.stride(0),
        n_rows,
        width,
        labels,
        start,
        lse,
        grad,
        grad_bias if grad_bias is not None else lse,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        HAS_BIAS=grad_bias is not None,
        num_warps=num_warps,
    )
