"""Generate (SSAPO Alg. 1 step 2): sample ``generation.num_samples`` responses per new prompt from the policy pi_t.

Reads the round's prompts from the run's data (``data.prompts``) and the policy round ``t`` starts from. Writes, in
``round_<t>/``:

    prompts.jsonl          the round's prompts as they fit data.max_prompt_length: {"index", "prompt"}
    prompt_counts.json     how many prompts there were, and how many were truncated or skipped
    generate_parts/        one part file per chunk of prompts while the stage runs (removed at the end)
    generations.jsonl      {"prompt", "responses"} per prompt: the stage's output, shared through cache_dir

Sample ``j`` of prompt ``i`` draws from its own seed (``seed * 1000 + t``, ``i``, ``j``), so the chunks and the number
of processes do not change what is sampled. With vLLM (``generation.backend``, options ``generation.vllm``) the main
process samples from a merged copy of the policy (``round_<t>/vllm_model/``, removed afterwards) while the others
wait; the copy is written from a fresh state dict, so the live policy keeps its adapter and its weights bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sgpo.pipeline import files
from sgpo.pipeline.context import RunContext


def round_prompts(ctx: RunContext, t: int) -> tuple[list[Any], dict[str, int]]:
    """Round ``t``'s prompts that fit ``data.max_prompt_length`` (written once) and their counts."""
    from sgpo.pipeline.data import fit_prompts

    path = ctx.round_dir(t) / "prompts.jsonl"
    if not ctx.done(path):
        prompts, indices, counts = fit_prompts(
            ctx.tokenizer, ctx.data.round_prompts[t - 1], ctx.cfg.data, ctx.cfg.model.system_prompt
        )
        if not prompts:
            raise ValueError(f"data.max_prompt_length: every prompt of round {t} is too long and was skipped")
        if ctx.main:
            files.write_json(ctx.round_dir(t) / "prompt_counts.json", counts)
            files.write_jsonl(path, [{"index": i, "prompt": p} for i, p in zip(indices, prompts, strict=True)])
        ctx.barrier()
    rows = files.read_jsonl(path)
    return [r["prompt"] for r in rows], files.read_json(ctx.round_dir(t) / "prompt_counts.json")


def generate(ctx: RunContext, t: int, model: Any, prompts: list[Any]) -> list[list[str]]:
    """The responses to each prompt, sampled once per round (resumed, or copied from ``cache_dir``)."""
    g = ctx.cfg.generation
    round_dir = ctx.round_dir(t)
    path = round_dir / "generations.jsonl"
    seed = ctx.cfg.seed * 1000 + t
    vllm = use_vllm(ctx)
    # vLLM's memory share, parallelism and length limit do not change what is sampled: they stay out of the cache key
    settings = {k: v for k, v in asdict(g).items() if k != "vllm"}
    inputs = {"prompts": prompts, "generation": settings, "seed": seed, "vllm": vllm}
    parts = round_dir / "generate_parts"
    with ctx.stage([path], parts=parts, shared_as="generate", t=t, inputs=lambda: inputs) as done:
        if done:
            return [r["responses"] for r in files.read_jsonl(path)]
        responses = _sample_vllm(ctx, t, model, prompts, seed) if vllm else _sample(ctx, t, model, prompts, seed)
        if ctx.main:
            files.write_jsonl(path, [{"prompt": p, "responses": r} for p, r in zip(prompts, responses, strict=True)])
    return responses


def use_vllm(ctx: RunContext) -> bool:
    from sgpo.generation import vllm_available

    # an unusable 'vllm' was refused before any model loaded (distributed.check_backends)
    backend = ctx.cfg.generation.backend
    return backend == "vllm" or (backend == "auto" and vllm_available())


def _sample(ctx: RunContext, t: int, model: Any, prompts: list[Any], seed: int) -> list[list[str]]:
    """transformers' generate, chunk by chunk over the processes."""
    from sgpo.generation import generate_responses

    g = ctx.cfg.generation

    def compute(lo: int, hi: int) -> list[list[str]]:
        return generate_responses(
            model,
            ctx.tokenizer,
            prompts[lo:hi],
            prompt_indices=list(range(lo, hi)),
            num_samples=g.num_samples,
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            seed=seed,
            batch_size=g.batch_size,
            system_prompt=ctx.cfg.model.system_prompt,
        )

    per_chunk = max(1, g.batch_size // g.num_samples)
    return ctx.chunked(ctx.round_dir(t) / "generate_parts", len(prompts), per_chunk, compute, f"generate r{t}")


def _sample_vllm(ctx: RunContext, t: int, model: Any, prompts: list[Any], seed: int) -> list[list[str]]:
    """vLLM samples on the main process from a merged copy of the policy; the others wait."""
    from sgpo.export import save_merged
    from sgpo.generation import generate_responses_vllm
    from sgpo.pipeline.context import remove

    g = ctx.cfg.generation
    merged = ctx.round_dir(t) / "vllm_model"
    responses: list[list[str]] = []
    if ctx.main:
        with files.atomic_dir(merged) as staging:
            save_merged(ctx.accelerator.unwrap_model(model), ctx.tokenizer, staging)
        responses = generate_responses_vllm(
            str(merged),
            prompts,
            num_samples=g.num_samples,
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            seed=seed,
            system_prompt=ctx.cfg.model.system_prompt,
            gpu_memory_utilization=g.vllm.gpu_memory_utilization,
            tensor_parallel_size=g.vllm.tensor_parallel_size,
            max_model_len=g.vllm.max_model_len,
        )
        remove(merged)
    ctx.barrier()
    return responses
