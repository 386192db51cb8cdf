"""The loss types of :mod:`sgpo.reference`, the options each one reads, and the checks that name a bad argument.

Every path (the reference, the fused kernel, the trainers) validates through :func:`validate_preference_args`, so an
option reaches a loss only where that loss defines it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# DESIGN 1.1's losses, then the rest of TRL 1.16's DPOTrainer table, then the reference-free pair losses Liger ships.
LOSS_TYPES: tuple[str, ...] = (
    "sigmoid",
    "hinge",
    "ipo",
    "robust",
    "sppo_hard",
    "sppo",
    "ssapo",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
    "simpo",
    "cpo",
    "orpo",
)
# TRL 1.16's DPOConfig.loss_type values, in its order
TRL_LOSS_TYPES: tuple[str, ...] = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
SPACES: tuple[str, ...] = ("probability", "margin")
F_DIVERGENCES: tuple[str, ...] = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# f-DPO's reparameterisation leaves a beta * log Z(x) term that cancels only in the chosen - rejected difference
F_DIVERGENCE_LOSS_TYPES: tuple[str, ...] = (
    "sigmoid",
    "sigmoid_norm",
    "hinge",
    "ipo",
    "exo_pair",
    "robust",
    "discopop",
    "sft",
)
# losses of the policy's log-probs alone: the reference log-probs may be None and are not read
REFERENCE_FREE: tuple[str, ...] = ("sft", "simpo", "cpo", "orpo")
# losses that couple the pairs of a batch (they sort it): no per-pair weights, no pair-at-a-time evaluation
BATCH_COUPLED: tuple[str, ...] = ("aot", "aot_unpaired")
# losses that divide by chosen_lengths/rejected_lengths when given (sigmoid_norm needs them)
LENGTH_NORMALISED: tuple[str, ...] = ("ipo", "sigmoid_norm", "sft", "simpo", "cpo", "orpo")
# label_smoothing's meaning and range per loss: (low, high, low inclusive, high inclusive, what it is)
SMOOTHING: dict[str, tuple[float, float, bool, bool, str]] = {
    "sigmoid": (0.0, 0.5, True, True, "conservative DPO's label noise"),
    "robust": (0.0, 0.5, True, False, "rDPO's label-flip rate"),
    "exo_pair": (0.0, 1.0, False, False, "EXO's epsilon"),
    "aot": (0.0, 0.5, True, True, "conservative smoothing of the sorted margins"),
    "aot_unpaired": (0.0, 0.5, True, True, "conservative smoothing of the sorted margins"),
    "simpo": (0.0, 0.5, True, True, "conservative label noise"),
    "cpo": (0.0, 0.5, True, True, "conservative label noise"),
}


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64, else float32 (bf16/fp16 inputs are upcast)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _vector(name: str, value: Any, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # python lists go straight to the compute dtype: through float32 they would lose precision
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=dtype)
    tensor = tensor.to(device)
    if tensor.shape != (batch,):
        raise ValueError(f"{name}: expected shape ({batch},) to match chosen_logps, got {tuple(tensor.shape)}")
    return tensor.to(dtype)


def _worst_case_tensors(
    worst_case: Any, batch: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(worst_case, "weights") and hasattr(worst_case, "shifts"):
        weights, shifts = worst_case.weights, worst_case.shifts
    elif isinstance(worst_case, (tuple, list)) and len(worst_case) == 2:
        weights, shifts = worst_case
    else:
        raise ValueError(
            "worst_case: expected a sgpo.WorstCase or a (weights, shifts) pair of (B, K) arrays, "
            f"got {type(worst_case).__name__}"
        )
    weights = (weights if isinstance(weights, torch.Tensor) else torch.as_tensor(weights, dtype=dtype)).to(
        device, dtype
    )
    shifts = (shifts if isinstance(shifts, torch.Tensor) else torch.as_tensor(shifts, dtype=dtype)).to(device, dtype)
    if weights.dim() != 2 or weights.shape[0] != batch:
        raise ValueError(f"worst_case.weights: expected shape ({batch}, K), got {tuple(weights.shape)}")
    if shifts.shape != weights.shape:
        raise ValueError(
            f"worst_case.shifts: expected shape {tuple(weights.shape)} like the weights, got {tuple(shifts.shape)}"
        )
    return weights, shifts


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_label_smoothing(loss_type: str, label_smoothing: float) -> None:
    """label_smoothing is 0 unless ``loss_type`` reads it, and then inside that loss's range."""
    if loss_type not in SMOOTHING:
        if label_smoothing != 0.0:
            raise ValueError(
                f"label_smoothing: only {', '.join(SMOOTHING)} use it; got {label_smoothing!r} "
                f"with loss_type={loss_type!r}"
            )
        return
    low, high, low_in, high_in, meaning = SMOOTHING[loss_type]
    inside = (low <= label_smoothing if low_in else low < label_smoothing) and (
        label_smoothing <= high if high_in else label_smoothing < high
    )
    if not (_finite(label_smoothing) and inside):
        # worded as Liger-Kernel words it, so code written against Liger's messages matches ours
        span = f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
        rule = f"be > {low:g}" if not low_in and label_smoothing <= low else f"lie in {span}"
        raise ValueError(
            f"label_smoothing must {rule} for loss_type={loss_type!r} ({meaning}), got {label_smoothing!r}"
        )


