"""Per-sequence label log-probs from (B, T, V) logits without a float32 (B, T, V) temporary.

The op works per token and keeps only the per-token logsumexp for the backward, which recomputes the softmax:

    log p(label) = logit[label] - logsumexp(logit),   d log p(label) / d logit = onehot(label) - softmax(logit).

The kernels are registered with ``torch.library.custom_op`` (shapes via ``register_fake``) so ``torch.compile`` traces a
training step through them; label validation and the selection of non-ignored rows happen inside the ops, where their
data-dependent shapes stay out of the traced graph. Each op runs either the Triton kernels (``sgpo.kernels.logps``) or
the chunked PyTorch code below, which visits only non-ignored rows, a cache-sized chunk at a time.
"""

from __future__ import annotations

import torch

from sgpo.ops.dispatch import choose_backend
from sgpo.reference import check_labels, compute_dtype

# Rows per chunk of the PyTorch path: about 16 MB of float32, so each chunk's softmax runs from cache.
_CHUNK_ELEMENTS = 1 << 22


def _rows_per_chunk(n_cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(n_cols, 1))


def valid_rows(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Flat indices of the positions whose label counts."""
    return (labels.reshape(-1) != ignore_index).nonzero().squeeze(1)


def _triton_logps():
    from sgpo.kernels import logps

    return logps


# ---------------------------------------------------------------------------------------------------------------------
# From logits


def _spans(labels: torch.Tensor, ignore_index: int, step: int) -> list[tuple[int, int, int]]:
    """(b, start, stop): runs of at most ``step`` positions of sequence b, from its first to its last counted label."""
    spans = []
    for b, row in enumerate(labels != ignore_index):
        counted = row.nonzero()
        if counted.numel():
            first, last = int(counted[0]), int(counted[-1]) + 1
            spans.extend((b, start, min(start + step, last)) for start in range(first, last, step))
    return spans


@torch.library.custom_op("sgpo::token_logps", mutates_args=())
def _token_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    check_labels(labels, logits.shape[-1], ignore_index)
    if backend == "triton":
        return _triton_logps().token_logps_forward(logits, labels, ignore_index)
    dtype, vocab = compute_dtype(logits), logits.shape[-1]
    token = torch.zeros(labels.shape, dtype=dtype, device=logits.device)
    lse = torch.zeros(labels.shape, dtype=dtype, device=logits.device)
    step = _rows_per_chunk(vocab)
    # One reused buffer: a fresh large allocation per chunk would page-fault on every chunk.
    buffer = torch.empty(step * vocab, dtype=dtype, device=logits.device)
    for b, start, stop in _spans(labels, ignore_index, step):
        x, chunk_labels = logits[b, start:stop], labels[b, start:stop]
        counted = chunk_labels != ignore_index
        index = torch.where(counted, chunk_labels, 0).long().unsqueeze(1)
        label_logit = x.gather(1, index).squeeze(1).to(dtype)
        work = buffer[: x.numel()].view(x.shape)
        if x.dtype != dtype:
            x = work.copy_(x)
        # The fused log_softmax kernel runs each row from cache, several times faster than elementwise passes.
        chunk_token = torch.ops.aten._log_softmax.out(x, 1, False, out=work).gather(1, index).squeeze(1)
        token[b, start:stop] = torch.where(counted, chunk_token, 0)
        lse[b, start:stop] = torch.where(counted, label_logit - chunk_token, 0)
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
    """Write the gradient into every row of ``out`` (zeros where the label is ignored); ``out`` may be ``logits``."""
    if backend == "triton" and out.stride(-1) == 1 and logits.stride(-1) == 1:
        _triton_logps().token_logps_backward(grad_token, logits, labels, lse, ignore_index, out)
        return
    dtype, vocab = lse.dtype, logits.shape[-1]
    step = _rows_per_chunk(vocab)
    buffer = torch.empty(step * vocab, dtype=dtype, device=logits.device)
    spans = _spans(labels, ignore_index, step)
    covered = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for b, start, stop in spans:
        covered[b, start:stop] = True
        x, chunk_labels = logits[b, start:stop], labels[b, start:stop]
        counted = chunk_labels != ignore_index
        grad = torch.where(counted, grad_token[b, start:stop].to(dtype), 0).unsqueeze(1)
        target = out[b, start:stop]
        direct = target.dtype == dtype and target.is_contiguous() and x.dtype == dtype
        work = target if direct else buffer[: x.numel()].view(x.shape)
        if x.dtype != dtype:
            x = work.copy_(x)
        # softmax(x) = exp(x - logsumexp), from the fused kernel as in the forward; written straight into the output.
        torch.ops.aten._softmax.out(x, 1, False, out=work).mul_(-grad)
        work.scatter_add_(1, torch.where(counted, chunk_labels, 0).long().unsqueeze(1), grad)
        if not direct:
            target.copy_(work)
    out[(~covered).nonzero(as_tuple=True)] = 0


@torch.library.custom_op("sgpo::token_logps_backward", mutates_args=())
def _token_logps_backward(
    grad_token: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    backend: str,
) -> torch.Tensor:
    out = torch.empty_like(logits, memory_format=torch.contiguous_format)
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


def reduce_tokens(token: torch.Tensor, labels: torch.Tensor, ignore_index: int, average: bool) -> torch.Tensor:
    """Per-sequence sum, or mean over counted positions (0 for a row with none), of per-token log-probs."""
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
    return reduce_tokens(token, labels, ignore_index, average)
