"""Cost of sgpo inside TRL's DPOTrainer: step time and peak memory of SGPODPOTrainer against trl.DPOTrainer.

    python benchmarks/bench_trl.py --threads 1                      # tiny random Llama, every sgpo loss
    python benchmarks/bench_trl.py --model SmolLM2-135M-Instruct --prompt-tokens 128 --response-tokens 128 384 \\
        --modes lora full --steps 4 --repeats 2 --threads 1         # realistic shapes, TRL's baselines
    python benchmarks/bench_trl.py --model llama-1b --batch 8 --prompt-tokens 256 --response-tokens 256 \\
        --modes lora full --steps 3 --repeats 1                     # on a GPU: a random ~1B Llama, bf16

Every row trains the same model on the same pairs with the same seed, in a fresh process: the time is the median
optimizer step after the first (warm-up) step, the memory the process's peak resident set (VmHWM) minus its resident
set once the libraries are imported, so it counts the model, any reference copy, the optimizer state and the step's
activations (on a GPU, ``torch.cuda.max_memory_allocated`` over the whole run instead). ``--model tiny`` and
``--model llama-1b`` (Llama-3.2-1B's shape: hidden 2,048, 16 layers, vocabulary 128,256) are randomly initialised
from a config with sgpo's byte-level tokenizer, so no weights are downloaded. Rows run in turn, ``--repeats`` rounds;
each keeps its best median and its lowest peak, which damps a shared, noisy machine. With ``--response-tokens`` the
baselines (``--baselines``) are ``trl.DPOTrainer`` with its defaults (which include gradient checkpointing), with
``precompute_ref_log_probs=True``, with that and ``gradient_checkpointing=False`` and with ``use_liger_kernel=True``;
ratios are against the best baseline for each measure; ``--sgpo`` picks sgpo's rows. ``--processes N`` runs every row
in N DDP processes (``torch.distributed.run``, gloo on CPU) with ``--batch`` pairs per step in all; a row's step is
its slowest process's and its memory its largest process's. ``--profile`` adds, per configuration, where a step's
time goes. ``--out`` is rewritten after every row, so a run stopped part-way keeps the rows it finished. Each row runs
in ``trl_step.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hum old tunes".split()
# common English words the SmolLM2 tokenizer keeps as one token each (with their leading space)
TEXT_WORDS = (
    "the of and to in is it you that he was for on are as with his they at be this have from or one had by word but "
    "not what all were we when your can said there use an each which she do how their if will up other about out "
    "many then them these so some her would make like him into time has look two more write go see number no way "
    "could people my than first water been call who oil its now find long down day did get come made may part"
).split()


def word_pairs(n: int, length: int) -> dict[str, list]:
    """n pairs of ``length``-word responses; win probabilities and the follower's columns for the sppo/ssapo rows."""
    prompt = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8)) + ": " for i in range(n)]
    chosen = [" ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(length)) for i in range(n)]
    rejected = [" ".join(WORDS[(5 * i + 2 * j) % len(WORDS)] for j in range(length)) for i in range(n)]
    win = [0.5 + 0.4 * ((i * 7) % n) / n for i in range(n)]
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_probs_win": win,
        "chosen_probs_lose": [1 - p for p in win],
        "worst_case_weights": [[1.0, 0.0] for _ in range(n)],
        "worst_case_shifts": [[0.01, 0.0] for _ in range(n)],
    }


def token_pairs(n: int, prompt_tokens: int, response_tokens: int, tokenizer: Any = None) -> dict[str, list]:
    """n pairs of random common words, about ``prompt_tokens`` / ``response_tokens`` tokens each; lengths vary by a
    few tokens between rows so a batch has some padding, as real data does. Each word is one token of SmolLM2's
    tokenizer; with another ``tokenizer`` each text is cut to its token count."""
    rng = random.Random(0)

    def text(words: int) -> str:
        joined = " ".join(rng.choice(TEXT_WORDS) for _ in range(words))
        if tokenizer is None:
            return joined
        ids = tokenizer(joined, add_special_tokens=False)["input_ids"]
        return joined if len(ids) <= words else tokenizer.decode(ids[:words])

    return {
        "prompt": [text(prompt_tokens - 4 * (i % 4)) + ":" for i in range(n)],
        "chosen": [" " + text(response_tokens - 4 * (i % 3)) for i in range(n)],
        "rejected": [" " + text(response_tokens - 4 * ((i + 1) % 3)) for i in range(n)],
    }


