"""Per-sequence label log-probs without a float32 (B, T, V) temporary: from logits, and fused with the lm_head.

Both ops work per token and keep only the per-token logsumexp for the backward, which recomputes the softmax. The
kernels are registered with ``torch.library.custom_op`` (shapes via ``register_fake``) so ``torch.compile`` traces a
training step through them; label validation and the selection of non-ignored rows happen inside the ops, where their
data-dependent shapes stay out of the traced graph. Each op runs either the Triton kernels (``sgpo.kernels.logps``) or
the chunked PyTorch code below, which follows the same two formulas:

    log p(label) = logit[label] - logsumexp(logit),   d log p(label) / d logit = onehot(label) - softmax(logit).
"""

from __future__ import annotations

import torch

from sgpo.ops.dispatch import choose_backend
from sgpo.reference import check_labels, compute_dtype

# Rows per chunk of the PyTorch path from logits: about 16 MB of float32 per chunk, so the working set stays in cache.
_LOGITS_CHUNK_ELEMENTS = 1 << 22
# Tokens per chunk of the fused linear path: large enough for efficient matmuls against a (V, H) head, small enough
# that the (chunk, V) logits stay a fraction of what the unfused logits take (tuned in benchmarks/bench_losses.py).
FUSED_CHUNK_TOKENS = 1024


