"""Packed, prefix-shared preference pairs (arXiv 2410.20305; DESIGN 6): one ordinary forward per batch.

Each pair becomes one sequence ``[prompt, chosen, rejected]``: the prompt is forwarded once, the rejected response's
position ids continue from the prompt's end as if it followed the prompt directly, and the attention mask lets every
response token see its own prompt and, causally, its own response, never the other response. Several pairs pack into
one row up to a token budget, block-diagonal across pairs, with no padding inside a row. Every scored token then sees
exactly the keys, at exactly the positions, of its own unpacked sequence, so its log-prob is the unpacked one; and
because this is one plain forward of the model, it composes with DDP, FSDP2, ZeRO-3, gradient checkpointing and any
PEFT method that does not add virtual tokens.

The head projects only the response tokens: the hidden state before each response token (for a response's first
token, the prompt's last state, shared by the two responses) is gathered and passed with the token to the fused
linear log-prob op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sgpo.architectures import prompt_sharing_blocker
from sgpo.lm_head import head_token_logps

PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, 3


@dataclass
class PackedPairs:
    """A batch of preference pairs packed into rows; see the module docstring.

    ``input_ids``, ``position_ids``, ``pair``, ``segment``: (rows, length). ``pair`` is the pair each token belongs to
    (-1 for the padding that ends a shorter row), ``segment`` its part (PROMPT, CHOSEN, REJECTED or PADDING).
    ``sources``/``targets``: (2 * pairs, width) flat indices into (rows * length) of the hidden state that predicts
    each scored token, and the token; chosen responses first, then rejected, -100 targets past a response's end.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    pair: torch.Tensor
    segment: torch.Tensor
    sources: torch.Tensor
    targets: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return self.sources.shape[0] // 2

    def attention_mask(self, sliding_window: int | None = None, additive: torch.dtype | None = None) -> torch.Tensor:
        """(rows, 1, length, length) mask: True where a query sees a key (what SDPA takes), or with ``additive``
        a float mask of that dtype, 0 where seen and its minimum elsewhere (what eager attention adds to its scores).
        ``sliding_window``: keys fewer than that many positions back, counted in position ids (the distances of the
        unpacked sequence), as a sliding-window layer sees them."""
        seen = self.visible(sliding_window).unsqueeze(1)
        if additive is None:
            return seen
        mask = torch.zeros(seen.shape, dtype=additive, device=seen.device)
        return mask.masked_fill_(~seen, torch.finfo(additive).min)

    def visible(self, sliding_window: int | None = None) -> torch.Tensor:
        """(rows, length, length) bool: whether query i of a row sees key j."""
        length = self.input_ids.shape[1]
        index = torch.arange(length, device=self.input_ids.device)
        same_pair = self.pair.unsqueeze(2) == self.pair.unsqueeze(1)
        causal = index.view(1, length, 1) >= index.view(1, 1, length)
        crossed = (self.segment.unsqueeze(2) == REJECTED) & (self.segment.unsqueeze(1) == CHOSEN)
        seen = same_pair & causal & ~crossed
        if sliding_window is not None:
            seen &= self.position_ids.unsqueeze(2) - self.position_ids.unsqueeze(1) < sliding_window
        # a row's trailing padding shares pair -1, so it sees itself and the padding before it: no query row is empty
        # (an all-masked softmax gives NaN)
        return seen

    def block_mask(self, sliding_window: int | None = None) -> object:
        """The same visibility as a ``flex_attention`` BlockMask (fully masked tiles are skipped)."""
        from torch.nn.attention.flex_attention import create_block_mask

        pair, segment, position = self.pair, self.segment, self.position_ids

        def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            seen = (pair[b, q] == pair[b, k]) & (q >= k)
            seen = seen & ~((segment[b, q] == REJECTED) & (segment[b, k] == CHOSEN))
            if sliding_window is not None:
                seen = seen & (position[b, q] - position[b, k] < sliding_window)
            return seen

        rows, length = self.input_ids.shape
        return create_block_mask(mask_mod, rows, None, length, length, device=self.input_ids.device)


def _row_plan(lengths: Sequence[int], max_tokens: int | None) -> list[list[int]]:
    """Pairs (by index, in order) per row: a new row starts when the next pair would pass ``max_tokens``; a pair
    longer than the budget takes a row alone."""
    rows: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if rows and (max_tokens is None or used + n <= max_tokens):
            rows[-1].append(i)
            used += n
        else:
            rows.append([i])
            used = n
    return rows


def _as_ids(tokens: Sequence[int] | torch.Tensor, name: str, i: int) -> list[int]:
    ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
    if any(not isinstance(t, int) for t in ids):
        raise TypeError(f"{name}[{i}] must hold integer token ids, got {ids[:4]}...")
    return ids


