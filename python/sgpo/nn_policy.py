"""What every fused linear preference module computes from the policy: per-sequence log-probs, the chosen NLL and
Liger's logit means, from one pass of :func:`sgpo.ops.fused_linear_token_logps`."""

from __future__ import annotations

from typing import NamedTuple

import torch

from sgpo.ops import fused_linear_token_logps


class PolicyLogps(NamedTuple):
    chosen: torch.Tensor  # (n,) summed (or averaged) log-probs of the chosen rows
    rejected: torch.Tensor
    token: torch.Tensor  # (2n, T) per-token log-probs, 0 at ignored targets
    counts: torch.Tensor  # (2n,) counted targets per row


def check_stacked(_input: torch.Tensor) -> int:
    """The number of pairs of a chosen-over-rejected stack, or a ValueError naming ``_input``."""
    if _input.dim() != 3 or _input.shape[0] % 2 or _input.shape[0] == 0:
        raise ValueError(
            "_input: expected shape (2 * n_pairs, T, H) with chosen rows stacked over rejected rows, "
            f"got {tuple(_input.shape)}"
        )
    return _input.shape[0] // 2


def policy_logps(
    lin_weight: torch.Tensor,
    _input: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    ignore_index: int,
    average_log_prob: bool,
    chunk_tokens: int | None,
) -> PolicyLogps:
    n_pairs = check_stacked(_input)
    token = fused_linear_token_logps(
        _input, lin_weight, target, bias=bias, ignore_index=ignore_index, chunk_tokens=chunk_tokens
    )
    counts = (target != ignore_index).sum(-1)
    logps = token.sum(-1)
    if average_log_prob:
        logps = logps / counts.clamp(min=1).to(logps.dtype)
    return PolicyLogps(logps[:n_pairs], logps[n_pairs:], token, counts)


def chosen_nll(
    policy: PolicyLogps,
    lin_weight: torch.Tensor,
    _input: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    ignore_index: int,
    chunk_tokens: int | None,
    nll_target: torch.Tensor | None = None,
) -> torch.Tensor:
    """The chosen rows' NLL per counted token (of ``nll_target`` when given, Liger's ORPO option)."""
    n_pairs = policy.chosen.shape[0]
    if nll_target is None:
        return -policy.token[:n_pairs].sum() / policy.counts[:n_pairs].sum().clamp(min=1)
    chosen_target = nll_target[:n_pairs]
    token = fused_linear_token_logps(
        _input[:n_pairs], lin_weight, chosen_target, bias=bias, ignore_index=ignore_index, chunk_tokens=chunk_tokens
    )
    return -token.sum() / (chosen_target != ignore_index).sum().clamp(min=1)


# rows of the head summed at a time for the logit means
_SUM_ROWS = 8192


@torch.no_grad()
def logits_means(
    lin_weight: torch.Tensor, _input: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Liger's chosen and rejected logit means, over every position and the whole vocabulary, without a projection:
    sum_v (h . w_v + b_v) = h . sum_v w_v + sum_v b_v."""
    n_pairs, seq_len = _input.shape[0] // 2, _input.shape[1]
    # the head summed in float32 a block of rows at a time (a float32 copy of a Llama-3 head in bfloat16 is 2 GB)
    column_sums = torch.zeros(lin_weight.shape[1], dtype=torch.float32, device=lin_weight.device)
    for start in range(0, lin_weight.shape[0], _SUM_ROWS):
        column_sums += lin_weight[start : start + _SUM_ROWS].float().sum(0)
    row_sums = _input.float().sum(1) @ column_sums
    if bias is not None:
        row_sums = row_sums + seq_len * bias.float().sum()
    scale = n_pairs * seq_len * lin_weight.shape[0]
    return row_sums[:n_pairs].sum() / scale, row_sums[n_pairs:].sum() / scale


def liger_aux(
    policy: PolicyLogps,
    lin_weight: torch.Tensor,
    _input: torch.Tensor,
    bias: torch.Tensor | None,
    nll: torch.Tensor,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The auxiliary outputs of Liger's fused pair losses, in its order: chosen and rejected log-probs, their logits'
    means, the NLL term, the chosen and rejected rewards."""
    chosen_logits_mean, rejected_logits_mean = logits_means(lin_weight, _input, bias)
    return (
        policy.chosen.detach(),
        policy.rejected.detach(),
        chosen_logits_mean,
        rejected_logits_mean,
        nll.detach(),
        chosen_rewards,
        rejected_rewards,
    )
