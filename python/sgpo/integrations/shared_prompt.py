"""Sequence log-probs of preference pairs with each prompt forwarded once.

A collated preference batch holds every prompt twice, once before its chosen and once before its rejected response,
and the LM head is usually applied to every position. Here each pair's prompt goes through the decoder once, its key
and value cache is shared by the two responses, and the head projects only response tokens
(:func:`sgpo.ops.fused_linear_sequence_logps`), never holding a (tokens, vocabulary) tile wider than the op's chunk.
The gradient through the shared prompt is the sum of what the two full sequences would send it: the same math as two
separate forwards.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sgpo.lm_head import decoder_and_head, head_token_logps


@dataclass(frozen=True)
class Pair:
    """One preference pair's token ids: the shared prompt and the two responses, unpadded, 1-D."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor


def split_pairs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor
) -> list[Pair] | None:
    """The pairs of a TRL preference batch (chosen rows stacked over rejected rows, right-padded), or None.

    None when some pair's two rows do not start with the same non-empty prompt followed by one run of response tokens
    (a truncated prompt, another collator's layout): those batches need the plain forward.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] % 2:
        return None
    rows = input_ids.shape[0] // 2
    attended, completion = attention_mask.bool(), completion_mask.bool()
    lengths = attended.sum(dim=1)
    prompt_lengths = (attended & ~completion).sum(dim=1)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    prompt_part = positions < prompt_lengths.unsqueeze(1)
    response_part = ~prompt_part & (positions < lengths.unsqueeze(1))
    if not (torch.equal(attended, prompt_part | response_part) and torch.equal(completion, response_part)):
        return None
    pairs = []
    for i in range(rows):
        prompt_length, length = int(prompt_lengths[i]), int(lengths[i])
        rejected_row = i + rows
        if prompt_length < 1 or int(prompt_lengths[rejected_row]) != prompt_length:
            return None
        prompt = input_ids[i, :prompt_length]
        if not torch.equal(prompt, input_ids[rejected_row, :prompt_length]):
            return None
        chosen = input_ids[i, prompt_length:length]
        rejected = input_ids[rejected_row, prompt_length : int(lengths[rejected_row])]
        if chosen.numel() == 0 and rejected.numel() == 0:
            return None
        pairs.append(Pair(prompt, chosen, rejected))
    return pairs


def _cache_argument(decoder: nn.Module) -> str:
    # transformers 5.x renamed past_key_values to cache (the old name warns until 5.40, then goes)
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


@dataclass(frozen=True)
class TokenLogps:
    """Per-token log-probs of a preference batch, chosen rows stacked over rejected rows, 0 off the responses."""

    token: torch.Tensor  # (2n, T)
    mask: torch.Tensor  # (2n, T) bool: response positions
    log_sum_sq: torch.Tensor | None = None  # (2n, T) WPO's log sum_v p_v^2, without gradient


def pair_token_logps(decoder: nn.Module, head: nn.Linear, pair: Pair, *, log_sum_sq_probs: bool = False) -> TokenLogps:
    """The chosen and the rejected response's per-token log-probs given the prompt, rows (2, W)."""
    prompt = pair.prompt.unsqueeze(0)
    device = prompt.device
    out = decoder(input_ids=prompt, use_cache=True)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = out.past_key_values
    last = out.last_hidden_state[:, -1:].expand(2, -1, -1)
    width = max(pair.chosen.numel(), pair.rejected.numel())
    responses = torch.zeros(2, width, dtype=prompt.dtype, device=device)
    mask = torch.zeros(2, width, dtype=torch.long, device=device)
    for row, tokens in enumerate((pair.chosen, pair.rejected)):
        responses[row, : tokens.numel()] = tokens
        mask[row, : tokens.numel()] = 1
    labels = responses.masked_fill(mask == 0, -100)
    if width == 1:
        hidden = last
    else:
        # the last response token predicts nothing, so it is not fed; the prompt's last state predicts the first
        cache.batch_repeat_interleave(2)
        start = prompt.shape[1]
        attention = torch.cat([mask.new_ones(2, start), mask[:, :-1]], dim=1)
        positions = torch.arange(start, start + width - 1, device=device).expand(2, -1)
        rest = decoder(
            input_ids=responses[:, :-1],
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            **{_cache_argument(decoder): cache},
        ).last_hidden_state
        hidden = torch.cat([last, rest], dim=1)
    token, log_sum_sq = head_token_logps(head, hidden, labels, log_sum_sq_probs=log_sum_sq_probs)
    return TokenLogps(token, mask.bool(), log_sum_sq)


def pairs_token_logps(
    model: nn.Module, pairs: list[Pair], parts: Any = None, *, log_sum_sq_probs: bool = False
) -> list[TokenLogps]:
    """:func:`pair_token_logps` of each pair, unpadded: a pair's sums do not depend on the batch it is in.

    ``parts`` is ``decoder_and_head(model)`` when the caller already has it.
    """
    decoder, head = parts if parts is not None else decoder_and_head(model)
    return [pair_token_logps(decoder, head, pair, log_sum_sq_probs=log_sum_sq_probs) for pair in pairs]


def pairs_logps(model: nn.Module, pairs: list[Pair], parts: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs, (n,) each, of ``pairs`` through ``model`` (see :func:`pair_token_logps`)."""
    logps = torch.stack([tokens.token.sum(dim=1) for tokens in pairs_token_logps(model, pairs, parts)])
    return logps[:, 0], logps[:, 1]