def pack_pairs(
    prompts: Sequence[Sequence[int] | torch.Tensor],
    chosen: Sequence[Sequence[int] | torch.Tensor],
    rejected: Sequence[Sequence[int] | torch.Tensor],
    *,
    max_tokens: int | None = None,
    pad_token_id: int = 0,
    device: torch.device | str | None = None,
) -> PackedPairs:
    """Pack pairs of token ids into rows of ``[prompt, chosen, rejected]`` sequences (see the module docstring).

    ``max_tokens``: the token budget of a row (None: every pair in one row). Rows are right-padded to the longest;
    a response's first token is scored from the prompt's last state, so with an empty prompt it is not scored, as in
    the unpacked forward.
    """
    if not (len(prompts) == len(chosen) == len(rejected)) or not prompts:
        raise ValueError(
            f"prompts, chosen and rejected must be non-empty and of one length, got {len(prompts)}, {len(chosen)} "
            f"and {len(rejected)}"
        )
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive token budget or None, got {max_tokens}")
    triples = [
        (_as_ids(p, "prompts", i), _as_ids(c, "chosen", i), _as_ids(r, "rejected", i))
        for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected, strict=True))
    ]
    for i, (_, c, r) in enumerate(triples):
        if not c and not r:
            raise ValueError(f"pair {i} has an empty chosen and an empty rejected response: nothing to score")
    plan = _row_plan([len(p) + len(c) + len(r) for p, c, r in triples], max_tokens)
    length = max(sum(len(t) for i in row for t in triples[i]) for row in plan)
    shape = (len(plan), length)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    pair = torch.full(shape, -1, dtype=torch.long)
    segment = torch.full(shape, PADDING, dtype=torch.long)
    n = len(triples)
    sequences: list[list[tuple[int, int]]] = [[] for _ in range(2 * n)]  # (source, target) per scored token
    for r, row in enumerate(plan):
        start = 0
        for i in row:
            p, c, rj = triples[i]
            flat = r * length
            spans = ((p, PROMPT, 0), (c, CHOSEN, len(p)), (rj, REJECTED, len(p)))
            offset = start
            for tokens, part, first_position in spans:
                end = offset + len(tokens)
                input_ids[r, offset:end] = torch.tensor(tokens, dtype=torch.long)
                position_ids[r, offset:end] = torch.arange(first_position, first_position + len(tokens))
                pair[r, offset:end] = i
                segment[r, offset:end] = part
                if part != PROMPT:
                    # the state before each token: the prompt's last for the first, the response's own after that
                    before = [flat + start + len(p) - 1] if p and tokens else []
                    before += [flat + j for j in range(offset, end - 1)]
                    scored = tokens if p else tokens[1:]
                    sequences[(part == REJECTED) * n + i] = list(zip(before, scored, strict=True))
                offset = end
            start = offset
    width = max(1, max(len(s) for s in sequences))
    sources = torch.zeros(2 * n, width, dtype=torch.long)
    targets = torch.full((2 * n, width), -100, dtype=torch.long)
    for s, tokens in enumerate(sequences):
        if tokens:
            sources[s, : len(tokens)] = torch.tensor([t[0] for t in tokens])
            targets[s, : len(tokens)] = torch.tensor([t[1] for t in tokens])
    fields = (input_ids, position_ids, pair, segment, sources, targets)
    return PackedPairs(*(f.to(device) if device is not None else f for f in fields))


# the attention implementations that take a custom 4-D mask (or a BlockMask); flash attention takes padding only
PACKED_BACKENDS = ("eager", "sdpa", "flex_attention")
# layer types whose mask is a causal mask, optionally windowed; recurrent or linear layers would leak across pairs
_MASKED_LAYERS = ("full_attention", "sliding_attention")


def unsupported(model: nn.Module) -> str | None:
    """Why ``model`` cannot take packed pairs (an architecture :func:`sgpo.architectures.prompt_sharing_blocker`
    names, its attention backend, or a layer type that takes no causal mask), or None when it can."""
    blocker = prompt_sharing_blocker(model)
    if blocker is not None:
        return blocker
    config = model.config
    backend = getattr(config, "_attn_implementation", None)
    if backend not in PACKED_BACKENDS:
        needed = ", ".join(PACKED_BACKENDS)
        return f"attention backend {backend!r} takes no prefix-sharing mask (packed pairs need {needed})"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    others = sorted(set(getattr(text, "layer_types", None) or ()) - set(_MASKED_LAYERS))
    if others:
        return f"layer types {others} take no causal mask, so packed pairs would see each other"
    return None


