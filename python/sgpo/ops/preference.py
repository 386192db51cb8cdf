"""Per-pair preference losses (DESIGN 1.1, docs/loss-types.md): the fused Triton kernel on GPU, the reference formulas
elsewhere.

The Triton path is one ``torch.library.custom_op`` (with ``register_fake`` for ``torch.compile``) that returns each
pair's loss and its derivatives with respect to the chosen and rejected log-probs; the autograd Function on top turns
them into gradients. The batch-coupled ``aot`` losses sort the batch in PyTorch (the gradient follows the sort) and
then take the kernel's sigmoid branch. The PyTorch path is :func:`sgpo.reference.preference_losses_reference` itself,
under autograd.
"""

from __future__ import annotations

from typing import Any

import torch

from sgpo.ops.dispatch import choose_backend
from sgpo.reference import (
    REFERENCE_FREE,
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
        raise ValueError("chosen_lengths: every response length must be > 0 for length normalisation")
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
    f_divergence_type: str,
    f_alpha_divergence_coef: float,
    discopop_tau: float,
    margin: float,
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
        f_divergence_type,
        f_alpha_divergence_coef,
        discopop_tau,
        margin,
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


def _sorted_margins(
    loss_type: str, logps: tuple[torch.Tensor, ...], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """AOT's (policy side, reference side) of the sorted comparison; their difference is the loss's margin."""
    chosen, rejected, ref_chosen, ref_rejected = (t.to(dtype) for t in logps)
    if loss_type == "aot":
        return torch.sort(chosen - rejected).values, torch.sort(ref_chosen - ref_rejected).values
    return torch.sort(chosen - ref_chosen).values, torch.sort(rejected - ref_rejected).values


def preference_losses(
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
        f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef,
        discopop_tau=discopop_tau,
        simpo_gamma=simpo_gamma,
    )
    validate_preference_args(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **kwargs)
    logps = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    dtype = compute_dtype(*logps)
    if choose_backend(chosen_logps.device, dtype) == "torch":
        return preference_losses_reference(*logps, **kwargs)

    batch, device = chosen_logps.shape[0], chosen_logps.device
    if loss_type in REFERENCE_FREE:
        # the kernel reads log-ratios: a zero reference makes them the log-probs
        zeros = torch.zeros(batch, dtype=dtype, device=device)
        logps = (chosen_logps, rejected_logps, zeros, zeros)

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
    kernel_type, kernel_logps = loss_type, logps
    if loss_type in ("aot", "aot_unpaired"):
        policy_side, reference_side = _sorted_margins(loss_type, logps, dtype)
        zeros = torch.zeros_like(policy_side)
        kernel_type, kernel_logps = "sigmoid", (policy_side, zeros, reference_side, zeros)
    # sft reads the chosen log-probs themselves: no f-divergence applies to them
    divergence = "reverse_kl" if loss_type == "sft" else f_divergence_type
    margin = simpo_gamma if loss_type == "simpo" else 0.0
    options = (float(f_alpha_divergence_coef), float(discopop_tau), float(margin))
    losses = PairLosses.apply(
        *kernel_logps, *data, kernel_type, float(beta), float(label_smoothing), space, divergence, *options
    )
    s_w = logps[0].to(dtype) - logps[2].to(dtype)
    s_l = logps[1].to(dtype) - logps[3].to(dtype)
    if loss_type in ("simpo", "cpo", "orpo") and lengths[0] is not None:
        s_w, s_l = s_w / lengths[0], s_l / lengths[1]
    return PreferenceLosses(losses, (beta * s_w).detach(), (beta * s_l).detach())


def preference_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    """Mean over pairs of the ``loss_type`` loss (each pair's loss times ``weights`` when given).

    Keyword options, as :func:`preference_losses` takes them: ``loss_type`` (one of :data:`sgpo.ops.LOSS_TYPES`; the
    formulas and papers are in docs/loss-types.md), ``beta``, ``label_smoothing`` (cDPO for ``sigmoid``, the flip rate
    for ``robust``, EXO's epsilon for ``exo_pair``), ``chosen_win_prob``/``rejected_win_prob`` (``sppo``),
    ``worst_case`` and ``space`` (``ssapo``), ``weights``, ``chosen_lengths``/``rejected_lengths`` (length
    normalisation: ``ipo``, ``sigmoid_norm``, ``simpo``, ``cpo``, ``orpo``; ``sft`` divides its NLL by them),
    ``f_divergence_type``/``f_alpha_divergence_coef`` (f-DPO), ``discopop_tau`` and ``simpo_gamma``. The
    reference-free losses (``sft``, ``simpo``, ``cpo``, ``orpo``) take ``None`` for the reference log-probs.
    """
    out = preference_losses(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **options)
    return out.losses.mean()
