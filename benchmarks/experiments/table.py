"""One paper table: its runs' settings and inputs, the order they run in, and the table written from their results.

Each row is one or more ``sgpo run`` calls (the task's recipe with the row's overrides, :mod:`.rows`), then
``sgpo eval`` of the last round's policy against the initial model. Runs resume: a finished run and its evaluation are
reused. Every iterative run on a seed starts from the same round 0 (DPO on the seed), trained once and copied.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sgpo.pipeline.files import read_jsonl, write_jsonl

from experiments import bundle, follower_table, quoted, render, versus
from experiments.attack import run_attack
from experiments.launch import Job, Launcher, evaluate, launch, sgpo
from experiments.plots import plot_frontier, plot_seed_sizes
from experiments.rows import INITIAL, SAME_RUN, SWEEP_ROW, Variant, run_name, track_budget, variants
from experiments.store import Results, annotator_metrics, label_agreement, rounds_of
from experiments.tasks import Task, label_pool


class Table:
    """The table ``args`` asks for (see :func:`experiments.options.table_args`), its results in ``args.out``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.store = Results(self.out / "results.json", self.out / "eval")
        self.launcher = Launcher()
        # held while the rounds' gold labels are made, so that two rows needing them label once
        self.label_lock = threading.Lock()
        self.task = Task.parse(args.task)
        if self.task.kind == "custom":
            (self.out / "logs").mkdir(exist_ok=True)
            self.task = label_pool(
                self.task,
                self.out,
                self.launcher.call,
                pool_prompts=getattr(args, "pool_prompts", 192),
                heldout_prompts=getattr(args, "heldout_prompts", 64),
            )
        self.max_new_tokens = args.max_new_tokens or (48 if self.task.hidden else 80)
        self.base = [
            f"rounds={args.rounds}",
            f"data.prompts_per_round={args.prompts_per_round}",
            "evaluate.prompts=null",
            f"generation.max_new_tokens={self.max_new_tokens}",
            "threads=1",
            # runs that start a round from the same policy sample and judge it once (sgpo.pipeline.cache)
            f"cache_dir={self.out / 'cache'}",
            # the hidden recipe's training settings are the pilot's (benchmarks/pilot_hidden.py), kept in hidden.yaml
            *([] if self.task.hidden else track_budget(getattr(args, "train_settings", "track"))),
            *([f"round0.epochs={args.round0_epochs}"] if getattr(args, "round0_epochs", None) else []),
        ]
        from sgpo.pipeline import load_config

        self.config = load_config(self.task.config, self.base)

    def evaluate(self, model: str, name: str) -> dict[str, Any]:
        a = self.args
        options = ["--num-prompts", str(a.num_prompts), "--max-new-tokens", str(self.max_new_tokens)]
        options += ["--cache-dir", str(self.out / "eval" / "responses"), *self.task.eval_args()]
        return evaluate(
            self.launcher.call, model, self.out / "eval" / name, options, self.out / "logs" / f"eval_{name}.log"
        )

    def attack(self, run_dir: Path) -> list[dict[str, Any]]:
        """The follower's attacked pairs in each round of ``run_dir`` (:func:`experiments.attack.run_attack`)."""
        import yaml
        from sgpo.pipeline.judges import build_judge

        judge = build_judge(self.task.judge, {}, None, option="--task")
        return run_attack(run_dir, judge, yaml.safe_load((run_dir / "config.yaml").read_text()))

    def available(self, variant: Variant) -> bool:
        """Whether the track has the seed ``variant`` asks for (the verifiable bundle holds 16 seed pairs)."""
        if self.task.hidden or self.seed_size(variant) <= len(read_jsonl(bundle.bundled("default_seed_pairs.jsonl"))):
            return True
        self.launcher.log(f"{variant.name}: left out, the verifiable track has no {self.seed_size(variant)}-pair seed")
        return False

    def seed_size(self, variant: Variant) -> int:
        return max(1, round(self.args.seed_size * variant.seed_scale))

    def seed_pairs(self, variant: Variant, seed: int) -> str:
        if not self.task.hidden:
            if variant.seed_pairs == "flipped":
                return str(bundle.flipped_seed(self.out, seed))
            if variant.seed_pairs == "gold":
                return str(bundle.gold_pairs(self.out, self.args.rounds, self.args.prompts_per_round))
            return str(bundle.verifiable_seed(self.out, self.seed_size(variant)))
        base = self.task.seed_file(self.out, self.seed_size(variant), seed, self.args.seed_size)
        if variant.seed_pairs == "flipped":
            return str(bundle.flipped_seed(self.out, seed, base))
        if variant.seed_pairs == "gold":
            return str(self.hidden_gold(base))
        return str(base)

    def round0_epochs(self, seed_file: str) -> int:
        """Epochs that give round 0 on ``seed_file`` the recipe's optimizer steps on its own seed: every seed size,
        flipped or gold set trains the same number of steps, so a row's gain measures its labels, not its compute."""
        cfg = self.config
        steps = cfg.round0.epochs * math.ceil(self.args.seed_size / cfg.train.batch_size)
        return max(1, round(steps * cfg.train.batch_size / len(read_jsonl(seed_file))))

    def hidden_gold(self, seed_file: Path) -> Path:
        """The seed plus the gold pairs of every prompt the rounds see, labelled once by ``sgpo label`` (cached)."""
        a = self.args
        with self.label_lock:
            prompts = self.out / "gold" / f"round_prompts_{a.rounds}x{a.prompts_per_round}.jsonl"
            write_jsonl(prompts, [{"prompt": p} for p in bundle.round_prompts(a.rounds, a.prompts_per_round)])
            labelled = self.out / "gold" / f"rounds_{self.task.slug}_{a.rounds}x{a.prompts_per_round}.jsonl"
            if not labelled.with_suffix(".json").is_file():
                command = sgpo("label", INITIAL, "--judge", self.task.judge, "--prompts", str(prompts), "--samples")
                command += ["4", "--budget", str(a.rounds * a.prompts_per_round)]
                command += ["--max-new-tokens", str(self.max_new_tokens), "--out", str(labelled), "--quiet"]
                command += ["--threads", "1"]
                self.launcher.call(command, self.out / "logs" / "label_rounds.log")
            path = self.out / f"gold_{seed_file.stem}+{a.rounds}x{a.prompts_per_round}.jsonl"
            write_jsonl(path, read_jsonl(seed_file) + read_jsonl(labelled))
        return path

    def lost_round0(self, donor: Variant, seed: int) -> bool:
        """Whether a finished donor run's round 0 is gone (runs are not kept with the results): its iterative rows
        need it, so it trains again (the same seed gives the same round 0) and its evaluation is reused."""
        return not (self.out / "runs" / run_name(donor.name, seed) / "round_0" / "checkpoint").is_dir()

    def job(self, variant: Variant, seed: int, donor: Future | None) -> None:
        """Train ``variant`` on ``seed`` (after its ``donor``'s round 0), evaluate it and store its results."""
        name = run_name(variant.name, seed)
        run_dir = self.out / "runs" / name
        if donor is not None:
            donor.result()
            if not (run_dir / "round_0").exists():
                # round 0 (DPO on the seed) is the same in every run on the same seed pairs: train it once, reuse it
                shutil.copytree(self.out / "runs" / f"{variant.donor}_s{seed}" / "round_0", run_dir / "round_0")
        command = sgpo("run", self.task.config, *self.base, *variant.overrides)
        if self.task.hidden:
            command += ["data.max_seed_pairs=null", f"evaluate.judge.name={self.task.judge}"]
            if self.task.heldout.name != Path(self.config.judge.agreement_pairs or "").name:
                # the annotator's agreement is measured on the task's own held-out pairs, not the recipe's rubric's
                command += [f"judge.agreement_pairs={self.task.heldout}"]
        seed_file = self.seed_pairs(variant, seed)
        command += [f"seed={seed}", f"data.seed_pairs={seed_file}", f"round0.epochs={self.round0_epochs(seed_file)}"]
        command += [f"output_dir={run_dir}", "logging.progress=false"]
        seconds = self.launcher.call(command, self.out / "logs" / f"{name}.log")
        if self.store.entry(variant.name, seed) is not None:
            # a donor trained again for its lost round 0: its stored results are the table's and stay
            return
        rounds = rounds_of(run_dir, "checkpoint")
        if not rounds:
            raise FileNotFoundError(f"{run_dir}: the run saved no checkpoint")
        report = json.loads((run_dir / "report.json").read_text())
        result = self.evaluate(str(rounds[-1]), name)
        entry = {
            "row": variant.row,
            "label": variant.label,
            "seed": seed,
            "seed_pairs": len(read_jsonl(seed_file)),
            "win_rate": 100 * result["win_rate"],
            "lc_win_rate": 100 * result["lc_win_rate"],
            "stderr": 100 * result["stderr"],
            "mean_score": result["mean_score"],
            # every round, a reused round 0 included (its metrics came with it)
            "train_seconds": sum(r.get("seconds") or 0.0 for r in report["rounds"]),
            "call_seconds": seconds,
            "mass_moved": [r["mass_moved"] for r in report["rounds"] if r.get("mass_moved") is not None],
            "run_dir": str(run_dir),
            "paired": result.get("paired"),
            "kl": result.get("kl"),
            "final_agreement": result.get("agreement"),
            "annotator": annotator_metrics(run_dir),
        }
        if variant.iterative and not self.task.hidden:
            # kept with the results: the run directories (its round labels) are not
            entry["label_agreement"] = label_agreement(run_dir)
        if self.task.hidden and (run_dir / "round_1" / "worst_case.safetensors").is_file():
            # which pairs the follower attacked, judged by gold, kept for the same reason
            entry["attack"] = self.attack(run_dir)
        # under the run's own row: a row that shares it (SAME_RUN) copies it once the table's runs are done
        if variant.name in SAME_RUN:
            own = next(v for v in variants(self.task.judge) if v.name == SAME_RUN[variant.name])
            entry.update(row=own.row, label=own.label)
        self.store.save({name: entry})
        self.launcher.log(f"{name}: win rate {entry['win_rate']:.1f}%, LC {entry['lc_win_rate']:.1f}%")

    def jobs(self, chosen: list[Variant]) -> Iterator[Job]:
        """The runs ``chosen`` needs, in the order they start: the donors first, so that a run waiting for its round 0
        never holds a slot for long; then the rows in the order ``--rows`` gives them, each for every seed in turn."""
        a, results = self.args, self.store
        needed = {v.donor for v in chosen if v.donor}
        todo = [v for v in variants(self.task.judge) if v.name in needed and v not in chosen] + chosen
        todo.sort(key=lambda v: (v.iterative, a.rows.index(v.row) if v.row in a.rows else -1))

        def finished(v: Variant, seed: int) -> bool:
            return results.entry(v.name, seed) is not None

        # the donors whose round 0 an unfinished iterative run of each seed still needs
        waiting = {seed: {v.donor for v in chosen if v.donor and not finished(v, seed)} for seed in a.seeds}
        # each run in turn for every seed: two iterative runs side by side then start from different round-0 policies,
        # and a later run on the same seed finds its first round's samples and labels in the shared cache
        # jobs are runs: rows that share one (SAME_RUN) train it once, whichever of them comes first
        seen: set[str] = set()
        for v, seed in sorted(((v, s) for s in a.seeds for v in todo), key=lambda p: (todo.index(p[0]), p[1])):
            key = run_name(v.name, seed)
            if key in seen:
                continue
            seen.add(key)
            after = run_name(v.donor, seed) if v.donor else None
            # a row that is another row's run is finished when that run is
            if finished(v, seed) and not (v.name in waiting[seed] and self.lost_round0(v, seed)):
                yield Job(key, after, None)
            else:
                yield Job(key, after, lambda before, v=v, seed=seed: self.job(v, seed, before))

    def run(self) -> None:
        a = self.args
        began = time.perf_counter()
        only = getattr(a, "variants", None)
        chosen = [v for v in variants(self.task.judge) if v.row in a.rows and (not only or v.name in only)]
        chosen = [v for v in chosen if self.available(v)]
        if getattr(a, "table_only", False):
            return self.print_table(chosen)
        (self.out / "logs").mkdir(exist_ok=True)
        self.store.data["initial"] = {"mean_score": self.evaluate(INITIAL, "initial")["mean_score"]}
        launch(self.jobs(chosen), a.jobs)
        for v in chosen:
            for seed in a.seeds:
                same = f"{SAME_RUN.get(v.name)}_s{seed}"
                if same in self.store.data:
                    self.store.data[f"{v.name}_s{seed}"] = {**self.store.data[same], "row": v.row, "label": v.label}
        self.store.save({"_wall_seconds": self.store.data.get("_wall_seconds", 0.0) + time.perf_counter() - began})
        if only:
            # a few runs of a table: its tables are rendered from all the results with --table-only
            self.launcher.log(f"{', '.join(only)}: stored in {self.store.path}")
            return
        self.print_table(chosen)

    def print_table(self, chosen: list[Variant]) -> None:
        """The table (table.md) and, on the hidden track, its pictures: reward vs KL (frontier.png) and row 10's seed
        sizes (seed_size.png); the verifiable track's evaluations have no paired differences to draw."""
        a = self.args
        if getattr(a, "docs", False):
            # the pages quote row 9's results too, kept beside the table's (--out <table>_flips)
            flips = Path(f"{self.out}_flips")
            quoted.rewrite_docs(Path.cwd(), self.store, versus.evaluations_of(flips))
        if self.task.hidden and SWEEP_ROW in a.rows:
            # row 12 is the follower's sweep against epsilon 0, a table of its own
            sweep = follower_table.follower_sweep_table(self.store, [v for v in chosen if v.row == SWEEP_ROW], a.seeds)
            (self.out / "follower_sweep.md").write_text(sweep + "\n")
            print(sweep)
            chosen = [v for v in chosen if v.row != SWEEP_ROW]
            if not chosen:
                return
        if self.task.hidden:
            table = render.hidden_table(self.store, chosen, a.rows, a.seeds, self.task.judge)
        else:
            table = render.verifiable_table(self.store, chosen, a.rows, a.seeds)
        (self.out / "table.md").write_text(table + "\n")
        print(table)
        print(f"wall time of the table: {self.store.data['_wall_seconds'] / 60:.1f} min with {a.jobs} jobs")
        if self.task.hidden:
            plot_frontier(self.store.data, chosen, a.seeds, self.out / "frontier.png", self.task.judge)
            if 10 in a.rows:
                plot_seed_sizes(self.store.data, a.seeds, self.out / "seed_size.png", self.task.judge)