def _layer_windows(config: object) -> dict[str, int | None]:
    """The mask each kind of attention layer of ``config``'s model takes: {layer type: sliding window or None}."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None)
    if types:
        return {kind: (window if kind == "sliding_attention" else None) for kind in set(types)}
    use_window = getattr(text, "use_sliding_window", True)
    return {"full_attention": window if use_window else None}


def model_attention_mask(model: nn.Module, packed: PackedPairs) -> object:
    """What ``model``'s forward takes as ``attention_mask`` for ``packed``: a BlockMask under flex_attention, an
    additive float32 mask under eager attention, a boolean 4-D mask otherwise (SDPA); a {layer type: mask} dict where
    the model mixes full and sliding-window layers."""
    reason = unsupported(model)
    if reason is not None:
        raise ValueError(f"model: {reason}")
    config = model.config
    backend = getattr(config, "_attn_implementation", None)
    windows = _layer_windows(config)

    def one(window: int | None) -> object:
        if backend == "flex_attention":
            return packed.block_mask(window)
        return packed.attention_mask(window, additive=torch.float32 if backend == "eager" else None)

    if len(windows) == 1:
        return one(next(iter(windows.values())))
    return {kind: one(window) for kind, window in windows.items()}


def packed_hidden_states(decoder: nn.Module, packed: PackedPairs) -> torch.Tensor:
    """(2 * pairs, width, hidden): the decoder's state before each scored token (past a response's end, where the
    target is -100, the first row's first state, which the head op ignores)."""
    out = decoder(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        attention_mask=model_attention_mask(decoder, packed),
        use_cache=False,
    )
    hidden = out.last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1])[packed.sources]


def packed_token_logps(
    decoder: nn.Module, head: nn.Linear, packed: PackedPairs, *, log_sum_sq_probs: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (2 * pairs, width) of ``packed``'s responses, chosen rows over rejected rows, 0 past each
    response's end (``packed.targets == -100``), through one forward of ``decoder`` (the model's base, as
    :func:`sgpo.lm_head.decoder_and_head` finds it) and ``head``; with ``log_sum_sq_probs`` also
    WPO's log sum_v p_v^2 per token, without gradient."""
    return head_token_logps(
        head, packed_hidden_states(decoder, packed), packed.targets, log_sum_sq_probs=log_sum_sq_probs
    )


def packed_sequence_logps(
    decoder: nn.Module, head: nn.Linear, packed: PackedPairs
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs, (pairs,) float32 each, of ``packed`` (see :func:`packed_token_logps`)."""
    token, _ = packed_token_logps(decoder, head, packed)
    logps = token.sum(dim=1)
    return logps[: packed.num_pairs], logps[packed.num_pairs :]


_PACKED = "sgpo_packed"


def install_packed_forward(model: nn.Module) -> nn.Module:
    """Let ``model(sgpo_packed=packed)`` return :func:`packed_token_logps` of ``packed`` from inside the model's own
    forward, so that the wrappers around it (DDP, FSDP2, PEFT, ``accelerate``'s autocast) and their hooks see one
    ordinary call; ``log_sum_sq_probs=True`` adds WPO's per-token term. Any other call runs the original forward.

    ``model`` is a causal LM whose (decoder, head) :func:`sgpo.lm_head.decoder_and_head` finds,
    or its PEFT wrapper (the patch goes on the base model, which PEFT's forward calls with the keyword arguments it
    does not know). Idempotent; returns the patched module.
    """
    from sgpo.lm_head import decoder_and_head

    if decoder_and_head(model) is None:
        raise ValueError(
            f"model: packed pairs need a plain causal LM (a decoder and a linear head, no virtual tokens, no rescaled "
            f"logits), got {type(model).__name__}"
        )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.forward, "_sgpo_packed", False):
        return base
    original = base.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        packed = kwargs.pop(_PACKED, None)
        if packed is None:
            return original(*args, **kwargs)
        log_sum_sq_probs = bool(kwargs.pop("log_sum_sq_probs", False))
        # what a PEFT wrapper adds to the call (its own defaults) is not the packed forward's business
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if args or kwargs:
            raise TypeError(f"model(sgpo_packed=...) takes no other arguments, got {sorted(kwargs) or len(args)}")
        # looked up on each call: FSDP and PEFT replace modules after the patch
        decoder, head = decoder_and_head(base)
        return packed_token_logps(decoder, head, packed, log_sum_sq_probs=log_sum_sq_probs)

    forward._sgpo_packed = True  # type: ignore[attr-defined]
    base.forward = forward
    return base
