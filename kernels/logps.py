"""Triton kernels for per-token label log-probs: one program per token row, online logsumexp over vocabulary blocks.

The forward keeps only the per-token logsumexp; the backward recomputes the softmax from it, one row at a time, and can
write the gradient over the logits themselves. Every load is upcast to float32 before arithmetic (bf16 math is not
exact under the interpreter, and fp32 accumulation is what the reference does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _token_logps_fwd_kernel(
    logits_ptr,
    labels_ptr,
    token_ptr,
    lse_ptr,
    seq_len,
    stride_b,
    stride_t,
    n_cols,
    ignore_index,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row).to(tl.int64)
    valid = label != ignore_index
    # An ignored row reads nothing: its loop runs zero times.
    n_active = tl.where(valid, n_cols, 0)
    base = logits_ptr + (row // seq_len) * stride_b + (row % seq_len) * stride_t
    # Masked lanes and the running maximum start at -1e30 rather than -inf so a block whose logits are all -inf (a
    # banned token range) gives exp(-inf + 1e30) = 0 instead of exp(-inf + inf) = NaN.
    running_max = -1e30
    running_sum = 0.0
    for start in range(0, n_active, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + offs, mask=offs < n_cols, other=-1e30).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        running_max = new_max
    target = tl.load(base + tl.where(valid, label, 0), mask=valid, other=0.0).to(tl.float32)
    lse = tl.where(valid, running_max + tl.log(tl.where(valid, running_sum, 1.0)), 0.0)
    tl.store(lse_ptr + row, lse)
    tl.store(token_ptr + row, tl.where(valid, target - lse, 0.0))


@triton.jit
def _token_logps_bwd_kernel(
    logits_ptr,
    out_ptr,
    labels_ptr,
    lse_ptr,
    grad_token_ptr,
    seq_len,
    stride_b,
    stride_t,
    out_stride_b,
    out_stride_t,
    n_cols,
    ignore_index,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row).to(tl.int64)
    valid = label != ignore_index
    grad = tl.where(valid, tl.load(grad_token_ptr + row).to(tl.float32), 0.0)
    lse = tl.load(lse_ptr + row)
    b, t = row // seq_len, row % seq_len
    base = logits_ptr + b * stride_b + t * stride_t
    out = out_ptr + b * out_stride_b + t * out_stride_t
    for start in range(0, n_cols, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        in_row = offs < n_cols
        x = tl.load(base + offs, mask=in_row, other=0.0).to(tl.float32)
        # d log p(label) / d logit_v = 1[v = label] - softmax_v; ignored rows get exact zeros.
        prob = tl.where(valid, tl.exp(x - lse), 0.0)
        dx = grad * (tl.where(offs == label, 1.0, 0.0) - prob)
        tl.store(out + offs, dx.to(out_ptr.dtype.element_ty), mask=in_row)


def launch_block_v(n_cols: int) -> int:
    """The vocabulary block both logps kernels launch with for a vocabulary of ``n_cols``.

    A pure function of the vocabulary so that the ahead-of-time compile check (``benchmarks/kernel_resources.py``)
    compiles the blocks real launches use. Capped at 4096 (16 values per thread at 8 warps), which bounds the
    registers a block needs whatever the vocabulary.
    """
    if n_cols < 1:
        raise ValueError(f"n_cols: expected a vocabulary size >= 1, got {n_cols}")
    return min(triton.next_power_of_2(n_cols), 4096)


def _block_v(n_cols: int, block_v: int | None) -> int:
    return block_v if block_v is not None else launch_block_v(n_cols)


def _unit_vocab_stride(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.stride(-1) == 1 else logits.contiguous()


def token_logps_forward(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, block_v: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits`` (B, T, V) (any batch/time strides), ``labels`` (B, T) already validated -> (log p(label), logsumexp),
    both (B, T) float32 and 0 where the label is ``ignore_index``."""
    logits = _unit_vocab_stride(logits)
    labels = labels.contiguous()
    batch, seq_len, n_cols = logits.shape
    token = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    lse = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    if labels.numel():
        _token_logps_fwd_kernel[(labels.numel(),)](
            logits,
            labels,
            token,
            lse,
            seq_len,
            logits.stride(0),
            logits.stride(1),
            n_cols,
            ignore_index,
            BLOCK_V=_block_v(n_cols, block_v),
            num_warps=8,
        )
    return token, lse


def token_logps_backward(
    grad_token: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    out: torch.Tensor,
    block_v: int | None = None,
) -> None:
    """Write ``grad_token * (onehot(label) - softmax(logits))`` row by row into ``out`` (B, T, V), which may be
    ``logits`` itself; rows whose label is ``ignore_index`` get zeros."""
    if logits.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("logits: the Triton backward needs a unit stride along the vocabulary")
    labels, lse, grad_token = labels.contiguous(), lse.contiguous(), grad_token.contiguous()
    batch, seq_len, n_cols = logits.shape
    if labels.numel():
        _token_logps_bwd_kernel[(labels.numel(),)](
            logits,
            out,
            labels,
            lse,
            grad_token,
            seq_len,
            logits.stride(0),
            logits.stride(1),
            out.stride(0),
            out.stride(1),
            n_cols,
            ignore_index,
            BLOCK_V=_block_v(n_cols, block_v),
            num_warps=8,
        )
