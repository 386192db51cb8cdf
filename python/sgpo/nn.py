"""Drop-in loss modules for Liger-Kernel's fused linear preference losses.

Each module takes Liger's call (the lm_head weight, the last hidden states with chosen rows stacked over rejected
rows, the already shifted targets) and returns the same ``(loss, aux)``, so a Liger user swaps one import:

- :class:`FusedLinearPreferenceLoss` for ``LigerFusedLinearDPOLoss``, with every loss of :data:`sgpo.ops.LOSS_TYPES`;
- :class:`FusedLinearSimPOLoss`, :class:`FusedLinearCPOLoss`, :class:`FusedLinearORPOLoss` for
  ``LigerFusedLinearSimPOLoss``, ``LigerFusedLinearCPOLoss``, ``LigerFusedLinearORPOLoss`` (same constructor
  arguments).

The log-probs come from :func:`sgpo.ops.fused_linear_token_logps`, which never holds the (B, T, V) logits, and the loss
sees the whole batch at once, so batch-coupled objectives work.
"""

from __future__ import annotations

from typing import Any

import torch

from sgpo.loss_args import REFERENCE_FREE, check_label_smoothing, check_loss_options
from sgpo.nn_policy import chosen_nll, liger_aux, policy_logps
from sgpo.nn_reference_free import FusedLinearCPOLoss, FusedLinearORPOLoss, FusedLinearSimPOLoss
from sgpo.ops import fused_linear_sequence_logps, preference_losses
from sgpo.reference import SPACES

__all__ = ["FusedLinearCPOLoss", "FusedLinearORPOLoss", "FusedLinearPreferenceLoss", "FusedLinearSimPOLoss"]


