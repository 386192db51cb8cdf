"""Public loss ops (DESIGN section 3). Same semantics as :mod:`sgpo.reference`."""

from __future__ import annotations

from typing import Any

import torch

from sgpo.reference import (
    LOSS_TYPES,
    PreferenceLosses,
    preference_losses_reference,
    sequence_logps_reference,
)

__all__ = ["LOSS_TYPES", "PreferenceLosses", "preference_loss", "preference_losses", "sequence_logps"]


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, average: bool = False
) -> torch.Tensor:
    """Per-sequence sum (or mean, ``average=True``) of label log-probs; (B,) float32.

    ``logits`` (B, T, V) are already aligned with ``labels`` (B, T); positions labelled ``ignore_index`` do not count,
    and a row with every label ignored gives 0.
    """
    return sequence_logps_reference(logits, labels, ignore_index=ignore_index, average=average)


def preference_losses(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    **kwargs: Any,
) -> PreferenceLosses:
    """Per-pair losses and implicit rewards; keyword arguments as :func:`preference_loss`."""
    return preference_losses_reference(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **kwargs)


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
    ``chosen_lengths``/``rejected_lengths`` is the length-normalised variant.
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