def check_loss_options(
    loss_type: str,
    *,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    discopop_tau: float = 0.05,
    simpo_gamma: float = 0.5,
) -> None:
    """The options that need no tensor: the loss type and its scalar settings."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unsupported loss_type: {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    if f_divergence_type not in F_DIVERGENCES:
        raise ValueError(
            f"f_divergence_type: unknown value {f_divergence_type!r}; expected one of {', '.join(F_DIVERGENCES)}"
        )
    if f_divergence_type != "reverse_kl" and loss_type not in F_DIVERGENCE_LOSS_TYPES:
        raise ValueError(
            f"f_divergence_type: {f_divergence_type!r} is defined only for the losses of the chosen - rejected "
            f"difference ({', '.join(F_DIVERGENCE_LOSS_TYPES)}); got loss_type={loss_type!r}, which needs "
            "'reverse_kl'"
        )
    if not _finite(f_alpha_divergence_coef):
        raise ValueError(f"f_alpha_divergence_coef: expected a finite number, got {f_alpha_divergence_coef!r}")
    if not (_finite(discopop_tau) and discopop_tau > 0):
        raise ValueError(f"discopop_tau: expected a finite number > 0, got {discopop_tau!r}")
    if not _finite(simpo_gamma):
        raise ValueError(f"simpo_gamma: expected a finite number, got {simpo_gamma!r}")


def validate_preference_args(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    loss_type: str,
    beta: float,
    label_smoothing: float,
    chosen_win_prob: Any,
    rejected_win_prob: Any,
    worst_case: Any,
    space: str,
    weights: Any,
    chosen_lengths: Any,
    rejected_lengths: Any,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    discopop_tau: float = 0.05,
    simpo_gamma: float = 0.5,
) -> None:
    """Raise a ValueError naming the argument for anything the loss cannot use."""
    check_loss_options(
        loss_type,
        f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef,
        discopop_tau=discopop_tau,
        simpo_gamma=simpo_gamma,
    )
    if not isinstance(chosen_logps, torch.Tensor) or chosen_logps.dim() != 1:
        shape = tuple(chosen_logps.shape) if isinstance(chosen_logps, torch.Tensor) else type(chosen_logps).__name__
        raise ValueError(f"chosen_logps: expected a 1-D tensor of per-pair log-probs, got {shape}")
    vectors = [("rejected_logps", rejected_logps)]
    for name, tensor in (("ref_chosen_logps", ref_chosen_logps), ("ref_rejected_logps", ref_rejected_logps)):
        if tensor is None and loss_type not in REFERENCE_FREE:
            raise ValueError(f"{name}: loss_type={loss_type!r} needs the reference log-probs, got None")
        if tensor is not None:
            vectors.append((name, tensor))
    for name, tensor in vectors:
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.shape != chosen_logps.shape:
            raise ValueError(
                f"{name}: expected shape {tuple(chosen_logps.shape)} like chosen_logps, got {tuple(tensor.shape)}"
            )
    if not (_finite(beta) and beta > 0):
        raise ValueError(f"beta: expected a finite number > 0, got {beta!r}")
    check_label_smoothing(loss_type, label_smoothing)
    if loss_type == "sppo" and (chosen_win_prob is None or rejected_win_prob is None):
        missing = "chosen_win_prob" if chosen_win_prob is None else "rejected_win_prob"
        raise ValueError(f"{missing}: loss_type='sppo' needs the estimated win probabilities of both responses")
    if loss_type == "ssapo":
        if worst_case is None:
            raise ValueError(
                "worst_case: loss_type='ssapo' needs the follower's (weights, shifts); see sgpo.worst_case"
            )
        if space not in SPACES:
            raise ValueError(f"space: unknown value {space!r}; expected one of {', '.join(SPACES)}")
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("chosen_lengths: pass both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None and loss_type not in LENGTH_NORMALISED:
        raise ValueError(
            f"chosen_lengths: only {', '.join(LENGTH_NORMALISED)} divide by response lengths; "
            f"got loss_type={loss_type!r}"
        )
    if chosen_lengths is None and loss_type == "sigmoid_norm":
        raise ValueError(
            "chosen_lengths: sigmoid_norm divides each log-ratio by its response's token count; pass "
            "chosen_lengths and rejected_lengths"
        )
    if weights is not None and loss_type in BATCH_COUPLED:
        raise ValueError(
            f"weights: {loss_type} sorts the batch's log-ratios, so a per-pair weight has no pair to follow; "
            "expected None"
        )
