"""The claims of SGPO/SSAPO tested at small scale: SmolLM2-135M-Instruct, the bundled gold data, the verifiable judge.

Each row is one or more ``sgpo run default ...`` calls (the README's default recipe with the overrides listed in
:data:`ROWS`), then ``sgpo eval``'s judging of the last round's policy against the initial model on the held-out test
prompts. Prints the markdown table for README "Results" and writes it, with every number, to ``--out``.

    python benchmarks/paper_table.py                      # every row, one seed (about an hour on 2 CPU cores)
    python benchmarks/paper_table.py --rows 2 5 8 --seeds 1 2 3

Runs resume: a finished run directory is reused, so an interrupted table continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import numpy as np
from sgpo.evaluation.evaluate import EvalSettings, evaluate_models
from sgpo.pipeline.config import FollowerConfig

INITIAL = "SmolLM2-135M-Instruct"
FLIP_FRACTION = 0.25

# iterative runs: the paper's self-annotation by the implicit reward; the paper's code sets max_shift = epsilon
SSAPO = ["method=ssapo", "train.loss_type=ssapo", "judge.name=implicit_reward"]
DPO = ["method=dpo", "rounds=0", "train.loss_type=sigmoid"]


# a fixed training budget for every method: the default recipe's LoRA at learning rates that move a 135M model within
# the few optimizer steps that 16 seed pairs and 16 prompts per round give (batches of 4 pairs)
TRAIN_BUDGET = [
    "train.batch_size=4",
    "train.per_device_batch_size=4",
    "train.learning_rate=2e-4",
    "round0.learning_rate=5e-4",
    "round0.epochs=3",
]


def ssapo(epsilon: float, *extra: str) -> list[str]:
    return [*SSAPO, f"follower.epsilon={epsilon}", f"follower.max_shift={epsilon}", *extra]


@dataclass(frozen=True)
class Variant:
    row: int
    name: str
    label: str
    overrides: tuple[str, ...]
    seed_pairs: str = "default"


def variants() -> list[Variant]:
    gold = str(resources.files("sgpo") / "data" / "gold_pool.jsonl")
    v = [
        Variant(2, "dpo_seed", "DPO, seed only", tuple(DPO)),
        Variant(3, "dpo_gold", "DPO, 100% gold labels", (*DPO, "round0.epochs=1"), seed_pairs=gold),
        Variant(4, "iter_dpo", "iterative self-annotated DPO (eps = 0)", tuple(ssapo(0.0))),
        Variant(5, "ssapo_prob", "SSAPO eps = 0.01, K = 6, probability space", tuple(ssapo(0.01))),
        Variant(
            5, "ssapo_margin", "SSAPO eps = 0.01, K = 6, margin space", tuple(ssapo(0.01, "follower.space=margin"))
        ),
        Variant(5, "ssapo_paper", "SSAPO eps = 0.01, K = 6, paper's inexact follower", tuple(ssapo(0.01))),
        Variant(
            6,
            "sppo",
            "SPPO, verifiable judge as preference model (K = 5)",
            # SPPO starts from the instruct model itself: no DPO round on the seed
            (
                "method=sppo",
                "train.loss_type=sppo",
                "judge.name=verifiable",
                "generation.num_samples=5",
                "round0.enabled=false",
            ),
        ),
    ]
    v += [Variant(7, f"eps_{e}", f"SSAPO eps = {e}", tuple(ssapo(e))) for e in (0.0, 0.01, 0.03, 0.05, 0.1)]
    v += [
        Variant(8, "flip_dpo", "25% seed labels flipped: DPO", tuple(DPO), seed_pairs="flipped"),
        Variant(8, "flip_ssapo", "25% seed labels flipped: SSAPO eps = 0.01", tuple(ssapo(0.01)), seed_pairs="flipped"),
    ]
    return v


# the same runs appear in several rows; each is trained once
SAME_RUN = {"eps_0.0": "iter_dpo", "eps_0.01": "ssapo_prob"}


def flipped_seed(out: Path, seed: int) -> Path:
    """The bundled seed pairs with a seeded 25% of their chosen/rejected swapped."""
    source = Path(str(resources.files("sgpo") / "data" / "default_seed_pairs.jsonl"))
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    flip = np.random.default_rng(seed).permutation(len(rows))[: int(round(FLIP_FRACTION * len(rows)))]
    for i in flip:
        r = rows[int(i)]
        r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
        r["chosen_score"], r["rejected_score"] = r.get("rejected_score"), r.get("chosen_score")
    path = out / f"seed_flipped_{seed}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def train(variant: Variant, seed: int, out: Path, base: list[str]) -> tuple[Path, float]:
    """Run (or resume) one variant; returns the last round's checkpoint and the wall time of this call."""
    run_dir = out / "runs" / f"{SAME_RUN.get(variant.name, variant.name)}_s{seed}"
    seed_pairs = {"default": "default", "flipped": str(flipped_seed(out, seed))}.get(
        variant.seed_pairs, variant.seed_pairs
    )
    command = [sys.executable, "-m", "sgpo", "run", "default", *base, *variant.overrides]
    command += [f"seed={seed}", f"data.seed_pairs={seed_pairs}", f"output_dir={run_dir}", "logging.progress=false"]
    if variant.name == "ssapo_paper":
        command.append("follower.backend=paper")
    donor = out / "runs" / f"{'flip_dpo' if variant.seed_pairs == 'flipped' else 'dpo_seed'}_s{seed}" / "round_0"
    iterative = "method=ssapo" in variant.overrides
    if iterative and not (run_dir / "round_0").exists() and (donor / "metrics.json").is_file():
        # round 0 (DPO on the seed) is the same in every run on the same seed pairs: train it once, reuse it
        shutil.copytree(donor, run_dir / "round_0")
    began = time.perf_counter()
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - began
    rounds = sorted(run_dir.glob("round_*/checkpoint"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not rounds:
        raise FileNotFoundError(f"{run_dir}: the run saved no checkpoint")
    return rounds[-1], seconds


def mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[1, 2, 3, 4, 5, 6, 7, 8])
    parser.add_argument("--seeds", type=int, nargs="*", default=[42])
    parser.add_argument("--out", default="bench_results/paper")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts-per-round", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=96, help="for the rounds' sampling and the evaluation")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = [f"rounds={args.rounds}", f"data.prompts_per_round={args.prompts_per_round}", "evaluate.prompts=null"]
    base += [f"generation.max_new_tokens={args.max_new_tokens}", *TRAIN_BUDGET]
    settings = EvalSettings(num_prompts=args.num_prompts, max_new_tokens=args.max_new_tokens)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    eval_dir = out / "eval"

    initial = evaluate_models([("initial", INITIAL)], INITIAL, eval_dir / "initial", settings=settings)[0]
    for variant in [v for row in args.rows for v in variants() if v.row == row]:
        for seed in args.seeds:
            key = f"{variant.name}_s{seed}"
            if key in results:
                continue
            same = f"{SAME_RUN.get(variant.name)}_s{seed}"
            if same in results:
                results[key] = {**results[same], "row": variant.row, "label": variant.label}
                continue
            if variant.name == "ssapo_paper" and "backend" not in {f.name for f in fields(FollowerConfig)}:
                print("skipping ssapo_paper: the run config has no follower.backend key", flush=True)
                continue
            checkpoint, seconds = train(variant, seed, out, base)
            run_name = checkpoint.parents[1].name
            (result,) = evaluate_models(
                [(variant.label, str(checkpoint))], INITIAL, eval_dir / run_name, settings=settings
            )
            results[key] = {
                "row": variant.row,
                "label": variant.label,
                "seed": seed,
                "win_rate": 100 * result.win.win_rate,
                "lc_win_rate": 100 * result.win.lc_win_rate,
                "stderr": 100 * result.win.stderr,
                "mean_score": result.mean_score,
                "train_seconds": seconds,
                "run_dir": str(checkpoint.parents[1]),
            }
            results_path.write_text(json.dumps(results, indent=2) + "\n")

    lines = [
        "| row | method | win rate % | LC win rate % | mean judge score | train wall time (s) | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    if 1 in args.rows:
        lines.append(f"| 1 | initial model (SmolLM2-135M-Instruct) | 50.0 | 50.0 | {initial.mean_score:.3f} | 0 | - |")
    for variant in [v for v in variants() if v.row in args.rows]:
        found = [results[f"{variant.name}_s{s}"] for s in args.seeds if f"{variant.name}_s{s}" in results]
        if not found:
            continue
        lines.append(
            f"| {variant.row} | {variant.label} | {mean_spread([r['win_rate'] for r in found])} | "
            f"{mean_spread([r['lc_win_rate'] for r in found])} | {np.mean([r['mean_score'] for r in found]):.3f} | "
            f"{np.mean([r['train_seconds'] for r in found]):.0f} | {len(found)} |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