class FusedLinearPreferenceLoss(torch.nn.Module):
    """lm_head + preference loss, chunked over tokens.

    The positional arguments are ``LigerFusedLinearDPOLoss``'s, in its order (Liger-Kernel 0.8.5), so a positional call
    written for Liger means the same here; sgpo's own options are keyword-only. Pass ``loss_type`` by keyword.

    Args:
        loss_type: one of :data:`sgpo.ops.LOSS_TYPES` (docs/loss-types.md).
        beta, label_smoothing: as in :func:`sgpo.ops.preference_loss` (label smoothing is cDPO for ``sigmoid``, the
            flip rate for ``robust``, EXO's epsilon for ``exo_pair``).
        ignore_index: target value of positions that do not count (prompt, padding).
        space: ``ssapo``'s space, ``"probability"`` or ``"margin"``.
        ipo_length_normalized: ``ipo`` divides each log-ratio by its response's token count (TRL's variant).
            ``sigmoid_norm`` always does; ``sft`` is the chosen NLL per token of the batch, as in TRL.
        f_divergence_type, f_alpha_divergence_coef, discopop_tau, simpo_gamma: as in :func:`sgpo.ops.preference_loss`.
        average_log_prob: per-sequence mean of token log-probs instead of the sum.
        compute_nll_loss, alpha: add ``alpha`` times the chosen responses' token-mean NLL (RPO), as Liger does.
        use_ref_model: without reference log-probs or ``ref_input``, ``False`` takes them as 0 (reference-free).
        chunk_tokens: tokens projected at a time (default :data:`sgpo.ops.fused_linear.CHUNK_TOKENS`).
        compiled, chunk_size: accepted so ``LigerFusedLinearDPOLoss`` keyword arguments carry over; sgpo needs no
            ``torch.compile`` and chunks over tokens, so they change nothing.

    ``forward(lin_weight, _input, target, bias=None, ref_input=None, ref_weight=None, ref_bias=None, *,
    ref_chosen_logps=None, ref_rejected_logps=None, chosen_win_prob=None, rejected_win_prob=None, worst_case=None,
    weights=None)`` returns ``(loss, aux)`` with Liger's aux order: chosen log-probs, rejected log-probs, chosen logits
    mean, rejected logits mean, NLL loss (0 unless ``compute_nll_loss``), chosen rewards, rejected rewards.
    """

    def __init__(
        self,
        ignore_index: int = -100,
        beta: float = 0.1,
        alpha: float = 1.0,
        compute_nll_loss: bool = False,
        compiled: bool = True,
        use_ref_model: bool = True,
        average_log_prob: bool = False,
        chunk_size: int = 1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        discopop_tau: float = 0.05,
        *,
        space: str = "probability",
        ipo_length_normalized: bool = False,
        f_divergence_type: str = "reverse_kl",
        f_alpha_divergence_coef: float = 0.5,
        simpo_gamma: float = 0.5,
        chunk_tokens: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            # the first positional argument is Liger's ignore_index; sgpo's constructor once took loss_type there
            raise ValueError(
                f"ignore_index: expected an integer, got {ignore_index!r}; pass loss_type by keyword "
                f"(FusedLinearPreferenceLoss(loss_type={ignore_index!r}))"
            )
        self.options = dict(
            f_divergence_type=f_divergence_type,
            f_alpha_divergence_coef=f_alpha_divergence_coef,
            discopop_tau=discopop_tau,
            simpo_gamma=simpo_gamma,
        )
        check_loss_options(loss_type, **self.options)
        check_label_smoothing(loss_type, label_smoothing)
        if space not in SPACES:
            raise ValueError(f"space: unknown value {space!r}; expected one of {', '.join(SPACES)}")
        if ipo_length_normalized and loss_type != "ipo":
            raise ValueError(f"ipo_length_normalized: only loss_type='ipo' uses it, got loss_type={loss_type!r}")
        self.loss_type = loss_type
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index
        self.space = space
        self.ipo_length_normalized = ipo_length_normalized
        self.average_log_prob = average_log_prob
        self.compute_nll_loss = compute_nll_loss
        self.alpha = alpha
        self.use_ref_model = use_ref_model
        self.chunk_tokens = chunk_tokens

    def _reference_logps(
        self,
        lin_weight: torch.Tensor,
        bias: torch.Tensor | None,
        target: torch.Tensor,
        ref_input: torch.Tensor | None,
        ref_weight: torch.Tensor | None,
        ref_bias: torch.Tensor | None,
        ref_chosen_logps: torch.Tensor | None,
        ref_rejected_logps: torch.Tensor | None,
        n_pairs: int,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if (ref_chosen_logps is None) != (ref_rejected_logps is None):
            raise ValueError("ref_chosen_logps: pass both ref_chosen_logps and ref_rejected_logps, or neither")
        if ref_chosen_logps is not None:
            return ref_chosen_logps, ref_rejected_logps
        if self.loss_type in REFERENCE_FREE:
            return None, None
        if ref_input is not None:
            if ref_input.shape[:2] != target.shape:
                raise ValueError(
                    f"ref_input: expected shape ({target.shape[0]}, {target.shape[1]}, H) like _input, "
                    f"got {tuple(ref_input.shape)}"
                )
            if ref_weight is None:
                # A frozen lm_head shared with the policy (the usual LoRA setup).
                ref_weight, ref_bias = lin_weight, bias
            with torch.no_grad():
                ref = fused_linear_sequence_logps(
                    ref_input,
                    ref_weight,
                    target,
                    bias=ref_bias,
                    ignore_index=self.ignore_index,
                    average=self.average_log_prob,
                    chunk_tokens=self.chunk_tokens,
                )
            return ref[:n_pairs], ref[n_pairs:]
        if self.use_ref_model:
            raise ValueError(
                "ref_input: use_ref_model=True needs ref_input (with ref_weight, or the policy's lm_head) or "
                "precomputed ref_chosen_logps/ref_rejected_logps"
            )
        zeros = torch.zeros(n_pairs, dtype=torch.float32, device=target.device)
        return zeros, zeros

    def _lengths(self, counts: torch.Tensor, n_pairs: int) -> tuple[Any, Any]:
        if self.average_log_prob:
            # the log-probs are per-token means already
            ones = torch.ones(n_pairs, device=counts.device)
            return (ones, ones) if self.loss_type == "sigmoid_norm" else (None, None)
        if self.loss_type == "sigmoid_norm" or self.ipo_length_normalized:
            return counts[:n_pairs], counts[n_pairs:]
        if self.loss_type == "sft":
            # each pair's NLL over the batch's mean chosen length: the mean over pairs is the NLL per chosen token
            mean = counts[:n_pairs].sum().clamp(min=1) / n_pairs
            return mean.expand(n_pairs), mean.expand(n_pairs)
        return None, None

    def forward(
        self,
        lin_weight: torch.Tensor,
        _input: torch.Tensor,
        target: torch.Tensor,
        bias: torch.Tensor | None = None,
        ref_input: torch.Tensor | None = None,
        ref_weight: torch.Tensor | None = None,
        ref_bias: torch.Tensor | None = None,
        *,
        ref_chosen_logps: torch.Tensor | None = None,
        ref_rejected_logps: torch.Tensor | None = None,
        chosen_win_prob: Any = None,
        rejected_win_prob: Any = None,
        worst_case: Any = None,
        weights: Any = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        policy = policy_logps(
            lin_weight,
            _input,
            target,
            bias,
            ignore_index=self.ignore_index,
            average_log_prob=self.average_log_prob,
            chunk_tokens=self.chunk_tokens,
        )
        n_pairs = policy.chosen.shape[0]
        ref_chosen, ref_rejected = self._reference_logps(
            lin_weight, bias, target, ref_input, ref_weight, ref_bias, ref_chosen_logps, ref_rejected_logps, n_pairs
        )
        chosen_lengths, rejected_lengths = self._lengths(policy.counts, n_pairs)
        out = preference_losses(
            policy.chosen,
            policy.rejected,
            ref_chosen,
            ref_rejected,
            loss_type=self.loss_type,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            chosen_win_prob=chosen_win_prob,
            rejected_win_prob=rejected_win_prob,
            worst_case=worst_case,
            space=self.space,
            weights=weights,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
            **self.options,
        )
        loss = out.losses.mean()
        nll = torch.zeros((), dtype=loss.dtype, device=loss.device)
        if self.compute_nll_loss:
            nll = chosen_nll(
                policy, lin_weight, _input, bias, ignore_index=self.ignore_index, chunk_tokens=self.chunk_tokens
            )
            loss = loss + self.alpha * nll
        aux = liger_aux(policy, lin_weight, _input, bias, nll, out.chosen_rewards, out.rejected_rewards)
        return loss, aux
