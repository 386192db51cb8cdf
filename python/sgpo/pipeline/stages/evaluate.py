"""Evaluate: the gold judge (``evaluate.judge``) compares round ``t``'s policy with the starting model.

Both answer the held-out prompts of ``evaluate.prompts`` (a generated track, or a prompt file) greedily, with batched
``generate`` (``evaluate.batch_size`` prompts a call) on the device the policy trains on, under autocast to
``evaluate.dtype`` (``auto``: bfloat16 on a GPU, float32 on the CPU). Reads the checkpoint round ``t`` saved. Writes:

    output_dir/eval_baseline.jsonl        the starting model's answers {"prompt", "response"}, once per run
    output_dir/round_<t>/eval_responses.jsonl   the round's policy's answers
    <name>_parts/                         one part file per chunk of prompts while either is sampled

and returns the round's evaluation metrics (the win rate with ties as 1/2, the LC win rate, wins / ties / losses,
the mean scores, the paired score difference with its 95% bootstrap interval), which the round's ``metrics.json``
keeps under ``eval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sgpo.pipeline import files, policy
from sgpo.pipeline.context import RunContext


def held_out_prompts(ctx: RunContext) -> list[Any]:
    """The first ``evaluate.num_prompts`` prompts of ``evaluate.prompts``."""
    from sgpo.evaluation.sources import TRACKS, load_prompts
    from sgpo.tables import load_table, prompts_from_table

    cfg = ctx.cfg.evaluate
    if cfg.prompts in TRACKS:
        # a generated track's held-out split (the hidden track's open prompts, or verifiable instructions)
        return load_prompts(cfg.prompts, cfg.num_prompts, split="test", option="evaluate.prompts")
    return prompts_from_table(load_table(cfg.prompts, split=cfg.split), ctx.cfg.data, cfg.prompts)[: cfg.num_prompts]


def evaluate(ctx: RunContext, t: int, model: Any) -> dict[str, Any]:
    """Round ``t``'s policy ``model`` against the starting model on the held-out prompts (``{}`` without them)."""
    from sgpo.evaluation.comparison import compare_responses
    from sgpo.pipeline.judges import build_judge

    cfg = ctx.cfg.evaluate
    if cfg.prompts is None:
        return {}
    prompts = held_out_prompts(ctx)
    baseline_path = ctx.out / "eval_baseline.jsonl"
    if not ctx.done(baseline_path):
        if ctx.cfg.model.lora:
            with ctx.accelerator.unwrap_model(model).disable_adapter():
                answer(ctx, baseline_path, ctx.accelerator.unwrap_model(model), prompts)
        else:
            answer(ctx, baseline_path, policy.sft_model(ctx), prompts)
    baseline = [r["response"] for r in files.read_jsonl(baseline_path)]
    candidates = answer(ctx, ctx.round_dir(t) / "eval_responses.jsonl", ctx.accelerator.unwrap_model(model), prompts)
    judge = build_judge(cfg.judge.name, dict(cfg.judge.options), None)
    compared = compare_responses(judge, prompts, candidates, baseline)
    report = {k: float(v) for k, v in vars(compared.win).items()}
    paired = compared.paired
    report.update(
        mean_score=float(np.mean(compared.candidate_scores)),
        baseline_mean_score=float(np.mean(compared.baseline_scores)),
        prompts=len(prompts),
        # the mean per-prompt gold-score difference from the starting model and its 95% bootstrap interval
        difference=float(paired.difference.mean),
        difference_low=float(paired.difference.low),
        difference_high=float(paired.difference.high),
    )
    return report


def answer(ctx: RunContext, path: Path, model: Any, prompts: list[Any]) -> list[str]:
    """``model``'s greedy answer to each prompt, written to ``path`` once (resumed chunk by chunk)."""
    import torch

    from sgpo.devices import resolve_dtype
    from sgpo.generation import generate_responses

    g, cfg = ctx.cfg.generation, ctx.cfg.evaluate
    max_new_tokens = cfg.max_new_tokens or g.max_new_tokens
    batch_size = cfg.batch_size or g.batch_size
    device = ctx.accelerator.device
    dtype = resolve_dtype(cfg.dtype, device.type, option="evaluate.dtype")
    parts = path.parent / f"{path.stem}_parts"
    with ctx.stage([path], parts=parts) as done:
        if not done:

            def compute(lo: int, hi: int) -> list[str]:
                precision = torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32")
                with precision:
                    out = generate_responses(
                        model,
                        ctx.tokenizer,
                        prompts[lo:hi],
                        prompt_indices=list(range(lo, hi)),
                        max_new_tokens=max_new_tokens,
                        temperature=0.0,
                        batch_size=batch_size,
                        system_prompt=ctx.cfg.model.system_prompt,
                    )
                return [r[0] for r in out]

            responses = ctx.chunked(parts, len(prompts), batch_size, compute, f"evaluate {path.stem}")
            if ctx.main:
                files.write_jsonl(path, [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)])
    return [r["response"] for r in files.read_jsonl(path)]
