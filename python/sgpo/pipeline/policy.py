"""The policy a round trains: loading it (LoRA or full fine-tuning), saving its checkpoint, scoring responses with it.

Reads ``round_<t-1>/checkpoint/`` (the policy round ``t`` starts from; the base model before any round) and writes
``round_<t>/checkpoint/`` (adapter or full weights, with the tokenizer), atomically.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from sgpo.pipeline import distributed, files, zero
from sgpo.pipeline.context import RunContext

Rows = list[tuple[list[int], list[int]]]


def load_policy(ctx: RunContext, checkpoint: Path | None) -> Any:
    """The trainable policy from ``checkpoint`` (None: the base model with a freshly initialised adapter)."""
    import torch

    from sgpo.models import load_model

    cfg = ctx.cfg.model
    if not cfg.lora:
        model = load_model(checkpoint or ctx.base_path, dtype=cfg.dtype)
    else:
        from peft import LoraConfig, PeftModel, get_peft_model

        model = load_model(ctx.base_path, dtype=cfg.dtype)
        if checkpoint is not None:
            model = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)
        else:
            # the adapter's random init must not depend on what ran before in this process
            torch.manual_seed(ctx.cfg.seed)
            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.lora_target_modules),
                layers_to_transform=lora_layers(ctx, model),
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if cfg.lora:
            model.enable_input_require_grads()
    return model.to(ctx.accelerator.device)


def lora_layers(ctx: RunContext, model: Any) -> list[int] | None:
    """The decoder layers that get adapters: the last ``model.lora_layers`` ones (None: all)."""
    count = ctx.cfg.model.lora_layers
    if count is None:
        return None
    total = model.config.num_hidden_layers
    if count > total:
        raise ValueError(f"model.lora_layers: the model has {total} decoder layers, got {count}")
    return list(range(total - count, total))


def save_checkpoint(ctx: RunContext, model: Any, t: int) -> None:
    """Write ``round_<t>/checkpoint/`` (every process takes part: sharded weights are gathered first)."""
    state_dict = None
    if distributed.is_sharded(ctx.accelerator):
        state_dict = distributed.full_state_dict(model)
    elif zero.is_zero3(ctx.accelerator):
        # the model's own parameters are empty partitions under ZeRO-3
        state_dict = zero.full_state_dict(model, main=ctx.main)
    if ctx.main:
        unwrapped = ctx.accelerator.unwrap_model(model)
        with files.atomic_dir(ctx.round_dir(t) / "checkpoint") as staging:
            unwrapped.save_pretrained(staging, safe_serialization=True, state_dict=state_dict)
            ctx.tokenizer.save_pretrained(staging)
    ctx.barrier()


def encode_rows(ctx: RunContext, prompts: list[Any], responses: list[str]) -> Rows:
    """Token ids and labels of each (prompt, response), as the policy scores and trains on them."""
    from sgpo.pipeline.scoring import encode

    return [
        encode(ctx.tokenizer, p, r, system_prompt=ctx.cfg.model.system_prompt, max_length=ctx.cfg.data.max_length)
        for p, r in zip(prompts, responses, strict=True)
    ]


def response_lengths(ctx: RunContext, prompts: list[Any], responses: list[str]) -> np.ndarray:
    """Response tokens (EOS included) of each (prompt, response), as the log-probs count them."""
    from sgpo.pipeline.scoring import IGNORE_INDEX

    return np.array([sum(x != IGNORE_INDEX for x in labels) for _, labels in encode_rows(ctx, prompts, responses)])


def logps(ctx: RunContext, model: Any, prompts: list[Any], responses: list[str], *, sft: bool = False) -> np.ndarray:
    """Summed response log-probs under ``model`` (under the SFT model when ``sft``)."""
    from sgpo.pipeline.scoring import SequenceScorer, score_rows

    rows = encode_rows(ctx, prompts, responses)
    context: Any = contextlib.nullcontext()
    scorer_model = model
    if sft:
        if ctx.cfg.model.lora:
            context = model.disable_adapter()
        else:
            scorer_model = sft_model(ctx)
    with context:
        return score_rows(
            SequenceScorer(scorer_model),
            rows,
            pad_id=ctx.tokenizer.pad_token_id,
            batch_size=2 * ctx.cfg.train.per_device_batch_size,
            device=ctx.accelerator.device,
        )


def sharded_logps(ctx: RunContext, model: Any, rows: Rows) -> np.ndarray:
    """Log-probs of ``rows`` split over the processes and gathered back in order."""
    from accelerate.utils import gather_object

    from sgpo.pipeline.scoring import SequenceScorer, score_rows

    world, rank = ctx.accelerator.num_processes, ctx.accelerator.process_index
    mine = list(range(rank, len(rows), world))
    values = score_rows(
        SequenceScorer(ctx.accelerator.unwrap_model(model)),
        [rows[i] for i in mine],
        pad_id=ctx.tokenizer.pad_token_id,
        batch_size=2 * ctx.cfg.train.per_device_batch_size,
        device=ctx.accelerator.device,
    )
    out = np.zeros(len(rows), dtype=np.float64)
    for i, v in gather_object(list(zip(mine, values.tolist(), strict=True))):
        out[i] = v
    return out


def sharded_pair_logps(ctx: RunContext, model: Any, chosen: Rows, rejected: Rows) -> np.ndarray:
    """(2, pairs) log-probs of each pair's chosen and rejected row, the pairs split over the processes, each batch
    packed with every prompt once (:func:`sgpo.pipeline.scoring.score_pairs`), gathered back in order."""
    from accelerate.utils import gather_object

    from sgpo.pipeline.scoring import SequenceScorer, score_pairs

    scorer = SequenceScorer(ctx.accelerator.unwrap_model(model))
    if scorer.cannot_pack():
        # the update warns once about the attention backend; the reference takes the padded rows with it
        return sharded_logps(ctx, model, list(chosen) + list(rejected)).reshape(2, len(chosen))
    world, rank = ctx.accelerator.num_processes, ctx.accelerator.process_index
    mine = list(range(rank, len(chosen), world))
    values = score_pairs(
        scorer,
        [chosen[i] for i in mine],
        [rejected[i] for i in mine],
        pad_id=ctx.tokenizer.pad_token_id,
        batch_size=ctx.cfg.train.per_device_batch_size,
        device=ctx.accelerator.device,
    )
    out = np.zeros((2, len(chosen)), dtype=np.float64)
    for i, c, r in gather_object(list(zip(mine, values[0].tolist(), values[1].tolist(), strict=True))):
        out[:, i] = (c, r)
    return out


def sft_model(ctx: RunContext) -> Any:
    """The frozen base model (the reference of a full fine-tuning run), loaded once per run."""
    from sgpo.models import load_model

    if ctx.sft is None:
        ctx.sft = load_model(ctx.base_path, dtype=ctx.cfg.model.dtype).to(ctx.accelerator.device).eval()
    return ctx.sft
