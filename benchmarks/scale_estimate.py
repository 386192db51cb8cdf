"""Memory per GPU and wall time per stage of the ``mistral-7b_ssapo`` recipe on 8 x 80 GB H100s: an estimate from
FLOP and byte counts, not a measurement. Nothing here has run at 7B; docs/scale.md shows the output.

Training counts 8 N FLOPs per token (6 N, plus the forward that gradient checkpointing runs again), a forward 2 N, a
decode step the bytes it reads (bf16 weights and the KV cache) or its FLOPs, whichever takes longer. Model states are
16 bytes per parameter (bf16 weights and gradients, float32 master weights and Adam's two moments), divided over the
GPUs as each engine divides them. The recipe's settings are read from the recipe; every other number is a constant
below, printed with the table. The follower's time is interpolated from docs/performance.md's measurements.

    python benchmarks/scale_estimate.py
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from sgpo.pipeline import load_config

RECIPE = "mistral-7b_ssapo"
GB = 1e9
# Mistral-7B (zephyr-7b-sft-full, the recipe's model, has its shapes): parameters, layers, hidden size, KV heads
PARAMS, LAYERS, HIDDEN, KV_HEADS, HEAD_DIM = 7.24e9, 32, 4096, 8, 128
WEIGHTS = 2 * PARAMS  # bytes in bf16
KV_PER_TOKEN = 2 * LAYERS * KV_HEADS * HEAD_DIM * 2  # keys and values, bf16
SETTINGS: list[tuple[str, float, str]] = [
    ("GPUS", 8, "GPUs, one process each"),
    ("GPU_GB", 80, "memory per GPU (GB); H100 SXM data sheet"),
    ("PEAK_FLOPS", 989e12, "dense bf16 FLOP/s per GPU; H100 SXM data sheet"),
    ("HBM_BYTES_PER_S", 3.35e12, "memory bandwidth per GPU; H100 SXM data sheet"),
    ("NVLINK_BYTES_PER_S", 360e9, "all-gather / reduce-scatter bus bandwidth per GPU (assumed)"),
    ("TRAIN_UTILISATION", 0.35, "share of peak the 8 N training FLOPs reach (assumed)"),
    ("FORWARD_UTILISATION", 0.40, "share of peak of scoring forwards and prefill (assumed)"),
    ("DECODE_BANDWIDTH", 0.70, "share of HBM bandwidth a decode step's reads reach (assumed)"),
    ("HF_STEP_S", 0.025, "per-step overhead of transformers' eager generate, s (assumed)"),
    ("VLLM_STEP_S", 0.002, "per-step overhead of vLLM's decode, s (assumed)"),
    ("PROMPT_TOKENS", 200, "mean templated UltraFeedback prompt, tokens (assumed)"),
    ("OVERHEAD_GB", 3, "CUDA context, NCCL buffers, allocator slack per GPU (assumed)"),
    ("ACTIVATION_BYTES", 34, "bytes per token and hidden unit of one layer's forward (Korthikanti et al. 2022)"),
    ("ZERO3_LIVE_PARAMS", 1e9, "DeepSpeed's default stage3_max_live_parameters"),
    ("SEED_POOL", 61135, "rows of UltraFeedback's train_prefs; data.seed_fraction of them are round 0's pairs"),
    ("RM_PARAMS", 435e6, "parameters of the evaluation's reward model (DeBERTa-v3-large)"),
    ("PAPER_S", 5.5 / 20, "the paper's SLSQP follower per group of 100, s (calibrated)"),
]
S: dict[str, float] = {name: value for name, value, _ in SETTINGS}
# sgpo's C++ follower, probability space, max_shift 0.01 (the recipe's), 2 CPU cores: n -> ms (docs/performance.md)
FOLLOWER_MS = {2_000: 0.198, 60_000: 4.8, 1_000_000: 44.8, 10_000_000: 612.0}
ENGINES = ("ZeRO-3", "ZeRO-2", "FSDP2", "DDP")


def train_flops(tokens: float, *, checkpointing: bool = True) -> float:
    return (8 if checkpointing else 6) * PARAMS * tokens


def round_prompts(cfg: Any) -> list[int]:
    per_round = cfg.data.prompts_per_round
    return list(per_round) if isinstance(per_round, list) else [per_round] * cfg.rounds


def follower_seconds(n: int) -> float:
    """The measured follower time, interpolated linearly in log n and log time between the measured sizes."""
    sizes = sorted(FOLLOWER_MS)
    lo = max([s for s in sizes if s <= n], default=sizes[0])
    hi = min([s for s in sizes if s >= n], default=sizes[-1])
    if lo == hi:
        return FOLLOWER_MS[lo] / 1e3 * n / lo
    share = math.log(n / lo) / math.log(hi / lo)
    return math.exp((1 - share) * math.log(FOLLOWER_MS[lo]) + share * math.log(FOLLOWER_MS[hi])) / 1e3


def decode_step(rows: int, context: float, overhead: float) -> float:
    """One decode step of ``rows`` sequences at a mean ``context``: its reads or its FLOPs, plus a fixed overhead."""
    reads = (WEIGHTS + rows * context * KV_PER_TOKEN) / (S["HBM_BYTES_PER_S"] * S["DECODE_BANDWIDTH"])
    return max(reads, 2 * PARAMS * rows / (S["PEAK_FLOPS"] * S["FORWARD_UTILISATION"])) + overhead


def forward_seconds(tokens: float, gpus: float) -> float:
    return 2 * PARAMS * tokens / (gpus * S["PEAK_FLOPS"] * S["FORWARD_UTILISATION"])


def hf_generate_seconds(prompts: int, samples: int, batch: int, new_tokens: int, gpus: int) -> float:
    """transformers' generate: chunks of ``batch`` (prompt, sample) rows dealt to the processes in turn."""
    chunks = math.ceil(prompts / max(1, batch // samples))
    per_chunk = forward_seconds(batch * S["PROMPT_TOKENS"], 1) + new_tokens * decode_step(
        batch, S["PROMPT_TOKENS"] + new_tokens / 2, S["HF_STEP_S"]
    )
    return math.ceil(chunks / gpus) * per_chunk


def vllm_slots(cfg: Any) -> int:
    """Sequences one engine holds at once: its memory share less the weights, over a sequence's KV cache."""
    g = cfg.generation
    budget = g.vllm.gpu_memory_utilization * S["GPU_GB"] * GB - WEIGHTS
    return int(budget // (KV_PER_TOKEN * (S["PROMPT_TOKENS"] + g.max_new_tokens)))


def vllm_generate_seconds(cfg: Any, prompts: int) -> float:
    """One engine on the main process; a prompt's samples share its prefill."""
    g = cfg.generation
    if g.vllm.tensor_parallel_size != 1:
        raise ValueError(f"generation.vllm.tensor_parallel_size: 1 is modelled, got {g.vllm.tensor_parallel_size}")
    rows = prompts * g.num_samples
    slots = min(rows, vllm_slots(cfg))
    step = decode_step(slots, S["PROMPT_TOKENS"] + g.max_new_tokens / 2, S["VLLM_STEP_S"])
    return forward_seconds(prompts * S["PROMPT_TOKENS"], 1) + math.ceil(rows / slots) * g.max_new_tokens * step


def update_seconds(cfg: Any, pairs: int, epochs: int, engine: str, gpus: int, reference: bool) -> float:
    """Packed pairs (every prompt once); the longer of compute and the engine's collectives (assumed overlapped)."""
    t = cfg.train
    # every response as long as generation.max_new_tokens: an upper bound
    tokens = pairs * (S["PROMPT_TOKENS"] + 2 * cfg.generation.max_new_tokens)
    flops = train_flops(tokens * epochs) + (2 * PARAMS * tokens if reference else 0)
    compute = flops / (gpus * S["PEAK_FLOPS"] * S["TRAIN_UTILISATION"])
    steps = math.ceil(pairs / t.batch_size) * epochs
    micro = math.ceil(t.batch_size / (gpus * t.per_device_batch_size))
    # full-weight collectives per micro-batch: ZeRO-3 gathers for the forward, the recomputed forward and the
    # backward and reduce-scatters every micro-batch; FSDP2 gathers twice and reduce-scatters once a step (no_sync);
    # ZeRO-2 reduce-scatters and gathers the stepped weights once a step; DDP all-reduces (two passes) once a step
    per_micro = {"ZeRO-3": 4, "FSDP2": 2 + 1 / micro, "ZeRO-2": 1 + 1 / micro, "DDP": 2 / micro}[engine]
    comm = steps * micro * per_micro * WEIGHTS * (gpus - 1) / gpus / S["NVLINK_BYTES_PER_S"]
    return max(compute, comm)


def evaluate_seconds(cfg: Any, models: int, gpus: int) -> float:
    e = cfg.evaluate
    new_tokens = e.max_new_tokens or cfg.generation.max_new_tokens
    answers = models * hf_generate_seconds(e.num_prompts, 1, e.batch_size, new_tokens, gpus)
    scored = 2 * e.num_prompts * (S["PROMPT_TOKENS"] + new_tokens)
    return answers + 2 * S["RM_PARAMS"] * scored / (S["PEAK_FLOPS"] * S["FORWARD_UTILISATION"])


def update_memory(cfg: Any, engine: str, gpus: int) -> float:
    """Peak bytes per GPU while a round trains (rounds 1-3: the frozen SFT model is resident too)."""
    t, d = cfg.train, cfg.data
    tokens = t.per_device_batch_size * 2 * d.max_length  # a packed pair is at most prompt + 2 responses
    # the checkpointed layer inputs, and one layer's forward while it is recomputed
    activations = LAYERS * HIDDEN * 2 * tokens + S["ACTIVATION_BYTES"] * HIDDEN * tokens
    states = {
        "ZeRO-3": 16 * PARAMS / gpus + 2 * S["ZERO3_LIVE_PARAMS"],
        "ZeRO-2": 2 * PARAMS + 14 * PARAMS / gpus,
        "FSDP2": 16 * PARAMS / gpus + 2 * 2 * PARAMS / LAYERS,  # a layer gathered, the next one prefetched
        "DDP": 16 * PARAMS,
    }[engine]
    training = states + activations
    if engine == "FSDP2":
        # accelerate casts the whole model to float32 on every GPU before it shards it
        training = max(training, 4 * PARAMS)
    return training + WEIGHTS + S["OVERHEAD_GB"] * GB


def stage_memory(cfg: Any, gpus: int) -> dict[str, float]:
    """Peak bytes per GPU of the other stages: the policy and the frozen SFT model are on every GPU throughout."""
    g, d, e, t = cfg.generation, cfg.data, cfg.evaluate, cfg.train
    models = 2 * WEIGHTS + S["OVERHEAD_GB"] * GB
    eval_tokens = d.max_prompt_length + (e.max_new_tokens or g.max_new_tokens)
    return {
        "generate": models + g.batch_size * (d.max_prompt_length + g.max_new_tokens) * KV_PER_TOKEN,
        "vllm": models + g.vllm.gpu_memory_utilization * S["GPU_GB"] * GB,
        "annotate": models + S["ACTIVATION_BYTES"] * HIDDEN * 2 * t.per_device_batch_size * d.max_length,
        "solve": models,
        # the training engine is released first; the checkpoint is loaded again beside the SFT model
        "evaluate": models + e.batch_size * eval_tokens * KV_PER_TOKEN + 4 * S["RM_PARAMS"],
    }


def estimate(cfg: Any, gpus: int) -> list[tuple[str, str, float, list[float | None]]]:
    """Rows of (stage, how, bytes per GPU, seconds in rounds 0..R; None where the stage does not run)."""
    prompts = round_prompts(cfg)
    seed = max(1, round(cfg.data.seed_fraction * S["SEED_POOL"]))
    r0, g, f = cfg.round0.epochs or cfg.train.epochs, cfg.generation, cfg.follower
    memory = stage_memory(cfg, gpus)

    def rounds(fn: Any) -> list[float | None]:
        return [None] + [fn(p) for p in prompts]

    def update(engine: str) -> list[float | None]:
        return [update_seconds(cfg, seed, r0, engine, gpus, True)] + [
            update_seconds(cfg, p, cfg.train.epochs, engine, gpus, False) for p in prompts
        ]

    generate = rounds(lambda p: hf_generate_seconds(p, g.num_samples, g.batch_size, g.max_new_tokens, gpus))
    annotate = rounds(lambda p: forward_seconds(2 * p * g.num_samples * (S["PROMPT_TOKENS"] + g.max_new_tokens), gpus))
    solve = rounds(follower_seconds)
    zero3 = update("ZeRO-3")
    evaluate = [evaluate_seconds(cfg, 2 if t == 0 else 1, gpus) for t in range(len(prompts) + 1)]
    total = [sum(x[t] or 0.0 for x in (generate, annotate, solve, zero3, evaluate)) for t in range(len(prompts) + 1)]
    memory["update"] = update_memory(cfg, "ZeRO-3", gpus)
    path = ("generate", "annotate", "solve", "update", "evaluate")  # the stages of the total
    launches = {"ZeRO-3": "deepspeed_zero3.yaml", "ZeRO-2": "ZeRO-3 config, --zero_stage 2", "FSDP2": "fsdp.yaml"}
    return [
        ("generate", "transformers, every GPU", memory["generate"], generate),
        ("generate", "vLLM, GPU 0 only", memory["vllm"], rounds(lambda p: vllm_generate_seconds(cfg, p))),
        ("annotate", "policy and SFT forwards", memory["annotate"], annotate),
        ("solve", f"sgpo C++, groups of {f.group_size}, CPU", memory["solve"], solve),
        ("solve", "the paper's SLSQP", memory["solve"], rounds(lambda p: math.ceil(p / f.group_size) * S["PAPER_S"])),
        *((f"update, {e}", launches.get(e, "ddp.yaml"), update_memory(cfg, e, gpus), update(e)) for e in ENGINES),
        ("evaluate", f"{cfg.evaluate.num_prompts} prompts, greedy", memory["evaluate"], evaluate),
        ("round", "transformers, sgpo C++, ZeRO-3", max(memory[k] for k in path), total),
    ]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1e3:.2g} ms"
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min" if seconds < 600 else f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render(cfg: Any, gpus: int) -> str:
    lines = ["| constant | value | what it is |", "|---|---|---|"]
    lines += [f"| `{name}` | {S[name] if name != 'GPUS' else gpus:g} | {what} |" for name, _, what in SETTINGS]
    counts = round_prompts(cfg)
    header = ["stage", "how", "memory per GPU", "round 0", *[f"round {t} ({n:,})" for t, n in enumerate(counts, 1)]]
    lines += ["", "| " + " | ".join([*header, "run"]) + " |", "|" + "---|" * (len(header) + 1)]
    for stage, how, memory, times in estimate(cfg, gpus):
        fits = memory <= S["GPU_GB"] * GB
        cells = [duration(t) if fits else "-" for t in [*times, sum(t or 0.0 for t in times)]]
        size = f"{memory / GB:.0f} GB" + ("" if fits else ", does not fit")
        lines.append(f"| {stage} | {how} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"overrides of the {RECIPE} recipe")
    parser.add_argument("--gpus", type=int, default=int(S["GPUS"]))
    args = parser.parse_args(argv)
    print(render(load_config(RECIPE, args.overrides), args.gpus), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
