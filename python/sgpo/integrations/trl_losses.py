"""TRL 1.16's DPO loss from per-token log-probs, through :func:`sgpo.ops.preference_losses`: LD-DPO's weighting of
the longer response's tail, WPO's pair weights and the weighted sum over ``loss_type``, as ``DPOTrainer`` computes
them (``trl/trainer/dpo_trainer.py``, ``_compute_loss``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from sgpo.integrations.shared_prompt import TokenLogps
from sgpo.integrations.trl_config import SGPODPOConfig
from sgpo.loss_args import BATCH_COUPLED, SMOOTHING

# a batch's per-token log-probs: one (2n, T) block (TRL's head), or one (2, W) block per pair (the prompt-sharing
# forward, whose pairs stay unpadded so that a pair's sums are the same alone and in a batch)
Tokens = TokenLogps | list[TokenLogps]


def _stacked(per_block: list[torch.Tensor]) -> torch.Tensor:
    # (2,) chosen-then-rejected values per pair -> (2n,) chosen rows, then rejected rows
    both = torch.stack(per_block)
    return torch.cat([both[:, 0], both[:, 1]])


def _ld_sums(tokens: TokenLogps, ld_alpha: float | None) -> torch.Tensor:
    if ld_alpha is None:
        return tokens.token.sum(dim=1)
    position = tokens.mask.cumsum(dim=1)
    lengths = tokens.mask.sum(dim=1)
    chosen_lengths, rejected_lengths = lengths.chunk(2)
    shared = torch.minimum(chosen_lengths, rejected_lengths).repeat(2).unsqueeze(1)
    in_shared = tokens.mask & (position <= shared)
    in_tail = tokens.mask & (position > shared)
    return (tokens.token * in_shared).sum(dim=1) + ld_alpha * (tokens.token * in_tail).sum(dim=1)


def sequence_logps(tokens: Tokens, ld_alpha: float | None) -> torch.Tensor:
    """(2n,) summed log-probs; with ``ld_alpha``, LD-DPO's (arXiv 2409.06411, eq. 9) shared part plus ``ld_alpha``
    times the tail that the longer response of each pair has beyond the shorter one's length."""
    if isinstance(tokens, list):
        return _stacked([_ld_sums(block, ld_alpha) for block in tokens])
    return _ld_sums(tokens, ld_alpha)


def chosen_sums(tokens: Tokens) -> torch.Tensor:
    """(n,) the chosen responses' summed log-probs, without LD-DPO's weighting (what sft reads)."""
    return sequence_logps(tokens, None).chunk(2)[0]


def _wpo(tokens: TokenLogps) -> torch.Tensor:
    if tokens.log_sum_sq is None:
        raise ValueError("use_weighting: the log-prob head returned no log_sum_sq_probs")
    lengths = tokens.mask.sum(dim=1).clamp(min=1)
    aligned = ((tokens.token.detach() - tokens.log_sum_sq) * tokens.mask).sum(dim=1) / lengths
    chosen, rejected = torch.exp(aligned).chunk(2)
    return chosen * rejected


@torch.no_grad()
def wpo_weights(tokens: Tokens) -> torch.Tensor:
    """(n,) WPO's pair weights (arXiv 2406.11827, eq. 2): the product over the pair's two responses of
    exp(mean over tokens of log p(y_t) - log sum_v p_v^2), the policy's length-normalised aligned probability."""
    if isinstance(tokens, list):
        return torch.cat([_wpo(block) for block in tokens])
    return _wpo(tokens)


@dataclass
class PairBatch:
    """What the loss reads for the pairs at hand (all of a micro-batch, or one pair of it)."""

    logps: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # (chosen, rejected, ref_chosen, ref_rejected)
    chosen_nll_logps: torch.Tensor  # chosen summed log-probs without LD-DPO's weighting (sft's)
    lengths: tuple[torch.Tensor, torch.Tensor]  # response token counts (>= 1)
    sft_tokens: torch.Tensor  # the micro-batch's mean chosen response length: sft is its NLL per chosen token
    wpo: torch.Tensor | None = None
    columns: Mapping[str, torch.Tensor] = field(default_factory=dict)


def uses_pairs_jointly(args: SGPODPOConfig) -> bool:
    """Whether the loss couples the pairs of a batch, so that it cannot be evaluated one pair at a time."""
    return (
        ("ssapo" in args.loss_type and args.ssapo_worst_case == "batch")
        or any(name in BATCH_COUPLED for name in args.loss_type)
        # TRL scales its batch-level sft term by the batch's mean WPO weight
        or ("sft" in args.loss_type and args.use_weighting)
    )


def loss_options(args: SGPODPOConfig, loss_type: str, beta: float, batch: PairBatch) -> dict[str, Any]:
    """Keyword arguments of :func:`sgpo.ops.preference_losses` for ``loss_type`` (ssapo's worst case aside)."""
    options: dict[str, Any] = {
        "loss_type": loss_type,
        "beta": beta,
        "label_smoothing": args.label_smoothing if loss_type in SMOOTHING else 0.0,
    }
    if loss_type in ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop"):
        options["f_divergence_type"] = args.f_divergence_type
        options["f_alpha_divergence_coef"] = args.f_alpha_divergence_coef
    if (loss_type == "ipo" and args.ipo_length_normalized) or loss_type in ("sigmoid_norm", "simpo", "orpo"):
        options["chosen_lengths"], options["rejected_lengths"] = batch.lengths
    elif loss_type == "sft":
        per_pair = batch.sft_tokens.expand(batch.chosen_nll_logps.shape[0])
        options["chosen_lengths"], options["rejected_lengths"] = per_pair, per_pair
    elif loss_type == "sppo":
        options["chosen_win_prob"] = batch.columns["chosen_win_prob"]
        options["rejected_win_prob"] = batch.columns["rejected_win_prob"]
    elif loss_type == "discopop":
        options["discopop_tau"] = args.discopop_tau
    if loss_type == "simpo":
        options["simpo_gamma"] = args.simpo_gamma
    if batch.wpo is not None and loss_type != "sft":
        options["weights"] = batch.wpo
    return options


def loss_logps(loss_type: str, batch: PairBatch) -> tuple[torch.Tensor, ...]:
    """The four log-prob vectors ``loss_type`` reads: sft reads the chosen log-probs without LD-DPO's weighting."""
    if loss_type == "sft":
        return (batch.chosen_nll_logps, *batch.logps[1:])
    return batch.logps


def combine(
    args: SGPODPOConfig,
    loss_weights: list[float],
    per_pair: Callable[[str], torch.Tensor],
    wpo: torch.Tensor | None,
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``sum_k loss_weights[k] * reduce(per-pair losses of loss_type[k])``, TRL's combination of loss types."""
    loss = 0.0
    for loss_type, loss_weight in zip(args.loss_type, loss_weights, strict=True):
        term = reduce(per_pair(loss_type))
        if loss_type == "sft" and wpo is not None:
            term = term * wpo.mean()
        loss = loss + term * loss_weight
    return loss