STEP_SCRIPT = Path(__file__).with_name("trl_step.py")


def _json_line(line: str) -> dict[str, Any]:
    """A worker's result line, or {} for anything else it printed (the trainer prints dicts that are not JSON)."""
    try:
        row = json.loads(line) if line.startswith("{") else {}
    except json.JSONDecodeError:
        return {}
    return row if isinstance(row, dict) else {}


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration in a fresh process (``trl_step.py``), or in ``spec["processes"]`` DDP processes under
    ``torch.distributed.run``: there the row's step is the slowest process's and its memory the largest process's."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "TQDM_DISABLE": "1"}
    env["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="sgpo-bench-cache-")
    command = [sys.executable, str(STEP_SCRIPT), json.dumps(spec)]
    processes = spec.get("processes", 1)
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        command = [*launcher, *command[1:]]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [row for line in done.stdout.splitlines() if "rank" in (row := _json_line(line))]
    if done.returncode != 0 or len(lines) != processes:
        error = [line for line in done.stderr.strip().splitlines() if line.strip()]
        # a launcher's report ends in banners: the failing process's own exception line says what went wrong
        raised = [line for line in error if "Error:" in line or "Exception:" in line]
        return {"error": (raised or error or [f"exit code {done.returncode}"])[-1][:160]}
    if processes == 1:
        return lines[0]
    slowest = max(lines, key=lambda r: r["median"])
    return {**slowest, "peak_mb": max(r["peak_mb"] for r in lines), "setup": max(r["setup"] for r in lines)}


# The baselines of the realistic mode, by the key ``--baselines`` picks them with.
BASELINES: dict[str, tuple[str, tuple[str, dict[str, Any]]]] = {
    "defaults": ("trl.DPOTrainer, defaults", ("trl", {})),
    "precompute": ("trl.DPOTrainer, precompute_ref_log_probs", ("trl", {"precompute_ref_log_probs": True})),
    "precompute-no-checkpointing": (
        "trl.DPOTrainer, precompute_ref_log_probs, no gradient checkpointing",
        ("trl", {"precompute_ref_log_probs": True, "gradient_checkpointing": False}),
    ),
    "liger": ("trl.DPOTrainer, use_liger_kernel", ("trl", {"use_liger_kernel": True})),
}

# Randomly initialised Llama-style models with sgpo's byte-level tokenizer (no download): a label and the arguments of
# sgpo.models.build_tiny_model.
RANDOM_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("tiny random Llama (hidden 128, 2 layers)", {"hidden_size": 128, "num_layers": 2}),
    "llama-1b": (
        "random Llama-3.2-1B-shaped model (hidden 2048, 16 layers, vocabulary 128,256)",
        {
            "hidden_size": 2048,
            "num_layers": 16,
            "num_heads": 32,
            "max_positions": 4096,
            "intermediate_size": 8192,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "tie_word_embeddings": True,
            "rope_theta": 500000.0,
        },
    ),
}


# sgpo's rows of the realistic mode, by the key ``--sgpo`` picks them with: logps_backend="sgpo" and its forward
# (pair by pair on one process without checkpointing, packed elsewhere; see sgpo.integrations.trl_forward)
SGPO_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "precompute": (
        "SGPODPOTrainer, logps_backend=sgpo, precompute_ref_log_probs",
        {"precompute_ref_log_probs": True},
    ),
    "default": ("SGPODPOTrainer, logps_backend=sgpo", {}),
    "packed-precompute": (
        "SGPODPOTrainer, logps_backend=sgpo, packed, precompute_ref_log_probs",
        {"pair_by_pair": False, "precompute_ref_log_probs": True},
    ),
    "packed": ("SGPODPOTrainer, logps_backend=sgpo, packed", {"pair_by_pair": False}),
    "packed-checkpointing": (
        "SGPODPOTrainer, logps_backend=sgpo, packed, gradient_checkpointing",
        {"pair_by_pair": False, "gradient_checkpointing": True},
    ),
}


