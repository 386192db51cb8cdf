"""Per-pair preference losses (DESIGN 1.1): the fused Triton kernel on GPU, the reference formulas elsewhere.

The Triton path is one ``torch.library.custom_op`` (with ``register_fake`` for ``torch.compile``) that returns each
pair's loss and its derivatives with respect to the chosen and rejected log-probs; the autograd Function on top turns
them into gradients. The PyTorch path is :func:`sgpo.reference.preference_losses_reference` itself, under autograd.
"""

from __future__ import annotations

from typing import Any

import torch

from sgpo.ops.dispatch import choose_backend
from sgpo.reference import (
    PreferenceLosses,
    _vector,
    _worst_case_tensors,
    compute_dtype,
    preference_losses_reference,
    validate_preference_args,
)


def _check_values(
    chosen_win_prob: torch.Tensor | None,
    rejected_win_prob: torch.Tensor | None,
    pair_weights: torch.Tensor | None,
    chosen_lengths: torch.Tensor | None,
    rejected_lengths: torch.Tensor | None,
) -> None:
    """The reference's checks on values, which need the data (and on GPU a device sync)."""
    for name, p in (("chosen_win_prob", chosen_win_prob), ("rejected_win_prob", rejected_win_prob)):
        if p is not None and not bool(((p >= 0) & (p <= 1)).all()):
            raise ValueError(f"{name}: win probabilities must lie in [0, 1]")
    if chosen_lengths is not None and (bool((chosen_lengths <= 0).any()) or bool((rejected_lengths <= 0).any())):
        raise ValueError("chosen_lengths: every response length must be > 0 for length-normalised ipo")
    if pair_weights is not None and not bool((torch.isfinite(pair_weights) & (pair_weights >= 0)).all()):
        raise ValueError("weights: per-pair weights must be finite and >= 0")


@torch.library.custom_op("sgpo::preference_pair_losses", mutates_args=())
def _pair_losses(
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
    _check_values(chosen_win_prob, rejected_win_prob, pair_weights, chosen_lengths, rejected_lengths)
    from sgpo.kernels.preference import preference_pair_losses

    return preference_pair_losses(
        chosen,
        rejected,
        ref_chosen,
        ref_rejected,
        chosen_win_prob,
        rejected_win_prob,
        wc_weights,
        wc_shifts,
        pair_weights,
        chosen_lengths,
        rejected_lengths,
        loss_type,
        beta,
        label_smoothing,
        space,
    )


@_pair_losses.register_fake
def _(chosen: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.empty(chosen.shape, dtype=torch.float32, device=chosen.device) for _ in range(3))


class PairLosses(torch.autograd.Function):
    """Per-pair losses from the fused kernel; gradients reach the four log-prob vectors."""

    @staticmethod
    def forward(
        ctx,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        ref_chosen: torch.Tensor,
        ref_rejected: torch.Tensor,
        *extras: Any,
    ) -> torch.Tensor:
        losses, grad_chosen, grad_rejected = _pair_losses(chosen, rejected, ref_chosen, ref_rejected, *extras)
        ctx.save_for_backward(grad_chosen, grad_rejected)
        ctx.dtypes = tuple(t.dtype for t in (chosen, rejected, ref_chosen, ref_rejected))
        ctx.n_extras = len(extras)
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_chosen, grad_rejected = ctx.saved_tensors
        d_chosen, d_rejected = grad_losses * grad_chosen, grad_losses * grad_rejected
        grads = (d_chosen, d_rejected, -d_chosen, -d_rejected)
        return (*(g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)), *([None] * ctx.n_extras))


def preference_losses(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
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
) -> PreferenceLosses:
    """Per-pair losses (times ``weights`` when given) and the implicit rewards beta * s; see :func:`preference_loss`.

    On the Triton path the gradient flows to the four log-prob vectors only; the win probabilities, the worst case,
    the weights and the lengths are data there, and passing one that requires grad is an error.
    """
    kwargs = dict(
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
    )
    validate_preference_args(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **kwargs)
    logps = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    dtype = compute_dtype(*logps)
    if choose_backend(chosen_logps.device, dtype) == "torch":
        return preference_losses_reference(*logps, **kwargs)

    batch, device = chosen_logps.shape[0], chosen_logps.device

    def vector(name: str, value: Any) -> torch.Tensor:
        return _vector(name, value, batch, dtype, device)

    win = (None, None)
    if loss_type == "sppo":
        win = (vector("chosen_win_prob", chosen_win_prob), vector("rejected_win_prob", rejected_win_prob))
    worst = (None, None)
    if loss_type == "ssapo":
        worst = _worst_case_tensors(worst_case, batch, dtype, device)
    lengths = (None, None)
    if chosen_lengths is not None:
        lengths = (vector("chosen_lengths", chosen_lengths), vector("rejected_lengths", rejected_lengths))
    pair_weights = None if weights is None else vector("weights", weights)
    data = (*win, *worst, pair_weights, *lengths)
    names = ("chosen_win_prob", "rejected_win_prob", "worst_case", "worst_case", "weights", "chosen_lengths")
    for name, tensor in zip(names, data):
        if tensor is not None and tensor.requires_grad:
            raise ValueError(
                f"{name}: got a tensor that requires grad; the fused kernel differentiates the log-probs only "
                "(detach it, or set SGPO_KERNELS=torch for the reference path)"
            )
    losses = PairLosses.apply(*logps, *data, loss_type, float(beta), float(label_smoothing), space)
    s_w = chosen_logps.to(dtype) - ref_chosen_logps.to(dtype)
    s_l = rejected_logps.to(dtype) - ref_rejected_logps.to(dtype)
    return PreferenceLosses(losses, (beta * s_w).detach(), (beta * s_l).detach())


def preference_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
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
) -> torch.Tensor:
    """Mean over pairs of the ``loss_type`` loss of DESIGN 1.1 (each pair's loss times ``weights`` when given).

    ``sppo`` needs ``chosen_win_prob``/``rejected_win_prob``; ``ssapo`` needs ``worst_case`` (a
    :class:`sgpo.WorstCase` or a (weights, shifts) pair of (B, K) arrays) and its ``space``; ``ipo`` with
    ``chosen_lengths``/``rejected_lengths`` is the length-normalised variant. ``sigmoid`` with
    ``label_smoothing`` > 0 is conservative DPO; ``robust`` is rDPO.
    """
    return preference_losses(
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
    ).losses.mean()
