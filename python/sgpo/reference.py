"""Pure-PyTorch reference ops: the specification every kernel, C++ and CUDA path is checked against.

Notation follows DESIGN 1.1: for a pair (x, y_w, y_l), s(y) = log pi_theta(y|x) - log pi_ref(y|x) summed over response
tokens, Delta = s(y_w) - s(y_l). Every loss is computed in float32, or float64 when an input is float64.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

LOSS_TYPES: tuple[str, ...] = ("sigmoid", "hinge", "ipo", "robust", "sppo_hard", "sppo", "ssapo")
SPACES: tuple[str, ...] = ("probability", "margin")

# l(p) = -log(max(p, PROB_FLOOR)) in probability space (DESIGN 1.1, the paper's code)
PROB_FLOOR = 1e-6


class PreferenceLosses(NamedTuple):
    """Per-pair losses and the implicit rewards beta * s(y) for logging."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64, else float32 (bf16/fp16 inputs are upcast)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def check_labels(labels: torch.Tensor, vocab_size: int, ignore_index: int) -> torch.Tensor:
    """Validate labels and return the boolean mask of positions that count."""
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"labels: expected an integer tensor, got dtype {labels.dtype}")
    mask = labels != ignore_index
    bad = mask & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(
            f"labels: value {value} is outside the vocabulary [0, {vocab_size}) and is not ignore_index={ignore_index}"
        )
    return mask


def sequence_logps_reference(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, average: bool = False
) -> torch.Tensor:
    """Per-sequence sum (or mean) of log p(label) over positions whose label is not ``ignore_index``.

    ``logits`` (B, T, V) are already aligned with ``labels`` (B, T). A row whose labels are all ignored gives 0 (sum and
    mean alike), never NaN. Returns float32 (float64 for float64 logits).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits: expected shape (B, T, V), got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels: expected shape {tuple(logits.shape[:2])} to match logits, got {tuple(labels.shape)}")
    mask = check_labels(labels, logits.shape[-1], ignore_index)
    dtype = compute_dtype(logits)
    logprobs = torch.log_softmax(logits.to(dtype), dim=-1)
    safe = torch.where(mask, labels.long(), torch.zeros_like(labels, dtype=torch.long))
    token = logprobs.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * mask
    total = token.sum(-1)
    if average:
        total = total / mask.sum(-1).clamp(min=1).to(dtype)
    return total


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


def validate_preference_args(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
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
) -> None:
    """Raise a ValueError naming the argument for anything the loss cannot use."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type: unknown value {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    if chosen_logps.dim() != 1:
        raise ValueError(f"chosen_logps: expected a 1-D tensor of per-pair log-probs, got {tuple(chosen_logps.shape)}")
    for name, tensor in (
        ("rejected_logps", rejected_logps),
        ("ref_chosen_logps", ref_chosen_logps),
        ("ref_rejected_logps", ref_rejected_logps),
    ):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.shape != chosen_logps.shape:
            raise ValueError(
                f"{name}: expected shape {tuple(chosen_logps.shape)} like chosen_logps, got {tuple(tensor.shape)}"
            )
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta: expected a finite number > 0, got {beta!r}")
    if loss_type == "robust":
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing: robust needs a value in [0, 0.5), got {label_smoothing!r}")
    elif loss_type == "sigmoid":
        if not 0.0 <= label_smoothing <= 0.5:
            raise ValueError(f"label_smoothing: sigmoid (cDPO) needs a value in [0, 0.5], got {label_smoothing!r}")
    elif label_smoothing != 0.0:
        raise ValueError(
            f"label_smoothing: only sigmoid and robust use it; got {label_smoothing!r} with loss_type={loss_type!r}"
        )
    if loss_type == "sppo":
        if chosen_win_prob is None or rejected_win_prob is None:
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
    if chosen_lengths is not None and loss_type != "ipo":
        raise ValueError(
            f"chosen_lengths: length normalisation is the ipo variant's option; got loss_type={loss_type!r}"
        )


def preference_losses_reference(
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
    """Per-pair losses of DESIGN 1.1 (times the per-pair ``weights`` when given) and the implicit rewards."""
    validate_preference_args(
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
    )
    dtype = compute_dtype(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    batch, device = chosen_logps.shape[0], chosen_logps.device
    s_w = chosen_logps.to(dtype) - ref_chosen_logps.to(dtype)
    s_l = rejected_logps.to(dtype) - ref_rejected_logps.to(dtype)
    chosen_rewards = (beta * s_w).detach()
    rejected_rewards = (beta * s_l).detach()

    if loss_type == "ipo" and chosen_lengths is not None:
        # TRL's length-normalised IPO: each log-ratio divided by its response's token count
        len_w = _vector("chosen_lengths", chosen_lengths, batch, dtype, device)
        len_l = _vector("rejected_lengths", rejected_lengths, batch, dtype, device)
        if bool((len_w <= 0).any()) or bool((len_l <= 0).any()):
            raise ValueError("chosen_lengths: every response length must be > 0 for length-normalised ipo")
        s_w, s_l = s_w / len_w, s_l / len_l
    z = beta * (s_w - s_l)

    if loss_type == "sigmoid":
        # DPO; label_smoothing > 0 is conservative DPO (TRL's sigmoid with label smoothing)
        losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    elif loss_type == "hinge":
        losses = torch.relu(1 - z)
    elif loss_type == "ipo":
        losses = (s_w - s_l - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        # rDPO (arXiv 2403.00409, eq. 5): unbiased under label-flip rate e
        e = label_smoothing
        losses = (-(1 - e) * F.logsigmoid(z) + e * F.logsigmoid(-z)) / (1 - 2 * e)
    elif loss_type == "sppo_hard":
        losses = (s_w - 1 / (2 * beta)) ** 2 + (s_l + 1 / (2 * beta)) ** 2
    elif loss_type == "sppo":
        # SPPO (arXiv 2405.00675, eq. 4.2) with eta = 1/beta
        p_w = _vector("chosen_win_prob", chosen_win_prob, batch, dtype, device)
        p_l = _vector("rejected_win_prob", rejected_win_prob, batch, dtype, device)
        for name, p in (("chosen_win_prob", p_w), ("rejected_win_prob", p_l)):
            if not bool(((p >= 0) & (p <= 1)).all()):
                raise ValueError(f"{name}: win probabilities must lie in [0, 1]")
        losses = ((s_w - (p_w - 0.5) / beta) ** 2 + (s_l - (p_l - 0.5) / beta) ** 2) / 2
    else:
        # SSAPO leader (arXiv 2502.18099, Alg. 1 step 4): expected loss under the follower's worst case
        w, d = _worst_case_tensors(worst_case, batch, dtype, device)
        if space == "probability":
            shifted = torch.sigmoid(z).unsqueeze(-1) - d
            per_piece = -torch.log(shifted.clamp(min=PROB_FLOOR))
        else:
            per_piece = -F.logsigmoid(z.unsqueeze(-1) - d)
        losses = (w * per_piece).sum(-1)

    if weights is not None:
        pair_weights = _vector("weights", weights, batch, dtype, device)
        if not bool((torch.isfinite(pair_weights) & (pair_weights >= 0)).all()):
            raise ValueError("weights: per-pair weights must be finite and >= 0")
        losses = losses * pair_weights
    return PreferenceLosses(losses, chosen_rewards, rejected_rewards)


def preference_loss_reference(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Mean over pairs of :func:`preference_losses_reference`."""
    return preference_losses_reference(*args, **kwargs).losses.mean()
