"""Does the hidden-preference benchmark tell methods apart? DPO learning curve on gold pairs of one rubric.

For each seed-set size N and seed s: DPO (``sgpo run hidden method=dpo``, round 0 only) on the first N pairs of a
seeded permutation of the bundled gold pool, then ``sgpo eval`` of the trained policy against SmolLM2-135M-Instruct
on prompts no training saw (paired gold-score difference and win rate with bootstrap intervals, KL), and
the trained policy's implicit reward as an annotator on the held-out gold pairs. Settings are chosen here, so the
evaluation prompts are the bundled dev prompts (train-split tasks that neither labelling nor any round sees), never
the test split the tables report on. Writes ``results.json``,
``pilot.md`` and ``learning_curve.png`` to ``--out`` (default ``bench_results/pilot_hidden_<rubric>``).

    python benchmarks/pilot_hidden.py                        # warmth, N = 8..256, seeds 1 and 2, 2 jobs
    python benchmarks/pilot_hidden.py --rubric concreteness --sizes 32 256 --seeds 1

Jobs run side by side as separate processes with one thread each; finished runs and evaluations are reused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from sgpo.pipeline.files import read_jsonl, write_jsonl

INITIAL = "SmolLM2-135M-Instruct"
BATCH_PAIRS = 4


def entry_name(rubric: str, size: int, seed: int) -> str:
    return f"{rubric}_n{size}_s{seed}"


def epochs_for(steps: int, size: int) -> int:
    """Epochs that give a ``size``-pair seed ``steps`` optimizer steps (batches of 4 pairs), to the nearest epoch."""
    return max(1, round(steps * BATCH_PAIRS / size))


def write_seed(pool: list[dict[str, Any]], size: int, seed: int, path: Path) -> Path:
    """The first ``size`` pairs of a ``seed``-permutation of ``pool``, written to ``path``."""
    order = np.random.default_rng(seed).permutation(len(pool))
    write_jsonl(path, [pool[int(i)] for i in order[:size]])
    return path


def bundled(name: str) -> Path:
    path = Path(str(resources.files("sgpo") / "data" / name))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run python scripts/make_hidden_data.py first")
    return path


class Pilot:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.runs = Path(args.runs)
        for d in (self.out, self.runs / "logs", self.runs / "seeds"):
            d.mkdir(parents=True, exist_ok=True)
        self.pool = read_jsonl(bundled(f"hidden_{args.rubric}_pool.jsonl"))
        self.heldout = bundled(f"hidden_{args.rubric}_heldout.jsonl")
        self.prompts = Path(args.prompts) if args.prompts else bundled("hidden_dev_prompts.jsonl")
        if max(args.sizes) > len(self.pool):
            raise ValueError(
                f"--sizes: the {args.rubric} pool holds {len(self.pool)} pairs, asked for {max(args.sizes)}"
            )
        self.lock = threading.Lock()
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.results_path = self.out / "results.json"
        self.results: dict[str, Any] = json.loads(self.results_path.read_text()) if self.results_path.is_file() else {}

    def call(self, command: list[str], log: str) -> float:
        with self.lock:
            print("$ " + " ".join(command[1:]), flush=True)
        began = time.perf_counter()
        with (self.runs / "logs" / log).open("a") as handle:
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[1:])} failed ({done.returncode}); see {self.runs / 'logs' / log}")
        return time.perf_counter() - began

    def evaluate(self, model: str, name: str) -> dict[str, Any]:
        a = self.args
        output = self.runs / "eval" / name
        if not (output / "eval.json").is_file():
            command = [sys.executable, "-m", "sgpo", "eval", model, "--baseline", INITIAL, "--output", str(output)]
            command += ["--prompts", str(self.prompts), "--judge", a.rubric, "--num-prompts", str(a.num_prompts)]
            command += ["--max-new-tokens", str(a.max_new_tokens), "--cache-dir", str(self.runs / "eval" / "responses")]
            command += ["--agreement-pairs", str(self.heldout), "--threads", "1", "--batch-size", "32"]
            self.call(command, f"eval_{name}.log")
        return json.loads((output / "eval.json").read_text())["results"][0]

    def seed_file(self, size: int, seed: int) -> Path:
        path = self.runs / "seeds" / f"{entry_name(self.args.rubric, size, seed)}.jsonl"
        return write_seed(self.pool, size, seed, path)

    def epochs(self, size: int) -> int:
        """Epochs that give a ``size``-pair seed ``--steps`` optimizer steps (batches of 4 pairs): every size trains as
        long as the largest (to the nearest epoch), so the curve measures labels, not training compute."""
        return epochs_for(self.args.steps, size)

    def job(self, size: int, seed: int) -> None:
        a = self.args
        name = entry_name(a.rubric, size, seed)
        if name in self.results:
            return
        run_dir = self.runs / "runs" / name
        command = [sys.executable, "-m", "sgpo", "run", "hidden", "method=dpo", "rounds=0", "train.loss_type=sigmoid"]
        command += [f"data.seed_pairs={self.seed_file(size, seed)}", "data.max_seed_pairs=null", f"seed={seed}"]
        command += [f"round0.learning_rate={a.learning_rate}", f"round0.epochs={self.epochs(size)}"]
        command += [f"train.beta={a.beta}", f"train.batch_size={BATCH_PAIRS}"]
        command += ["evaluate.prompts=null", "judge.agreement_pairs=null", "threads=1", "logging.progress=false"]
        command += [f"output_dir={run_dir}"]
        seconds = self.call(command, f"{name}.log")
        report = json.loads((run_dir / "report.json").read_text())
        # the initial model's evaluation caches the baseline's responses that every other evaluation pairs with
        self.initial.result()
        result = self.evaluate(str(run_dir / "round_0" / "checkpoint"), name)
        entry = {
            "size": size,
            "seed": seed,
            "epochs": self.epochs(size),
            "train_seconds": sum(r.get("seconds") or 0.0 for r in report["rounds"]),
            "call_seconds": seconds,
            **{k: result[k] for k in ("mean_score", "baseline_mean_score", "win_rate", "paired", "kl", "agreement")},
            "scores": result["scores"],
        }
        with self.lock:
            self.results[name] = entry
            self.results_path.write_text(json.dumps(self.results, indent=2) + "\n")
            print(
                f"{name}: score {entry['mean_score']:.3f} (initial {entry['baseline_mean_score']:.3f}), win rate "
                f"{100 * entry['win_rate']:.1f}%, agreement {100 * (entry['agreement']['sum']['agreement'] or 0):.1f}%",
                flush=True,
            )

    def run(self) -> None:
        a = self.args
        began = time.perf_counter()
        jobs = sorted(((n, s) for n in a.sizes for s in a.seeds), key=lambda job: -job[0])
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            # trainings start beside the initial model's evaluation; their evaluations wait for it
            self.initial = pool.submit(self.evaluate, INITIAL, "initial")
            futures = [pool.submit(self.job, n, s) for n, s in jobs]
            initial = self.initial.result()
            with self.lock:
                self.results["initial"] = {k: initial[k] for k in ("mean_score", "agreement", "scores")}
            for future in futures:
                future.result()
        self.results["wall_seconds"] = self.results.get("wall_seconds", 0.0) + time.perf_counter() - began
        self.results_path.write_text(json.dumps(self.results, indent=2) + "\n")
        summarise(self.results, a, self.out)


def summarise(results: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    """The learning-curve table, the fitness checks and the plot, from ``results``."""
    rows = []
    for size in sorted(args.sizes):
        entries = [
            results[entry_name(args.rubric, size, s)] for s in args.seeds if entry_name(args.rubric, size, s) in results
        ]
        if entries:
            rows.append((size, entries))
    initial = results["initial"]["mean_score"]
    full = rows[-1][1] if rows else []
    full_gain = float(np.mean([e["mean_score"] for e in full])) - initial if full else float("nan")
    lines = [
        f"# Pilot: DPO on gold pairs of the `{args.rubric}` rubric ({', '.join(map(str, args.seeds))} seeds)",
        "",
        f"Initial model's mean gold score: {initial:.3f} on {args.num_prompts} dev prompts of the hidden track.",
        "",
        "| gold pairs | mean gold score | paired difference vs initial [95% CI] | win rate % [95% CI] | KL | share of "
        "full-gold gain | annotator agreement % (sum / mean / length-debiased) | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, entries in rows:
        cells = []
        for e in entries:
            d, w = e["paired"]["difference"], e["paired"]["win_rate"]
            cells.append(
                (
                    f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]",
                    f"{100 * w['mean']:.1f} [{100 * w['low']:.1f}, {100 * w['high']:.1f}]",
                )
            )
        score = np.mean([e["mean_score"] for e in entries])
        agree = [
            "/".join(f"{100 * (e['agreement'][v]['agreement'] or 0):.0f}" for v in ("sum", "mean", "length_debiased"))
            for e in entries
        ]
        share = (score - initial) / full_gain if full_gain and math.isfinite(full_gain) else float("nan")
        lines.append(
            f"| {size} | {score:.3f} | {'; '.join(c[0] for c in cells)} | {'; '.join(c[1] for c in cells)} | "
            f"{np.mean([e['kl'] for e in entries]):.2f} | {100 * share:.0f}% | {'; '.join(agree)} | "
            f"{np.mean([e['train_seconds'] for e in entries]):.0f} |"
        )
    lines += [
        "",
        "Cells with `;` list the seeds in order. Share of full-gold gain: (score - initial) / (full - initial).",
    ]
    lines += fitness(rows, args)
    lines += ["", f"Wall time: {results.get('wall_seconds', 0) / 60:.1f} min. Command: `{' '.join(sys.argv)}`"]
    (out / "pilot.md").write_text("\n".join(lines) + "\n")
    plot(rows, initial, args, out / "learning_curve.png")
    print("\n".join(lines))


def compare(directories: list[str], out: Path) -> None:
    """One table over several pilots' ``results.json`` (one per setting, e.g. a learning rate each), with the share of
    answers that fail the on-task gate (gold score 0): a policy that games the rubric by looping scores 0 there."""
    lines = [
        "| pilot | gold pairs | seed | mean score | paired difference vs initial [95% CI] | win rate % "
        "| off-task answers % | KL | full gold - this (SE) | annotator agreement % (sum / mean / length-debiased) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for directory in directories:
        results = json.loads((Path(directory) / "results.json").read_text())
        initial = np.asarray(results["initial"]["scores"])
        lines.append(
            f"| {Path(directory).name} | 0 (initial) | - | {initial.mean():.3f} | - | 50 | "
            f"{100 * np.mean(initial == 0):.0f} | 0 | - | - |"
        )
        entries = sorted(
            (e for k, e in results.items() if isinstance(e, dict) and "size" in e), key=lambda e: (e["size"], e["seed"])
        )
        for e in entries:
            d, w = e["paired"]["difference"], e["paired"]["win_rate"]
            scores = np.asarray(e["scores"])
            full = max((f for f in entries if f["seed"] == e["seed"]), key=lambda f: f["size"])
            diff = np.asarray(full["scores"]) - scores
            se = diff.std(ddof=1) / math.sqrt(diff.size)
            z = "-" if full is e or se == 0 else f"{diff.mean() / se:.1f}"
            agree = "/".join(
                f"{100 * (e['agreement'][v]['agreement'] or 0):.0f}" for v in ("sum", "mean", "length_debiased")
            )
            lines.append(
                f"| {Path(directory).name} | {e['size']} | {e['seed']} | {e['mean_score']:.3f} | {d['mean']:+.3f} "
                f"[{d['low']:+.3f}, {d['high']:+.3f}] | {100 * w['mean']:.1f} | {100 * np.mean(scores == 0):.0f} | "
                f"{e['kl']:.1f} | {z} | {agree} |"
            )
    lines += ["", f"Command: `python {' '.join(sys.argv)}`"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def fitness(rows: list[tuple[int, list[dict[str, Any]]]], args: argparse.Namespace) -> list[str]:
    """The three checks of a benchmark fit for comparing methods, for the largest size against every smaller one."""
    if len(rows) < 2:
        return []
    full_size, full = rows[-1]
    lines = ["", f"## Fitness (full gold = {full_size} pairs)", ""]
    for e in full:
        d, w = e["paired"]["difference"], e["paired"]["win_rate"]
        lines.append(
            f"- seed {e['seed']}: full gold vs initial: difference {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            f", win rate {100 * w['mean']:.1f}% (interval excludes 0: {d['low'] > 0 or d['high'] < 0})"
        )
    for size, entries in rows[:-1]:
        zs = []
        for e, f in zip(entries, full, strict=False):
            diff = np.asarray(f["scores"]) - np.asarray(e["scores"])
            se = diff.std(ddof=1) / math.sqrt(diff.size)
            zs.append(diff.mean() / se if se > 0 else float("inf"))
        agree = [e["agreement"]["sum"]["agreement"] or 0 for e in entries]
        lines.append(
            f"- {size} pairs: full gold - this = {', '.join(f'{z:.1f}' for z in zs)} standard errors; annotator "
            f"agreement {', '.join(f'{100 * a:.1f}%' for a in agree)}"
        )
    return lines


def plot(rows: list[tuple[int, list[dict[str, Any]]]], initial: float, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for k, seed in enumerate(args.seeds):
        xs, ys, lo, hi, ag = [], [], [], [], []
        for size, entries in rows:
            e = next((e for e in entries if e["seed"] == seed), None)
            if e is None:
                continue
            d = e["paired"]["difference"]
            xs.append(size * (1 + 0.04 * k))
            ys.append(e["mean_score"])
            lo.append(e["mean_score"] - (initial + d["low"]))
            hi.append(initial + d["high"] - e["mean_score"])
            ag.append(100 * (e["agreement"]["sum"]["agreement"] or 0))
        left.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=f"seed {seed}")
        right.plot(xs, ag, marker="o", label=f"seed {seed}")
    left.axhline(initial, color="grey", linewidth=0.8, label="initial model")
    right.axhline(65, color="tab:red", linewidth=0.8, linestyle="--", label="65%")
    right.axhline(50, color="grey", linewidth=0.8)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("gold pairs")
        ax.legend(fontsize=7)
    left.set_ylabel(f"mean {args.rubric} score (95% CI)")
    right.set_ylabel("implicit-reward agreement with gold %")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rubric", default="warmth")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompts", default=None, help="evaluation prompts (default: the bundled dev prompts)")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--steps", type=int, default=128, help="optimizer steps of every run (4 pairs a step)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=None, help="default: bench_results/pilot_hidden_<rubric>")
    parser.add_argument("--runs", default="runs/pilot_hidden", help="run directories, logs and the response cache")
    parser.add_argument(
        "--summary-only", action="store_true", help="rewrite pilot.md and the plot from results.json, run nothing"
    )
    parser.add_argument(
        "--compare", nargs="+", metavar="DIR", help="tabulate the results.json of these pilots into --out/compare.md"
    )
    args = parser.parse_args()
    args.out = args.out or f"bench_results/pilot_hidden_{args.rubric}"
    if args.compare:
        compare(args.compare, Path(args.out))
        return
    if args.summary_only:
        out = Path(args.out)
        summarise(json.loads((out / "results.json").read_text()), args, out)
        return
    Pilot(args).run()


if __name__ == "__main__":
    main()
