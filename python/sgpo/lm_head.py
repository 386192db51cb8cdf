"""A causal LM's decoder and LM head, and the fused linear log-prob ops through that head, under FSDP2 and DeepSpeed
ZeRO-3 too.

Under FSDP2 a resharded head's weight is a shard (a DTensor): the op then runs as the head's own forward, where FSDP
gathers the weight and registers the hooks that reduce-scatter its gradient. While the unit is gathered (inside the
FSDP root's forward, or after a forward that left it unsharded, as accelerate leaves the final norm + head unit) the
weight is a full tensor and the op takes it directly: a second call of a unit's module would reshard the unit after its
backward, before the modules it shares the unit with run theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import sgpo

# config attributes by which a model rescales or caps its logits; sgpo's head op applies neither
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(decoder stack, LM head) of a plain causal LM (or the base of a PEFT model), or None where the shared-prompt
    forward would not give the model's own log-probs: prompt-learning PEFT (virtual tokens), encoder-decoders,
    multimodal wrappers, a head that is not a plain ``nn.Linear`` (a LoRA-wrapped head), rescaled or capped logits."""
    active = getattr(model, "active_peft_config", None)
    if active is not None:
        if active.is_prompt_learning:
            return None
        model = model.get_base_model()
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or config.get_text_config() is not config:
        return None
    if any(getattr(config, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    head = model.get_output_embeddings()
    decoder = getattr(model, "base_model", None)
    # a plain linear head, also as FSDP2's sharded subclass of it; not a LoRA-wrapped or otherwise custom head
    plain = isinstance(head, nn.Linear) and type(head).forward is nn.Linear.forward
    if not plain or decoder is None or decoder is model:
        return None
    return decoder, head


def _through_head(head: nn.Module, op: Callable[[torch.Tensor], Any], hidden: torch.Tensor) -> Any:
    from torch.distributed.tensor import DTensor

    # DeepSpeed ZeRO-3 partitions every parameter (``ds_id``) and gathers a module's only around its own forward and
    # backward, as FSDP2 does for a resharded unit: the op must run as the head's forward there too
    sharded = isinstance(head.weight, DTensor) or hasattr(head.weight, "ds_id")
    if not sharded:
        return op(hidden)
    # an instance attribute shadows the class's forward for this one call; the module's hooks still run around it
    head.forward = op
    try:
        return head(hidden)
    finally:
        del head.forward


def head_token_logps(
    head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, *, log_sum_sq_probs: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (and WPO's log sum_v p_v^2, without gradient) of ``hidden`` through the linear ``head``:
    :func:`sgpo.ops.fused_linear_token_logps` with the head's full weight."""

    def op(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = sgpo.ops.fused_linear_token_logps(
            h, head.weight, labels, bias=head.bias, log_sum_sq_probs=log_sum_sq_probs
        )
        return out if log_sum_sq_probs else (out, None)

    return _through_head(head, op, hidden)


def head_sequence_logps(
    head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100
) -> torch.Tensor:
    """:func:`sgpo.ops.fused_linear_sequence_logps` of ``hidden`` through the linear ``head``, with its full weight."""

    def op(h: torch.Tensor) -> torch.Tensor:
        return sgpo.ops.fused_linear_sequence_logps(h, head.weight, labels, bias=head.bias, ignore_index=ignore_index)

    return _through_head(head, op, hidden)