def sgpo_rows(keys: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        name: ("sgpo", {"logps_backend": "sgpo", **config}) for key, (name, config) in SGPO_ROWS.items() if key in keys
    }


def baselines(keys: list[str] | None = None) -> dict[str, tuple[str, dict[str, Any]]]:
    return {name: row for key, (name, row) in BASELINES.items() if keys is None or key in keys}


def random_model(name: str, out: str) -> str:
    """Save the random model ``name`` of RANDOM_MODELS to ``out`` (drawn on the GPU and saved in bfloat16 where there
    is one) and return the path."""
    import torch
    from sgpo.models import build_tiny_model

    on_gpu = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if on_gpu else (None, None)
    return str(build_tiny_model(out, device=device, dtype=dtype, **RANDOM_MODELS[name][1]))


def render(
    tables: list, results: dict[tuple[int, str], dict[str, Any]], options: argparse.Namespace, on_gpu: bool
) -> str:
    """The markdown tables of the rows measured so far (ratios against the best baseline measured)."""
    import sgpo
    import torch

    device = torch.cuda.get_device_name() if on_gpu else f"CPU ({platform.processor() or platform.machine()})"
    lines = [
        f"torch {torch.__version__}, sgpo {sgpo.__version__}, {device}, {options.threads} thread(s) per process, "
        f"{os.cpu_count()} cores; median of {options.steps} steps after a warm-up step, best of {options.repeats} "
        "fresh processes per row.",
    ]
    for t, (heading, _, base, rows) in enumerate(tables):
        ok = {name: results[(t, name)] for name in base if "error" not in results.get((t, name), {"error": ""})}
        best_time = min((r["median"] for r in ok.values()), default=float("nan"))
        best_memory = min((r["peak_mb"] for r in ok.values()), default=float("nan"))
        lines += [
            "",
            f"**{heading}**",
            "",
            "| configuration | median step (s) | vs best baseline | peak memory (MB) | vs best baseline | setup (s) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name in rows:
            if (t, name) not in results:
                continue
            r = results[(t, name)]
            if "error" in r:
                lines.append(f"| {name} | fails: {r['error']} | | | | |")
                continue
            lines.append(
                f"| {name} | {r['median']:.3g} | {r['median'] / best_time:.2f}x | {r['peak_mb']:.0f} | "
                f"{r['peak_mb'] / best_memory:.2f}x | {r['setup']:.1f} |"
            )
        profiled = [(name, results[(t, name)]["phases"]) for name in rows if "phases" in results.get((t, name), {})]
        if profiled:
            names = sorted({phase for _, p in profiled for phase in p if phase != "training step"})
            lines += ["", "| seconds per step | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
            for name, p in profiled:
                lines.append(f"| {name} | " + " | ".join(f"{p.get(phase, 0.0):.2f}" for phase in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="tiny", help=f"a random model ({', '.join(RANDOM_MODELS)}) or a model name or path"
    )
    parser.add_argument("--steps", type=int, default=12, help="measured steps per row (after one warm-up step)")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--length", type=int, default=24, help="words per response (without --response-tokens)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument(
        "--response-tokens", type=int, nargs="*", default=None, help="realistic mode: one table per response length"
    )
    parser.add_argument("--modes", nargs="+", default=["full"], choices=["lora", "full"])
    parser.add_argument(
        "--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES), help="realistic mode's baselines"
    )
    parser.add_argument(
        "--sgpo",
        nargs="+",
        default=["precompute", "default", "packed-precompute", "packed"],
        choices=list(SGPO_ROWS),
        help="realistic mode's sgpo rows",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per row")
    parser.add_argument("--profile", action="store_true", help="also time the phases of each step")
    parser.add_argument("--out", default=None, help="also write the markdown tables here")
    parser.add_argument(
        "--processes", type=int, default=1, help="DDP processes per row (torch.distributed.run); --batch is global"
    )
    options = parser.parse_args()
    if options.processes < 1 or options.batch % options.processes:
        parser.error(f"--processes: expected a divisor of --batch ({options.batch}), got {options.processes}")

    import torch
    from sgpo.models import resolve_model

    if options.model in RANDOM_MODELS:
        model = random_model(options.model, tempfile.mkdtemp(prefix="sgpo-bench-model-"))
        label = RANDOM_MODELS[options.model][0]
    else:
        model = resolve_model(options.model)
        label = Path(model).name
    n = options.batch * (options.steps + 1)
    on_gpu = torch.cuda.is_available()
    common = dict(
        per_device_train_batch_size=options.batch // options.processes,
        max_steps=options.steps + 1,
        learning_rate=1e-5,
        logging_steps=options.steps + 1,
        save_strategy="no",
        report_to=[],
        use_cpu=not on_gpu,
        bf16=on_gpu,
        disable_tqdm=True,
        seed=0,
        max_length=None,
    )

    tables: list[tuple[str, dict[str, Any], dict[str, list], dict[str, tuple[str, dict[str, Any]]]]] = []
    if options.response_tokens is None:
        data = word_pairs(n, options.length)
        rows = {
            "trl.DPOTrainer sigmoid (baseline)": ("trl", {}),
            "SGPODPOTrainer sigmoid": ("sgpo", {"loss_type": "sigmoid"}),
            "SGPODPOTrainer sigmoid, logps_backend=sgpo": ("sgpo", {"loss_type": "sigmoid", "logps_backend": "sgpo"}),
            "SGPODPOTrainer sppo (columns)": ("sgpo", {"loss_type": "sppo"}),
            "SGPODPOTrainer ssapo, follower per batch": ("sgpo", {"loss_type": "ssapo"}),
            "SGPODPOTrainer ssapo, worst case from columns": (
                "sgpo",
                {"loss_type": "ssapo", "ssapo_worst_case": "columns"},
            ),
        }
        heading = f"{label}, {options.batch} pairs per step, {options.length}-word responses"
        tables.append((heading, {"data": data, "lora": False}, {"trl.DPOTrainer sigmoid (baseline)": []}, rows))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        for response_tokens in options.response_tokens:
            data = token_pairs(
                n, options.prompt_tokens, response_tokens, tokenizer if options.model in RANDOM_MODELS else None
            )
            counts = {key: statistics.mean(len(tokenizer(t)["input_ids"]) for t in data[key]) for key in data}
            for mode in options.modes:
                rows = dict(baselines(options.baselines))
                rows.update(sgpo_rows(options.sgpo))
                processes = f"{options.processes} DDP processes, " if options.processes > 1 else ""
                heading = (
                    f"{label}, {'LoRA r=16 all-linear' if mode == 'lora' else 'full fine-tuning'}, {processes}"
                    f"{options.batch} pairs per step, prompt {counts['prompt']:.0f} + response "
                    f"{counts['chosen']:.0f} / {counts['rejected']:.0f} tokens (mean chosen / rejected)"
                )
                base = {name: [] for name in baselines(options.baselines)}
                tables.append((heading, {"data": data, "lora": mode == "lora"}, base, rows))

    results: dict[tuple[int, str], dict[str, Any]] = {}
    for repeat in range(options.repeats):
        for t, (heading, shared, _, rows) in enumerate(tables):
            for name, (trainer, config) in rows.items():
                spec = dict(
                    shared,
                    model=model,
                    trainer=trainer,
                    config=config,
                    common=common,
                    threads=options.threads,
                    processes=options.processes,
                    profile=options.profile and repeat == 0,
                )
                result = run_row(spec)
                print(f"[{repeat + 1}/{options.repeats}] {heading} | {name}: {json.dumps(result)}", flush=True)
                best = results.setdefault((t, name), {})
                if "error" in result:
                    best.setdefault("error", result["error"])
                    continue
                best.pop("error", None)
                best["median"] = min(best.get("median", float("inf")), result["median"])
                best["peak_mb"] = min(best.get("peak_mb", float("inf")), result["peak_mb"])
                best["setup"] = min(best.get("setup", float("inf")), result["setup"])
                if "phases" in result:
                    best["phases"] = result["phases"]
                if options.out:
                    Path(options.out).write_text(render(tables, results, options, on_gpu) + "\n")

    table = render(tables, results, options, on_gpu)
    print(table)
    if options.out:
        Path(options.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
