"""Scoring responses with a causal LM: token rows of (prompt, response) and their summed log-probs.

A row is the templated prompt followed by the response and EOS, with labels on the response tokens only; the
leader trains on such rows and every judge that reads the policy (the implicit reward, the reference log-probs,
``sgpo eval``'s KL) scores them through :class:`SequenceScorer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from torch import nn

import sgpo.ops
from sgpo.generation import format_prompt
from sgpo.lm_head import head_sequence_logps
from sgpo.packing import PackedPairs, pack_pairs, packed_hidden_states, unsupported

IGNORE_INDEX = -100


def encode(
    tokenizer: Any, prompt: Any, response: str, *, system_prompt: str | None, max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids of the templated prompt followed by the response and EOS, and labels aligned with them.

    ``labels[t]`` is the token at ``t + 1`` when it belongs to the response, else ``IGNORE_INDEX``: logits at position
    ``t`` line up with ``labels[t]`` without a shift. The response is cut to fit ``max_length`` tokens in all.
    """
    prompt_ids = tokenizer(format_prompt(tokenizer, prompt, system_prompt), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    response_ids = response_ids[: max(1, max_length - len(prompt_ids))]
    ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * (len(prompt_ids) - 1) + response_ids + [IGNORE_INDEX]
    return ids, labels


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention_mask[r, : len(ids)] = 1
        labels[r, : len(lab)] = torch.tensor(lab)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class SequenceScorer(nn.Module):
    """Wraps a causal LM so that its forward returns per-sequence log-probs of the labelled tokens.

    Going through one module's forward keeps DDP/FSDP hooks in place while the scorer skips the (B, T, V) logits of
    the prompt: the fused op never materialises them, and the fallback projects only the columns that hold labels.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def _base(self) -> nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def cannot_pack(self) -> str | None:
        """Why the model cannot take packed pairs (:func:`sgpo.packing.unsupported`), or None when it can."""
        return unsupported(self._base())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **packed: torch.Tensor,
    ) -> torch.Tensor:
        """Per-row log-probs of right-padded rows (``attention_mask``, ``labels``), or with the fields of
        :class:`sgpo.packing.PackedPairs` as keywords (``input_ids``, ``position_ids``, ``pair``, ``segment``,
        ``sources``, ``targets``; from :func:`pack_rows`) the chosen then the rejected log-probs of packed pairs."""
        base = self._base()
        head = base.get_output_embeddings()
        if packed:
            pairs = PackedPairs(input_ids=input_ids, **packed)
            hidden, labels = packed_hidden_states(base.get_decoder(), pairs), pairs.targets
        else:
            hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            labelled = (labels != IGNORE_INDEX).any(0).nonzero()
            start = int(labelled[0]) if len(labelled) else labels.shape[1] - 1
            hidden, labels = hidden[:, start:], labels[:, start:]
        # ZeRO-3 swaps the head's weight for a gathered one only inside its own forward: there the plain head runs
        if not hasattr(head.weight, "ds_id"):
            return head_sequence_logps(head, hidden, labels, ignore_index=IGNORE_INDEX)
        return sgpo.ops.sequence_logps(head(hidden), labels, ignore_index=IGNORE_INDEX)

    @property
    def _no_split_modules(self) -> list[str] | None:
        # accelerate's FSDP wrap policy reads the decoder layer classes from the module it prepares
        return getattr(self._base(), "_no_split_modules", None)


def pack_rows(
    chosen: Sequence[tuple[list[int], list[int]]], rejected: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> dict[str, torch.Tensor] | None:
    """The pairs of :func:`encode` rows (each chosen row with the rejected row of the same prompt) packed as
    [prompt, chosen, rejected] sequences (:mod:`sgpo.packing`), as :class:`SequenceScorer` keywords; None when some
    pair's two rows do not share their prompt tokens (then score the rows as they are)."""
    parts: list[tuple[list[int], list[int], list[int]]] = []
    for (c_ids, c_labels), (r_ids, r_labels) in zip(chosen, rejected, strict=True):
        # labels[t] is the token at t + 1 on the response: the prompt is everything up to the first labelled t
        c_start = next(t for t, label in enumerate(c_labels) if label != IGNORE_INDEX) + 1
        r_start = next(t for t, label in enumerate(r_labels) if label != IGNORE_INDEX) + 1
        if c_start != r_start or c_ids[:c_start] != r_ids[:r_start]:
            return None
        parts.append((c_ids[:c_start], c_ids[c_start:], r_ids[r_start:]))
    prompts, chosen_ids, rejected_ids = zip(*parts, strict=True)
    # rows as long as the longest pair: shorter pairs share a row, none is cut
    budget = max(sum(len(x) for x in part) for part in parts)
    packed = pack_pairs(prompts, chosen_ids, rejected_ids, max_tokens=budget, pad_token_id=pad_id)
    return {f.name: getattr(packed, f.name) for f in fields(packed)}


@torch.no_grad()
def score_rows(
    scorer: nn.Module, rows: Sequence[tuple[list[int], list[int]]], *, pad_id: int, batch_size: int, device: Any
) -> np.ndarray:
    """Per-row log-probs (float64) computed ``batch_size`` rows at a time, longest first to limit padding."""
    was_training = scorer.training
    scorer.eval()
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out = np.zeros(len(rows), dtype=np.float64)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in chunk], pad_id).items()}
            out[chunk] = scorer(**batch).double().cpu().numpy()
    finally:
        scorer.train(was_training)
    return out


@torch.no_grad()
def score_pairs(
    scorer: nn.Module,
    chosen: Sequence[tuple[list[int], list[int]]],
    rejected: Sequence[tuple[list[int], list[int]]],
    *,
    pad_id: int,
    batch_size: int,
    device: Any,
) -> np.ndarray:
    """(2, pairs) log-probs (float64) of each pair's chosen and rejected row, ``batch_size`` pairs at a time, longest
    first, each batch packed with every prompt once (:func:`pack_rows`) or, where it cannot be, as padded rows."""
    was_training = scorer.training
    scorer.eval()
    order = sorted(range(len(chosen)), key=lambda i: -(len(chosen[i][0]) + len(rejected[i][0])))
    out = np.zeros((2, len(chosen)), dtype=np.float64)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            pair_rows = [chosen[i] for i in chunk], [rejected[i] for i in chunk]
            inputs = pack_rows(*pair_rows, pad_id) or collate(pair_rows[0] + pair_rows[1], pad_id)
            logps = scorer(**{k: v.to(device) for k, v in inputs.items()}).double().cpu().numpy()
            out[:, chunk] = logps.reshape(2, len(chunk))
    finally:
        scorer.train(was_training)
    return out