def _rows_per_chunk(n_cols: int) -> int:
    return max(1, _LOGITS_CHUNK_ELEMENTS // max(n_cols, 1))


def _valid_rows(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return (labels.reshape(-1) != ignore_index).nonzero().squeeze(1)


def _chunk_logps_(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(label), logsumexp) of each row of ``x`` (C, V), which is overwritten."""
    target = x.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    row_max = x.amax(1, keepdim=True)
    lse = x.sub_(row_max).exp_().sum(1).log_().add_(row_max.squeeze(1))
    return target - lse, lse


def _chunk_grad_(x: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Overwrite ``x`` (C, V) with ``grad * (onehot(label) - softmax(x))`` and return it."""
    x.sub_(lse.unsqueeze(1)).exp_().mul_(-grad.unsqueeze(1))
    return x.scatter_add_(1, labels.long().unsqueeze(1), grad.unsqueeze(1))


def _triton_logps():
    from sgpo.kernels import logps

    return logps


# ---------------------------------------------------------------------------------------------------------------------
# From logits


@torch.library.custom_op("sgpo::token_logps", mutates_args=())
def _token_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    check_labels(labels, logits.shape[-1], ignore_index)
    if backend == "triton":
        return _triton_logps().token_logps_forward(logits, labels, ignore_index)
    dtype = compute_dtype(logits)
    token = torch.zeros(labels.shape, dtype=dtype, device=logits.device)
    lse = torch.zeros(labels.shape, dtype=dtype, device=logits.device)
    flat_token, flat_lse = token.view(-1), lse.view(-1)
    rows = _valid_rows(labels, ignore_index)
    seq_len, step = labels.shape[1], _rows_per_chunk(logits.shape[-1])
    for start in range(0, rows.numel(), step):
        chunk = rows[start : start + step]
        b, t = chunk // seq_len, chunk % seq_len
        chunk_token, chunk_lse = _chunk_logps_(logits[b, t].to(dtype), labels[b, t])
        flat_token[chunk], flat_lse[chunk] = chunk_token, chunk_lse
    return token, lse


@_token_logps.register_fake
def _(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = torch.float32 if backend == "triton" else compute_dtype(logits)
    return logits.new_empty(labels.shape, dtype=dtype), logits.new_empty(labels.shape, dtype=dtype)


def _token_logps_grad_into(
    out: torch.Tensor,
    grad_token: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    backend: str,
) -> None:
    if backend == "triton" and out.stride(-1) == 1:
        _triton_logps().token_logps_backward(grad_token, logits, labels, lse, ignore_index, out)
        return
    dtype = lse.dtype
    rows = _valid_rows(labels, ignore_index)
    seq_len, step = labels.shape[1], _rows_per_chunk(logits.shape[-1])
    flat_grad, flat_lse = grad_token.reshape(-1).to(dtype), lse.reshape(-1)
    for start in range(0, rows.numel(), step):
        chunk = rows[start : start + step]
        b, t = chunk // seq_len, chunk % seq_len
        grad = _chunk_grad_(logits[b, t].to(dtype), labels[b, t], flat_lse[chunk], flat_grad[chunk])
        out[b, t] = grad.to(out.dtype)


@torch.library.custom_op("sgpo::token_logps_backward", mutates_args=())
def _token_logps_backward(
    grad_token: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    backend: str,
) -> torch.Tensor:
    out = torch.zeros_like(logits, memory_format=torch.contiguous_format)
    _token_logps_grad_into(out, grad_token, logits, labels, lse, ignore_index, backend)
    return out


@_token_logps_backward.register_fake
def _(
    grad_token: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    backend: str,
) -> torch.Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.custom_op("sgpo::token_logps_backward_", mutates_args=("logits",))
def _token_logps_backward_inplace(
    grad_token: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    backend: str,
) -> None:
    _token_logps_grad_into(logits, grad_token, logits, labels, lse, ignore_index, backend)
    logits[(labels == ignore_index).nonzero(as_tuple=True)] = 0


class TokenLogps(torch.autograd.Function):
    """(B, T, V) logits -> (B, T) log p(label) (0 at ignored positions), keeping only the logsumexp for backward."""

    @staticmethod
    def forward(
        ctx, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, backend: str, inplace_backward: bool
    ) -> torch.Tensor:
        token, lse = _token_logps(logits, labels, ignore_index, backend)
        ctx.save_for_backward(logits, labels, lse)
        ctx.ignore_index, ctx.backend, ctx.inplace_backward = ignore_index, backend, inplace_backward
        return token

    @staticmethod
    def backward(ctx, grad_token: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, labels, lse = ctx.saved_tensors
        if ctx.inplace_backward:
            _token_logps_backward_inplace(grad_token, logits, labels, lse, ctx.ignore_index, ctx.backend)
            grad = logits
        else:
            grad = _token_logps_backward(grad_token, logits, labels, lse, ctx.ignore_index, ctx.backend)
        return grad, None, None, None, None


def _reduce(token: torch.Tensor, labels: torch.Tensor, ignore_index: int, average: bool) -> torch.Tensor:
    total = token.sum(-1)
    if average:
        total = total / (labels != ignore_index).sum(-1).clamp(min=1).to(total.dtype)
    return total


def _check_labels_shape(labels: torch.Tensor, expected: torch.Size, what: str) -> None:
    if labels.shape != expected:
        raise ValueError(f"labels: expected shape {tuple(expected)} to match {what}, got {tuple(labels.shape)}")


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    average: bool = False,
    inplace_backward: bool = False,
) -> torch.Tensor:
    """Per-sequence sum (or mean, ``average=True``) of label log-probs; (B,) float32 (float64 for float64 logits).

    ``logits`` (B, T, V) are already aligned with ``labels`` (B, T); positions labelled ``ignore_index`` do not count,
    and a row with every label ignored gives 0. No float32 copy of the logits is made: the forward keeps one logsumexp
    per token. ``inplace_backward=True`` writes the gradient over ``logits`` instead of allocating a new (B, T, V)
    tensor; use it only when nothing else reads the logits afterwards (no other loss on them, no op whose backward
    needs them, such as a softcap's tanh).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits: expected shape (B, T, V), got {tuple(logits.shape)}")
    _check_labels_shape(labels, logits.shape[:2], "logits")
    token = TokenLogps.apply(
        logits, labels, ignore_index, choose_backend(logits.device, logits.dtype), inplace_backward
    )
    return _reduce(token, labels, ignore_index, average)


# ---------------------------------------------------------------------------------------------------------------------
# Fused with the lm_head


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.mm(hidden, weight.t()) if bias is None else torch.addmm(bias, hidden, weight.t())


@torch.library.custom_op("sgpo::linear_token_logps", mutates_args=())
def _linear_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_tokens: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_labels(labels, weight.shape[0], ignore_index)
    dtype = torch.float32 if backend == "triton" else compute_dtype(hidden, weight)
    token = torch.zeros(labels.shape, dtype=dtype, device=hidden.device)
    lse = torch.zeros(labels.shape, dtype=dtype, device=hidden.device)
    rows = _valid_rows(labels, ignore_index)
    for start in range(0, rows.numel(), chunk_tokens):
        chunk = rows[start : start + chunk_tokens]
        logits = _chunk_logits(hidden.index_select(0, chunk), weight, bias)
        chunk_labels = labels.index_select(0, chunk)
        if backend == "triton":
            chunk_token, chunk_lse = _triton_logps().token_logps_forward(
                logits.unsqueeze(0), chunk_labels.unsqueeze(0), ignore_index
            )
            chunk_token, chunk_lse = chunk_token.squeeze(0), chunk_lse.squeeze(0)
        else:
            chunk_token, chunk_lse = _chunk_logps_(logits.to(dtype), chunk_labels)
        token[chunk], lse[chunk] = chunk_token, chunk_lse
    return token, lse


@_linear_token_logps.register_fake
def _(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_tokens: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = torch.float32 if backend == "triton" else compute_dtype(hidden, weight)
    return hidden.new_empty(labels.shape, dtype=dtype), hidden.new_empty(labels.shape, dtype=dtype)


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
    backend: str,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    need_bias = bias is not None
    # A low-precision head accumulates its gradient over chunks in float32, then rounds once, as one matmul would.
    acc_dtype = torch.promote_types(weight.dtype, torch.float32)
    grad_hidden = torch.zeros_like(hidden) if need_hidden else hidden.new_empty(0)
    grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(weight.shape[0], dtype=acc_dtype, device=weight.device) if need_bias else None
    rows = _valid_rows(labels, ignore_index)
    for start in range(0, rows.numel(), chunk_tokens):
        chunk = rows[start : start + chunk_tokens]
        chunk_hidden = hidden.index_select(0, chunk)
        logits = _chunk_logits(chunk_hidden, weight, bias)
        chunk_labels, chunk_lse = labels.index_select(0, chunk), lse.index_select(0, chunk)
        chunk_grad = grad_token.index_select(0, chunk)
        if backend == "triton":
            _triton_logps().token_logps_backward(
                chunk_grad.unsqueeze(0),
                logits.unsqueeze(0),
                chunk_labels.unsqueeze(0),
                chunk_lse.unsqueeze(0),
                ignore_index,
                logits.unsqueeze(0),
            )
            grad_logits = logits
        else:
            grad_logits = _chunk_grad_(logits.to(lse.dtype), chunk_labels, chunk_lse, chunk_grad.to(lse.dtype))
        if need_bias:
            grad_bias += grad_logits.sum(0, dtype=acc_dtype)
        grad_logits = grad_logits.to(weight.dtype)
        if need_hidden:
            grad_hidden.index_copy_(0, chunk, torch.mm(grad_logits, weight))
        if need_weight:
            if grad_weight.dtype == weight.dtype:
                grad_weight.addmm_(grad_logits.t(), chunk_hidden)
            else:
                grad_weight += torch.mm(grad_logits.t(), chunk_hidden)
    empty = weight.new_empty(0)
    return (
        grad_hidden,
        grad_weight.to(weight.dtype) if need_weight else empty,
        grad_bias.to(bias.dtype) if need_bias else empty,
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
    backend: str,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    empty = weight.new_empty(0)
    return (
        torch.empty_like(hidden) if need_hidden else hidden.new_empty(0),
        torch.empty_like(weight) if need_weight else empty,
        torch.empty_like(bias) if bias is not None else empty,
    )


class LinearTokenLogps(torch.autograd.Function):
    """(N, H) hidden states and a (V, H) head -> (N,) log p(label), projecting only the non-ignored rows, a chunk of
    tokens at a time; the backward recomputes each chunk's logits and accumulates grad_hidden and grad_weight."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        ignore_index: int,
        chunk_tokens: int,
        backend: str,
    ) -> torch.Tensor:
        token, lse = _linear_token_logps(hidden, weight, bias, labels, ignore_index, chunk_tokens, backend)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.ignore_index, ctx.chunk_tokens, ctx.backend = ignore_index, chunk_tokens, backend
        return token

    @staticmethod
    def backward(ctx, grad_token: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden, grad_weight, grad_bias = _linear_token_logps_backward(
            grad_token,
            hidden,
            weight,
            bias,
            labels,
            lse,
            ctx.ignore_index,
            ctx.chunk_tokens,
            ctx.backend,
            need_hidden,
            need_weight,
        )
        return (
            grad_hidden if need_hidden else None,
            grad_weight if need_weight else None,
            grad_bias if need_bias else None,
            None,
            None,
            None,
            None,
        )


def fused_linear_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Per-token label log-probs (B, T) of ``hidden @ weight.T + bias``, 0 at ignored positions.

    The (B, T, V) logits never exist: see :func:`fused_linear_sequence_logps`.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden: expected shape (B, T, H), got {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"weight: expected shape (V, {hidden.shape[2]}) to match hidden, got {tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias: expected shape ({weight.shape[0]},) to match weight, got {tuple(bias.shape)}")
    _check_labels_shape(labels, hidden.shape[:2], "hidden")
    if chunk_tokens is None:
        chunk_tokens = FUSED_CHUNK_TOKENS
    elif chunk_tokens < 1:
        raise ValueError(f"chunk_tokens: expected an integer >= 1, got {chunk_tokens!r}")
    batch, seq_len, width = hidden.shape
    token = LinearTokenLogps.apply(
        hidden.reshape(batch * seq_len, width),
        weight,
        bias,
        labels.reshape(-1),
        ignore_index,
        chunk_tokens,
        choose_backend(hidden.device, compute_dtype(hidden, weight)),
    )
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
    only positions whose label is not ``ignore_index`` are projected, ``chunk_tokens`` at a time, and the backward
    recomputes each chunk. ``hidden`` (B, T, H) is aligned with ``labels`` (B, T); ``weight`` is the (V, H) lm_head.
    """
    token = fused_linear_token_logps(
        hidden, weight, labels, bias=bias, ignore_index=ignore_index, chunk_tokens=chunk_tokens
    )
    return _reduce(token, labels, ignore_index, average)
