"""The hidden track's pilot: DPO on the first N pairs of a rubric's gold pool, for several N and seeds, each evaluated
against the initial model on the dev prompts (never the test split) and as an annotator on the held-out gold pairs.

Writes ``results.json``, ``pilot.md`` and ``learning_curve.png`` to ``--out``; ``--compare`` tabulates several pilots'
results into ``compare.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sgpo.pipeline.files import read_jsonl

from experiments import bundle, render
from experiments.launch import Job, Launcher, evaluate, launch, sgpo
from experiments.options import pilot_args, stated_command
from experiments.plots import plot_learning_curve
from experiments.rows import INITIAL
from experiments.store import Results

BATCH_PAIRS = 4


def entry_name(rubric: str, size: int, seed: int) -> str:
    return f"{rubric}_n{size}_s{seed}"


def epochs_for(steps: int, size: int) -> int:
    """Epochs that give a ``size``-pair seed ``steps`` optimizer steps (batches of 4 pairs), to the nearest epoch:
    every size trains as long as the largest, so a learning curve measures labels, not training compute."""
    return max(1, round(steps * BATCH_PAIRS / size))


class Pilot:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.runs = Path(args.runs)
        for d in (self.out, self.runs / "logs", self.runs / "seeds"):
            d.mkdir(parents=True, exist_ok=True)
        self.pool = read_jsonl(bundle.bundled(f"hidden_{args.rubric}_pool.jsonl"))
        self.heldout = bundle.bundled(f"hidden_{args.rubric}_heldout.jsonl")
        self.prompts = Path(args.prompts) if args.prompts else bundle.bundled("hidden_dev_prompts.jsonl")
        if max(args.sizes) > len(self.pool):
            raise ValueError(
                f"--sizes: the {args.rubric} pool holds {len(self.pool)} pairs, asked for {max(args.sizes)}"
            )
        self.launcher = Launcher()
        self.store = Results(self.out / "results.json")

    def evaluate(self, model: str, name: str) -> dict[str, Any]:
        a = self.args
        options = ["--prompts", str(self.prompts), "--judge", a.rubric, "--num-prompts", str(a.num_prompts)]
        options += ["--max-new-tokens", str(a.max_new_tokens), "--cache-dir", str(self.runs / "eval" / "responses")]
        options += ["--agreement-pairs", str(self.heldout), "--threads", "1", "--batch-size", "32"]
        log = self.runs / "logs" / f"eval_{name}.log"
        return evaluate(self.launcher.call, model, self.runs / "eval" / name, options, log)

    def initial(self, _: Future | None) -> None:
        result = self.evaluate(INITIAL, "initial")
        self.store.save({"initial": {k: result[k] for k in ("mean_score", "agreement", "scores")}})

    def job(self, size: int, seed: int, initial: Future | None) -> None:
        a = self.args
        name = entry_name(a.rubric, size, seed)
        run_dir = self.runs / "runs" / name
        seed_file = bundle.write_seed(self.pool, size, seed, self.runs / "seeds" / f"{name}.jsonl")
        command = sgpo("run", "hidden", "method=dpo", "rounds=0", "train.loss_type=sigmoid")
        command += [f"data.seed_pairs={seed_file}", "data.max_seed_pairs=null", f"seed={seed}"]
        command += [f"round0.learning_rate={a.learning_rate}", f"round0.epochs={epochs_for(a.steps, size)}"]
        command += [f"train.beta={a.beta}", f"train.batch_size={BATCH_PAIRS}"]
        command += ["evaluate.prompts=null", "judge.agreement_pairs=null", "threads=1", "logging.progress=false"]
        command += [f"output_dir={run_dir}"]
        seconds = self.launcher.call(command, self.runs / "logs" / f"{name}.log")
        report = json.loads((run_dir / "report.json").read_text())
        # the initial model's evaluation caches the baseline's responses that every other evaluation pairs with
        if initial is not None:
            initial.result()
        result = self.evaluate(str(run_dir / "round_0" / "checkpoint"), name)
        entry = {
            "size": size,
            "seed": seed,
            "epochs": epochs_for(a.steps, size),
            "train_seconds": sum(r.get("seconds") or 0.0 for r in report["rounds"]),
            "call_seconds": seconds,
            **{k: result[k] for k in ("mean_score", "baseline_mean_score", "win_rate", "paired", "kl", "agreement")},
            "scores": result["scores"],
        }
        self.store.save({name: entry})
        self.launcher.log(
            f"{name}: score {entry['mean_score']:.3f} (initial {entry['baseline_mean_score']:.3f}), win rate "
            f"{100 * entry['win_rate']:.1f}%, agreement {100 * (entry['agreement']['sum']['agreement'] or 0):.1f}%"
        )

    def run(self, command: str) -> None:
        """Every size and seed not in results.json yet, the largest first; then pilot.md and the plot."""
        a = self.args
        began = time.perf_counter()
        sizes = sorted(((n, s) for n in a.sizes for s in a.seeds), key=lambda job: -job[0])
        # trainings start beside the initial model's evaluation; their evaluations wait for it
        jobs = [Job("initial", None, self.initial)]
        for n, s in sizes:
            done = entry_name(a.rubric, n, s) in self.store.data
            work = None if done else lambda initial, n=n, s=s: self.job(n, s, initial)
            jobs.append(Job(entry_name(a.rubric, n, s), "initial", work))
        launch(jobs, a.jobs)
        self.store.save({"wall_seconds": self.store.data.get("wall_seconds", 0.0) + time.perf_counter() - began})
        summarise(self.store.data, a, self.out, command)


def pilot_rows(results: dict[str, Any], args: argparse.Namespace) -> list[tuple[int, list[dict[str, Any]]]]:
    """The learning curve: each size's entries over the seeds, smallest size first."""
    rows = []
    for size in sorted(args.sizes):
        names = [entry_name(args.rubric, size, s) for s in args.seeds]
        entries = [results[n] for n in names if n in results]
        if entries:
            rows.append((size, entries))
    return rows


def summarise(results: dict[str, Any], args: argparse.Namespace, out: Path, command: str) -> None:
    """pilot.md (the learning-curve table and the fitness checks) and learning_curve.png, from ``results``."""
    rows = pilot_rows(results, args)
    initial = results["initial"]["mean_score"]
    text = render.pilot_markdown(rows, initial, args, results.get("wall_seconds", 0), command)
    (out / "pilot.md").write_text(text + "\n")
    plot_learning_curve(rows, initial, args.seeds, args.rubric, out / "learning_curve.png")
    print(text)


def compare(directories: list[str], out: Path, command: str) -> None:
    """compare.md: several pilots side by side."""
    text = render.compare_markdown(directories, command)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text + "\n")
    print(text)


def main(argv: list[str], description: str = "") -> None:
    """``pilot_hidden.py``: ``argv`` is the whole command line, its script first."""
    args = pilot_args(argv[1:], description)
    if args.compare:
        compare(args.compare, Path(args.out), "python " + " ".join(argv))
    elif args.table_only:
        out = Path(args.out)
        summarise(json.loads((out / "results.json").read_text()), args, out, stated_command(argv))
    else:
        Pilot(args).run(stated_command(argv))
