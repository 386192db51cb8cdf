"""The claims of SGPO/SSAPO tested at small scale: SmolLM2-135M-Instruct, the bundled gold data, a gold judge.

Each row is one or more ``sgpo run`` calls (the task's recipe with the overrides listed in :func:`variants`), then
``sgpo eval`` of the last round's policy against the initial model on the held-out prompts. Prints the markdown table
for README "Results" and writes it, with every number, to ``--out``. Three kinds of task (``--task``):

- ``verifiable``: the ``default`` recipe, verifiable instructions judged by :class:`sgpo.evaluation.VerifiableJudge`;
- ``hidden:<rubric>``: the ``hidden`` recipe, open prompts judged by a rubric of :mod:`sgpo.evaluation.rubrics`; the
  seed of table seed s is the s-th block of ``--seed-size`` pairs of the bundled pool, the 100% gold row adds the
  gold pairs of every prompt the rounds see (made once with ``sgpo label`` and cached), and evaluations report paired
  score differences with bootstrap intervals, KL and the annotator's agreement with held-out gold pairs;
- ``package.module:Class``: any judge (a rubric or reward model of your own) on the hidden track's prompts; its gold
  pool and held-out pairs are labelled once with ``sgpo label`` (``--pool-prompts``, ``--heldout-prompts``; cached
  under ``--out``/gold), then the table runs as on a bundled rubric.

Rows: 1 initial model; 2 DPO on the seed; 3 DPO on 100% gold; 4 iterative self-annotated DPO (epsilon = 0); 5 SSAPO,
exact follower, probability and margin space; 6 SSAPO with the paper's follower; 7 SPPO with the self-annotator's and
with the gold judge's win probabilities; 8 the epsilon ablation; 9 25% of the seed flipped (DPO, rDPO, cDPO, SSAPO);
10 half and twice the seed (DPO, SSAPO); 11 rows 4 and 5 with the on-task gate on the annotator. Every round 0
trains the same number of optimizer steps as the recipe's seed does, whatever its pairs, so rows differ in labels, not
in compute. The reward-vs-KL picture of every row goes to ``frontier.png``, row 10's to ``seed_size.png``.

    python benchmarks/paper_table.py --task hidden:structure          # every row, seeds 1-3, 2 jobs
    python benchmarks/paper_table.py --task hidden:structure --quick  # an install check: rows 1-5, seed 1, smaller
    python benchmarks/paper_table.py --rows 2 5 8 --seeds 1 2 3        # the verifiable track

Jobs run side by side as separate processes with one thread each. Runs resume: a finished run directory and its
evaluation are reused, so an interrupted table continues where it stopped. Runs share ``--out``/cache: every iterative
run on a seed starts round 1 from the same round 0, so the first samples and labels that round and the others copy it;
a run whose weights come out identical to another's (the same files) reuses its evaluation too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from sgpo.evaluation.report import pyplot
from sgpo.pipeline.files import atomic_path, read_jsonl, write_jsonl

INITIAL = "SmolLM2-135M-Instruct"
FLIP_FRACTION = 0.25

# iterative runs: the paper's self-annotation by the implicit reward; the paper's code sets max_shift = epsilon
SSAPO = ["method=ssapo", "train.loss_type=ssapo", "judge.name=implicit_reward"]
DPO = ["method=dpo", "rounds=0", "train.loss_type=sigmoid"]

# a fixed training budget for every method: the default recipe's LoRA at learning rates that move a 135M model within
# the few optimizer steps that 16 seed pairs and a few dozen prompts per round give (batches of 4 pairs)
TRAIN_BUDGET = [
    "train.batch_size=4",
    "train.per_device_batch_size=4",
    "train.learning_rate=2e-4",
    "round0.learning_rate=5e-4",
    "round0.epochs=3",
]


def hidden_budget() -> list[str]:
    """The hidden recipe's training settings as overrides of the default recipe (``--train-settings hidden``): learning
    rates, batches, round 0's epochs and the annotator's options, so the verifiable track runs side by side with the
    hidden one."""
    from sgpo.pipeline import load_config

    h = load_config("hidden", [])
    return [
        f"train.learning_rate={h.train.learning_rate}",
        f"train.batch_size={h.train.batch_size}",
        f"train.per_device_batch_size={h.train.per_device_batch_size}",
        f"round0.learning_rate={h.round0.learning_rate}",
        f"round0.epochs={h.round0.epochs}",
        f"judge.options={json.dumps(dict(h.judge.options))}",
    ]


def track_budget(train_settings: str) -> list[str]:
    """The verifiable track's training settings: its own (``--train-settings track``) or the hidden recipe's."""
    return hidden_budget() if train_settings == "hidden" else TRAIN_BUDGET


def ssapo(epsilon: float, *extra: str) -> list[str]:
    return [*SSAPO, f"follower.epsilon={epsilon}", f"follower.max_shift={epsilon}", *extra]


@dataclass(frozen=True)
class Variant:
    row: int
    name: str
    label: str
    overrides: tuple[str, ...]
    # "default" (the seed), "flipped" (25% of it swapped) or "gold" (the seed plus the rounds' gold labels)
    seed_pairs: str = "default"
    # the seed's size as a multiple of --seed-size (row 10): its first pairs, a subset of every larger seed
    seed_scale: float = 1.0

    @property
    def iterative(self) -> bool:
        return "method=dpo" not in self.overrides

    @property
    def donor(self) -> str | None:
        """The DPO run whose round 0 an iterative run starts from (round 0 is the same for every such run)."""
        if not self.iterative or "round0.enabled=false" in self.overrides:
            return None
        if self.seed_pairs == "flipped":
            return "flip_dpo"
        return "dpo_seed" if self.seed_scale == 1.0 else f"size_dpo_x{self.seed_scale:g}"


def variants(gold_judge: str = "verifiable") -> list[Variant]:
    """Every row of the table: which runs it needs and how each differs from the task's recipe."""
    sppo = ("method=sppo", "train.loss_type=sppo", "generation.num_samples=5")
    v = [
        Variant(2, "dpo_seed", "DPO, seed only", tuple(DPO)),
        Variant(3, "dpo_gold", "DPO, 100% gold labels (seed + the rounds' prompts)", tuple(DPO), seed_pairs="gold"),
        Variant(4, "iter_dpo", "iterative self-annotated DPO (eps = 0)", tuple(ssapo(0.0))),
        Variant(5, "ssapo_prob", "SSAPO eps = 0.01, K = 6, probability space", tuple(ssapo(0.01))),
        Variant(
            5, "ssapo_margin", "SSAPO eps = 0.01, K = 6, margin space", tuple(ssapo(0.01, "follower.space=margin"))
        ),
        Variant(
            6,
            "ssapo_paper",
            "SSAPO eps = 0.01, K = 6, the paper's inexact follower",
            tuple(ssapo(0.01, "follower.backend=paper")),
        ),
        Variant(
            7,
            "sppo_self",
            "SPPO, win probabilities from the self-annotator (implicit reward, K = 5), after DPO on the seed",
            (*sppo, "judge.name=implicit_reward"),
        ),
        Variant(
            7,
            "sppo",
            f"SPPO, the gold judge ({gold_judge}) as preference model on every sample (K = 5): sees gold labels",
            # SPPO on gold starts from the instruct model itself, as in its paper: no DPO round on the seed
            (*sppo, f"judge.name={gold_judge}", "judge.options={}", "round0.enabled=false"),
        ),
    ]
    v += [Variant(8, f"eps_{e:g}", f"SSAPO eps = {e:g}", tuple(ssapo(e))) for e in EPSILONS]
    # row 11: rows 4 and 5 with the on-task gate on the annotator (judge.options.gate=on_task)
    v += [
        Variant(11, "iter_dpo_gate", "iterative self-annotated DPO (eps = 0), annotator with the on-task gate",
                tuple(ssapo(0.0, GATE))),
        Variant(11, "ssapo_prob_gate", "SSAPO eps = 0.01, probability space, annotator with the on-task gate",
                tuple(ssapo(0.01, GATE))),
    ]  # fmt: skip
    v += [
        Variant(9, "flip_dpo", "25% seed labels flipped: DPO", tuple(DPO), seed_pairs="flipped"),
        Variant(
            9,
            "flip_rdpo",
            "25% seed labels flipped: rDPO (robust, flip rate 0.25)",
            (*DPO[:2], "train.loss_type=robust", "round0.loss_type=robust", f"train.label_smoothing={FLIP_FRACTION}"),
            seed_pairs="flipped",
        ),
        Variant(
            9,
            "flip_cdpo",
            "25% seed labels flipped: cDPO (label smoothing 0.25)",
            (*DPO, f"train.label_smoothing={FLIP_FRACTION}"),
            seed_pairs="flipped",
        ),
        Variant(9, "flip_ssapo", "25% seed labels flipped: SSAPO eps = 0.01", tuple(ssapo(0.01)), seed_pairs="flipped"),
    ]
    for scale in SEED_SCALES:
        # at x1 these are rows 2 and 5's runs (SAME_RUN)
        v += [
            Variant(10, f"size_dpo_x{scale:g}", f"seed x{scale:g}: DPO", tuple(DPO), seed_scale=scale),
            Variant(
                10, f"size_ssapo_x{scale:g}", f"seed x{scale:g}: SSAPO eps = 0.01", tuple(ssapo(0.01)), seed_scale=scale
            ),
        ]
    return v


EPSILONS = (0.0, 0.005, 0.01, 0.03, 0.05, 0.1)
GATE = "judge.options.gate=on_task"
# row 10: half, the chosen and twice the chosen seed size (hidden: 1.9%, 3.8% and 7.7% of the 416 pool prompts)
SEED_SCALES = (0.5, 1.0, 2.0)
# the same runs appear in several rows; each is trained once
SAME_RUN = {"eps_0": "iter_dpo", "eps_0.01": "ssapo_prob", "size_dpo_x1": "dpo_seed", "size_ssapo_x1": "ssapo_prob"}


def bundled(name: str) -> Path:
    return Path(str(resources.files("sgpo") / "data" / name))


def flipped_seed(out: Path, seed: int, source: Path | None = None) -> Path:
    """The seed pairs (default: the bundled verifiable seed) with a seeded 25% of their chosen/rejected swapped."""
    rows = read_jsonl(source or bundled("default_seed_pairs.jsonl"))
    flip = np.random.default_rng(seed).permutation(len(rows))[: int(round(FLIP_FRACTION * len(rows)))]
    for i in flip:
        r = rows[int(i)]
        r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
        r["chosen_score"], r["rejected_score"] = r.get("rejected_score"), r.get("chosen_score")
    path = out / f"seed_flipped_{seed}{'_' + source.stem if source else ''}.jsonl"
    write_jsonl(path, rows)
    return path


@dataclass(frozen=True)
class Task:
    """Which track a table runs: its recipe, gold judge, seed, 100% gold pairs and evaluation options.

    ``hidden``: a rubric of :mod:`sgpo.evaluation.rubrics` with its bundled pool and held-out pairs; ``custom``: any
    judge class (``package.module:Class``) on the hidden track's prompts, whose pool and held-out pairs
    :func:`label_pool` makes with ``sgpo label`` (``pool`` and ``heldout`` are set once they exist).
    """

    kind: str
    rubric: str | None = None
    pool: Path | None = None
    heldout: Path | None = None

    @classmethod
    def parse(cls, text: str) -> Task:
        from sgpo.evaluation.rubrics import RUBRICS

        expected = f"'verifiable', 'hidden:<{'|'.join(RUBRICS)}>' or 'package.module:Class'"
        if text == "verifiable":
            return cls("verifiable")
        kind, _, rubric = text.partition(":")
        if kind == "hidden":
            if rubric not in RUBRICS:
                raise ValueError(f"--task: expected {expected}, got {text!r}")
            return cls(
                "hidden", rubric, bundled(f"hidden_{rubric}_pool.jsonl"), bundled(f"hidden_{rubric}_heldout.jsonl")
            )
        if not rubric:
            raise ValueError(f"--task: expected {expected}, got {text!r}")
        from sgpo.pipeline.judges import check_judge_class

        try:
            check_judge_class(text, "--task")
        except ValueError as err:
            raise ValueError(f"{err} (expected {expected})") from err
        return cls("custom", text)

    @property
    def hidden(self) -> bool:
        """Whether the table runs on the hidden track's open prompts (a rubric or a judge class)."""
        return self.kind in ("hidden", "custom")

    @property
    def config(self) -> str:
        return "hidden" if self.hidden else "default"

    @property
    def judge(self) -> str:
        return self.rubric or "verifiable"

    @property
    def slug(self) -> str:
        """The judge's name in file names."""
        return "".join(c if c.isalnum() else "_" for c in self.judge)

    def seed_file(self, out: Path, size: int, seed: int = 1, block: int | None = None) -> Path:
        """The hidden track's seed for table seed ``seed``: ``size`` pairs of the judge's pool (stored in a seeded
        order) from offset ``(seed - 1) * block``, so each table seed draws its own pairs (seed 1: the pool's first)
        and a smaller seed of row 10 is a subset of the larger ones on the same table seed."""
        if self.pool is None:
            raise ValueError(f"--task {self.judge}: its gold pool is not labelled yet")
        pool = read_jsonl(self.pool)
        start = (seed - 1) * (size if block is None else block)
        if start + size > len(pool):
            raise ValueError(
                f"--seed-size: the {self.judge} pool holds {len(pool)} pairs, seed {seed} asks for pairs "
                f"{start}..{start + size - 1}"
            )
        path = out / f"seed_{self.slug}_{size}{'' if seed == 1 else f'_s{seed}'}.jsonl"
        write_jsonl(path, pool[start : start + size])
        return path

    def eval_args(self) -> list[str]:
        if not self.hidden:
            return []
        return [
            "--prompts",
            "hidden",
            "--judge",
            self.judge,
            "--agreement-pairs",
            str(self.heldout),
            "--batch-size",
            "32",
        ]


def label_pool(
    task: Task, out: Path, call: Any, *, model: str = INITIAL, pool_prompts: int, heldout_prompts: int
) -> Task:
    """A judge class's gold data, made once with ``sgpo label`` (cached) the way the bundled rubrics' was made
    (scripts/make_hidden_data.py): 4 samples of ``model`` for each of the first ``pool_prompts + heldout_prompts``
    prompts of the hidden track's train split, 48 new tokens, seed 0; the best against the worst sample of the first
    ``pool_prompts`` prompts in a seeded random order is the pool, those of the rest the held-out pairs.

    ``call(command, log)`` runs a command. Returns ``task`` with its pool and held-out files."""
    gold = out / "gold"
    gold.mkdir(parents=True, exist_ok=True)
    labelled = gold / f"label_{task.slug}.jsonl"
    if not labelled.with_suffix(".json").is_file():
        command = [sys.executable, "-m", "sgpo", "label", model, "--judge", task.judge, "--prompts", "hidden"]
        command += ["--split", "train", "--samples", "4", "--budget", str(pool_prompts + heldout_prompts)]
        command += ["--max-new-tokens", "48", "--seed", "0", "--out", str(labelled), "--quiet", "--threads", "1"]
        call(command, out / "logs" / f"label_{task.slug}.log")
    pairs = read_jsonl(labelled)
    pool = [p for p in pairs if p["index"] < pool_prompts]
    heldout = [p for p in pairs if p["index"] >= pool_prompts]
    if not pool or not heldout:
        raise ValueError(
            f"--task {task.judge}: the judge separated the samples of {len(pool)} pool and {len(heldout)} held-out "
            "prompts; a table needs both (a judge that scores every sample equal gives no pair)"
        )
    order = np.random.default_rng(0).permutation(len(pool))
    pool_file, heldout_file = gold / f"{task.slug}_pool.jsonl", gold / f"{task.slug}_heldout.jsonl"
    write_jsonl(pool_file, [pool[int(i)] for i in order])
    write_jsonl(heldout_file, heldout)
    return replace(task, pool=pool_file, heldout=heldout_file)


def verifiable_seed(out: Path, size: int) -> Path:
    """The first ``size`` pairs of the bundled verifiable seed (row 10's smaller seeds are subsets of it)."""
    rows = read_jsonl(bundled("default_seed_pairs.jsonl"))
    if size > len(rows):
        raise ValueError(f"--seed-size: the bundled verifiable seed holds {len(rows)} pairs, asked for {size}")
    path = out / f"seed_verifiable_{size}.jsonl"
    write_jsonl(path, rows[:size])
    return path


def round_prompts(rounds: int, per_round: int) -> list[str]:
    """The prompts the hidden recipe's rounds 1..rounds see: the first ``per_round`` of each round in the bundle."""
    rows = read_jsonl(bundled("hidden_prompts.jsonl"))
    return [p["prompt"] for t in range(1, rounds + 1) for p in [q for q in rows if q["round"] == t][:per_round]]


def gold_pairs(out: Path, rounds: int, per_round: int) -> Path:
    """The seed plus the gold label of every prompt the self-annotating runs see in rounds 1..rounds.

    Prompts whose sampled responses all tied under the judge have no gold pair, as in the pool.
    """
    counts = json.loads(bundled("manifest.json").read_text())["counts"]
    labelled_rounds = len(counts["gold_pool_pairs"]) - 1
    if rounds > labelled_rounds or per_round > counts["gold_round_prompts"]:
        raise ValueError(
            f"--rounds {rounds} --prompts-per-round {per_round}: the bundled gold pool labels the first "
            f"{counts['gold_round_prompts']} prompts of rounds 1..{labelled_rounds} "
            "(rerun scripts/make_gold_data.py with larger --gold-rounds/--gold-round-prompts)"
        )
    prompts = read_jsonl(bundled("default_prompts.jsonl"))
    seen = {(t, p["prompt"]) for t in range(1, rounds + 1) for p in [q for q in prompts if q["round"] == t][:per_round]}
    pool = read_jsonl(bundled("gold_pool.jsonl"))
    rows = read_jsonl(bundled("default_seed_pairs.jsonl")) + [p for p in pool if (p["round"], p["prompt"]) in seen]
    path = out / f"gold_{rounds}x{per_round}.jsonl"
    write_jsonl(path, rows)
    return path


def mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


class Table:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results_path = self.out / "results.json"
        self.results: dict[str, Any] = json.loads(self.results_path.read_text()) if self.results_path.is_file() else {}
        self.lock = threading.Lock()
        # held while the rounds' gold labels are made, so that two rows needing them label once
        self.label_lock = threading.Lock()
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.task = Task.parse(args.task)
        if self.task.kind == "custom":
            (self.out / "logs").mkdir(exist_ok=True)
            self.task = label_pool(
                self.task,
                self.out,
                self.call,
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

    def log(self, message: str) -> None:
        with self.lock:
            print(message, flush=True)

    def call(self, command: list[str], log: Path) -> float:
        """Run ``command`` with its output in ``log``; returns its wall time."""
        self.log("$ " + " ".join(command[1:]))
        began = time.perf_counter()
        with log.open("a") as handle:
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[1:])} failed ({done.returncode}); see {log}")
        return time.perf_counter() - began

    def evaluate(self, model: str, name: str) -> dict[str, Any]:
        a = self.args
        output = self.out / "eval" / name
        if not (output / "eval.json").is_file():
            command = [sys.executable, "-m", "sgpo", "eval", model, "--baseline", INITIAL, "--output", str(output)]
            command += ["--num-prompts", str(a.num_prompts), "--max-new-tokens", str(self.max_new_tokens)]
            command += ["--cache-dir", str(self.out / "eval" / "responses"), *self.task.eval_args()]
            self.call(command, self.out / "logs" / f"eval_{name}.log")
        summary = json.loads((output / "eval.json").read_text())
        return summary["results"][0]

    def available(self, variant: Variant) -> bool:
        """Whether the track has the seed ``variant`` asks for (the verifiable bundle holds 16 seed pairs)."""
        if self.task.hidden or self.seed_size(variant) <= len(read_jsonl(bundled("default_seed_pairs.jsonl"))):
            return True
        self.log(f"{variant.name}: left out, the verifiable track has no {self.seed_size(variant)}-pair seed")
        return False

    def seed_size(self, variant: Variant) -> int:
        return max(1, round(self.args.seed_size * variant.seed_scale))

    def seed_pairs(self, variant: Variant, seed: int) -> str:
        if not self.task.hidden:
            if variant.seed_pairs == "flipped":
                return str(flipped_seed(self.out, seed))
            if variant.seed_pairs == "gold":
                return str(gold_pairs(self.out, self.args.rounds, self.args.prompts_per_round))
            return str(verifiable_seed(self.out, self.seed_size(variant)))
        base = self.task.seed_file(self.out, self.seed_size(variant), seed, self.args.seed_size)
        if variant.seed_pairs == "flipped":
            return str(flipped_seed(self.out, seed, base))
        if variant.seed_pairs == "gold":
            return str(self.hidden_gold(base))
        return str(base)

    def round0_epochs(self, seed_file: str) -> int:
        """Epochs that give round 0 on ``seed_file`` the recipe's optimizer steps on its own seed: every seed size,
        flipped or gold set trains the same number of steps, so a row's gain measures its labels, not its compute."""
        cfg = self.config
        recipe_seed = self.args.seed_size
        steps = cfg.round0.epochs * math.ceil(recipe_seed / cfg.train.batch_size)
        return max(1, round(steps * cfg.train.batch_size / len(read_jsonl(seed_file))))

    def hidden_gold(self, seed_file: Path) -> Path:
        """The seed plus the gold pairs of every prompt the rounds see, labelled once by ``sgpo label`` (cached)."""
        a = self.args
        with self.label_lock:
            prompts = self.out / "gold" / f"round_prompts_{a.rounds}x{a.prompts_per_round}.jsonl"
            write_jsonl(prompts, [{"prompt": p} for p in round_prompts(a.rounds, a.prompts_per_round)])
            labelled = self.out / "gold" / f"rounds_{self.task.slug}_{a.rounds}x{a.prompts_per_round}.jsonl"
            if not labelled.with_suffix(".json").is_file():
                command = [sys.executable, "-m", "sgpo", "label", INITIAL, "--judge", self.task.judge, "--prompts"]
                command += [str(prompts), "--samples", "4", "--budget", str(a.rounds * a.prompts_per_round)]
                command += ["--max-new-tokens", str(self.max_new_tokens), "--out", str(labelled), "--quiet"]
                command += ["--threads", "1"]
                self.call(command, self.out / "logs" / "label_rounds.log")
            path = self.out / f"gold_{seed_file.stem}+{a.rounds}x{a.prompts_per_round}.jsonl"
            write_jsonl(path, read_jsonl(seed_file) + read_jsonl(labelled))
        return path

    def save(self, entries: dict[str, Any]) -> None:
        """Add ``entries`` to results.json, keeping what another table on the same output wrote there meanwhile."""
        with self.lock:
            on_disk = json.loads(self.results_path.read_text()) if self.results_path.is_file() else {}
            self.results = {**self.results, **on_disk, **entries}
            with atomic_path(self.results_path) as tmp:
                tmp.write_text(json.dumps(self.results, indent=2) + "\n")

    def lost_round0(self, donor: Variant, seed: int) -> bool:
        """Whether a finished donor run's round 0 is gone (runs are not kept with the results): its iterative rows
        need it, so it trains again (the same seed gives the same round 0) and its evaluation is reused."""
        name = f"{SAME_RUN.get(donor.name, donor.name)}_s{seed}"
        return not (self.out / "runs" / name / "round_0" / "checkpoint").is_dir()

    def job(self, variant: Variant, seed: int, donor: Future | None) -> None:
        key = f"{variant.name}_s{seed}"
        run_name = f"{SAME_RUN.get(variant.name, variant.name)}_s{seed}"
        run_dir = self.out / "runs" / run_name
        if donor is not None:
            donor.result()
            donor_dir = self.out / "runs" / f"{variant.donor}_s{seed}" / "round_0"
            if not (run_dir / "round_0").exists():
                # round 0 (DPO on the seed) is the same in every run on the same seed pairs: train it once, reuse it
                shutil.copytree(donor_dir, run_dir / "round_0")
        command = [sys.executable, "-m", "sgpo", "run", self.task.config, *self.base, *variant.overrides]
        if self.task.hidden:
            command += ["data.max_seed_pairs=null", f"evaluate.judge.name={self.task.judge}"]
            if self.task.heldout.name != Path(self.config.judge.agreement_pairs or "").name:
                # the annotator's agreement is measured on the task's own held-out pairs, not the recipe's rubric's
                command += [f"judge.agreement_pairs={self.task.heldout}"]
        seed_file = self.seed_pairs(variant, seed)
        command += [f"seed={seed}", f"data.seed_pairs={seed_file}", f"round0.epochs={self.round0_epochs(seed_file)}"]
        command += [f"output_dir={run_dir}"]
        command += ["logging.progress=false"]
        seconds = self.call(command, self.out / "logs" / f"{run_name}.log")
        rounds = sorted(run_dir.glob("round_*/checkpoint"), key=lambda p: int(p.parent.name.split("_")[1]))
        if not rounds:
            raise FileNotFoundError(f"{run_dir}: the run saved no checkpoint")
        report = json.loads((run_dir / "report.json").read_text())
        result = self.evaluate(str(rounds[-1]), run_name)
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
        self.save({key: entry})
        self.log(f"{key}: win rate {entry['win_rate']:.1f}%, LC {entry['lc_win_rate']:.1f}%")

    def run(self) -> None:
        a = self.args
        (self.out / "logs").mkdir(exist_ok=True)
        began = time.perf_counter()
        chosen = [v for v in variants(self.task.judge) if v.row in a.rows and self.available(v)]
        if getattr(a, "table_only", False):
            return self.print_table(chosen)
        self.results["initial"] = {"mean_score": self.evaluate(INITIAL, "initial")["mean_score"]}
        # donors first, so a run that waits for its round 0 never holds a slot for long
        needed = {v.donor for v in chosen if v.donor}
        todo = [v for v in variants(self.task.judge) if v.name in needed and v not in chosen] + chosen
        # then the rows in the order --rows gives them: a partial table runs what was asked for first
        todo.sort(key=lambda v: (v.iterative, a.rows.index(v.row) if v.row in a.rows else -1))

        def finished(v: Variant, seed: int) -> bool:
            return lookup(self.results, v.name, seed) is not None

        # the donors whose round 0 an unfinished iterative run of each seed still needs
        waiting = {seed: {v.donor for v in chosen if v.donor and not finished(v, seed)} for seed in a.seeds}
        # each run in turn for every seed: two iterative runs side by side then start from different round-0 policies,
        # and a later run on the same seed finds its first round's samples and labels in the shared cache
        order = sorted(((v, seed) for seed in a.seeds for v in todo), key=lambda p: (todo.index(p[0]), p[1]))
        futures: dict[str, Future] = {}
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            for v, seed in order:
                key = f"{v.name}_s{seed}"
                if key in futures or f"{SAME_RUN.get(v.name, '')}_s{seed}" in futures:
                    continue
                # a row that is another row's run (SAME_RUN) is finished when that run is
                if finished(v, seed) and not (v.name in waiting[seed] and self.lost_round0(v, seed)):
                    done: Future = Future()
                    done.set_result(None)
                    futures[key] = done
                    continue
                futures[key] = pool.submit(self.job, v, seed, futures.get(f"{v.donor}_s{seed}"))
            for future in futures.values():
                future.result()
        for v in chosen:
            for seed in a.seeds:
                same = f"{SAME_RUN.get(v.name)}_s{seed}"
                if same in self.results:
                    self.results[f"{v.name}_s{seed}"] = {**self.results[same], "row": v.row, "label": v.label}
        self.save({"_wall_seconds": self.results.get("_wall_seconds", 0.0) + time.perf_counter() - began})
        self.print_table(chosen)

    def print_hidden_table(self, chosen: list[Variant]) -> None:
        a = self.args
        lines = [
            f"| row | method | mean {self.task.judge} score | paired difference vs initial [95% CI] | win rate % "
            "| difference vs DPO on the seed [95% CI] | KL | annotator agrees with held-out gold % "
            "| gold agrees with round labels % | mass moved % | train wall time (s) | seeds |",
            "|---" * 12 + "|",
        ]
        if 1 in a.rows:
            score = self.results["initial"]["mean_score"]
            lines.append(f"| 1 | initial model ({INITIAL}) | {score:.3f} | - | 50.0 | - | 0 | - | - | - | 0 | - |")
        for v in chosen:
            found = [e for s in a.seeds if (e := self.entry(v.name, s)) is not None]
            if found:
                label = v.label + (f" ({found[0]['seed_pairs']} seed pairs)" if v.row == 10 else "")
                cells = hidden_row(found)
                cells.insert(3, self.versus_seed(v, a.seeds))
                lines.append(f"| {v.row} | {label} | " + " | ".join(cells) + " |")
        lines += self.fitness(a.seeds)
        table = "\n".join(lines)
        (self.out / "table.md").write_text(table + "\n")
        print(table)
        print(f"wall time of the table: {self.results['_wall_seconds'] / 60:.1f} min with {a.jobs} jobs")

    def entry(self, name: str, seed: int) -> dict[str, Any] | None:
        return lookup(self.results, name, seed)

    def scores(self, name: str, seed: int) -> np.ndarray | None:
        """Per-prompt gold scores of a finished row's evaluation (the same prompts and per-row seeds for all)."""
        entry = self.entry(name, seed)
        if not entry or "run_dir" not in entry:
            return None
        path = self.out / "eval" / Path(entry["run_dir"]).name / "eval.json"
        return np.asarray(json.loads(path.read_text())["results"][0]["scores"]) if path.is_file() else None

    def versus_seed(self, variant: Variant, seeds: list[int]) -> str:
        """The row against DPO on the same seed pairs, prompt by prompt, pooled over the seeds both ran."""
        from sgpo.evaluation.statistics import bootstrap_mean

        reference = "flip_dpo" if variant.seed_pairs == "flipped" else "dpo_seed"
        if variant.seed_scale != 1.0:
            reference = f"size_dpo_x{variant.seed_scale:g}"
        if variant.name in (reference, SAME_RUN.get(reference)) or SAME_RUN.get(variant.name) == reference:
            return "-"
        diffs = {}
        for seed in seeds:
            mine, theirs = self.scores(variant.name, seed), self.scores(reference, seed)
            if mine is not None and theirs is not None:
                diffs[seed] = mine - theirs
        if not diffs:
            return "-"
        d = bootstrap_mean(np.concatenate(list(diffs.values())))
        cell = f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
        # the interval resamples prompts; training noise shows in how far the seeds' own means spread
        per_seed = " / ".join(f"s{seed} {x.mean():+.3f}" for seed, x in diffs.items())
        return cell if len(diffs) == 1 else f"{cell} ({per_seed})"

    def fitness(self, seeds: list[int]) -> list[str]:
        """Whether the track separates labels (DESIGN 5): full gold against the seed in standard errors, per seed."""
        lines = []
        for seed in seeds:
            gold, seed_only = self.scores("dpo_gold", seed), self.scores("dpo_seed", seed)
            if gold is None or seed_only is None:
                continue
            diff = gold - seed_only
            z = diff.mean() / (diff.std(ddof=1) / math.sqrt(diff.size))
            lines.append(
                f"- seed {seed}: DPO on 100% gold - DPO on the seed = {diff.mean():+.3f} ({z:.1f} standard errors)"
            )
        return ["", *lines] if lines else []

    def print_table(self, chosen: list[Variant]) -> None:
        """The table (table.md) and its pictures: reward vs KL (frontier.png), row 10's seed sizes (seed_size.png)."""
        if not self.task.hidden:
            # the verifiable track's evaluations have no paired differences to draw
            return self.print_verifiable_table(chosen)
        self.print_hidden_table(chosen)
        a = self.args
        plot_frontier(self.results, chosen, a.seeds, self.out / "frontier.png", self.task.judge)
        if 10 in a.rows:
            plot_seed_sizes(self.results, a.seeds, self.out / "seed_size.png", self.task.judge)

    def print_verifiable_table(self, chosen: list[Variant]) -> None:
        a = self.args
        lines = [
            "| row | method | win rate % | LC win rate % | mean judge score | self-labels = judge % | mass moved % "
            "| train wall time (s) | seeds |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        if 1 in a.rows:
            score = self.results["initial"]["mean_score"]
            lines.append(f"| 1 | initial model ({INITIAL}) | 50.0 | 50.0 | {score:.3f} | - | - | 0 | - |")
        for v in chosen:
            found = [self.results[f"{v.name}_s{s}"] for s in a.seeds if f"{v.name}_s{s}" in self.results]
            if not found:
                continue
            agreement = (
                [x for r in found if (x := label_agreement(Path(r["run_dir"]))) is not None] if v.iterative else []
            )
            moved = [100 * float(np.mean(r["mass_moved"])) for r in found if r.get("mass_moved")]
            lines.append(
                f"| {v.row} | {v.label} | {mean_spread([r['win_rate'] for r in found])} | "
                f"{mean_spread([r['lc_win_rate'] for r in found])} | {np.mean([r['mean_score'] for r in found]):.3f} | "
                f"{mean_spread(agreement)} | {mean_spread(moved) if v.iterative else '-'} | "
                f"{np.mean([r['train_seconds'] for r in found]):.0f} | {len(found)} |"
            )
        table = "\n".join(lines)
        (self.out / "table.md").write_text(table + "\n")
        print(table)
        print(f"wall time of the table: {self.results['_wall_seconds'] / 60:.1f} min with {a.jobs} jobs")


def lookup(results: dict[str, Any], name: str, seed: int) -> dict[str, Any] | None:
    """A row's results on ``seed``; a row that is another row's run (SAME_RUN) reads that run's."""
    return results.get(f"{name}_s{seed}") or results.get(f"{SAME_RUN.get(name)}_s{seed}")


def _found(results: dict[str, Any], name: str, seeds: list[int]) -> list[dict[str, Any]]:
    """A row's evaluated results over ``seeds``."""
    return [e for s in seeds if (e := lookup(results, name, s)) is not None and e.get("paired")]


def plot_frontier(
    results: dict[str, Any], chosen: list[Variant], seeds: list[int], path: Path, judge: str
) -> dict[str, tuple[list[float], list[float]]]:
    """The reward-vs-KL picture across rows: each seed's run as a small point, the seeds' mean as a large one.

    Returns the points drawn, ``label: (KL, paired difference)`` per seed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.scatter([0.0], [0.0], marker="*", s=140, color="black", label="initial model", zorder=3)
    points: dict[str, tuple[list[float], list[float]]] = {}
    names = list(dict.fromkeys(v.name for v in chosen))
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(2, len(names))))
    for name, color in zip(names, colors, strict=False):
        found = _found(results, name, seeds)
        if not found:
            continue
        label = next(v for v in chosen if v.name == name).label
        kl = [float(r["kl"]) for r in found]
        diff = [float(r["paired"]["difference"]["mean"]) for r in found]
        points[label] = (kl, diff)
        ax.scatter(kl, diff, s=14, color=color, alpha=0.5)
        ax.scatter([np.mean(kl)], [np.mean(diff)], s=70, color=color, edgecolor="black", label=label, zorder=3)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("KL from the initial model (nats, on the model's own samples)")
    ax.set_ylabel(f"mean {judge} score - initial model's")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=6.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return points


def plot_seed_sizes(
    results: dict[str, Any], seeds: list[int], path: Path, judge: str
) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Row 10: the gain over the initial model against the seed's size, DPO and SSAPO, with 100% gold as a line.

    Returns ``method: (seed pairs, mean difference, standard deviation over seeds)`` per size drawn."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    curves: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for method, marker in (("dpo", "o"), ("ssapo", "s")):
        sizes, means, spreads = [], [], []
        for scale in SEED_SCALES:
            name = f"size_{method}_x{scale:g}"
            found = _found(results, name, seeds)
            if not found:
                continue
            diffs = [float(r["paired"]["difference"]["mean"]) for r in found]
            sizes.append(float(found[0]["seed_pairs"]))
            means.append(float(np.mean(diffs)))
            spreads.append(float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0)
        if sizes:
            curves[method] = (sizes, means, spreads)
            label = "DPO on the seed" if method == "dpo" else "SSAPO eps = 0.01 (seed + 2 self-annotated rounds)"
            ax.errorbar(sizes, means, yerr=spreads, marker=marker, capsize=3, label=label)
    gold = _found(results, "dpo_gold", seeds)
    if gold:
        ax.axhline(np.mean([r["paired"]["difference"]["mean"] for r in gold]), color="green", linestyle="--",
                   label="DPO on 100% gold labels")  # fmt: skip
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("gold seed pairs")
    ax.set_ylabel(f"mean {judge} score - initial model's")
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return curves


def hidden_row(found: list[dict[str, Any]]) -> list[str]:
    """Cells of one hidden-track row: score, paired difference with its interval, win rate, KL, annotator numbers."""
    diffs = [r["paired"]["difference"] for r in found]
    wins = [r["paired"]["win_rate"] for r in found]
    if len(found) == 1:
        d, w = diffs[0], wins[0]
        diff = f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        win = f"{100 * w['mean']:.1f} [{100 * w['low']:.1f}, {100 * w['high']:.1f}]"
    else:
        # mean over seeds, with the mean of the per-seed bootstrap intervals' half-widths
        half = np.mean([(d["high"] - d["low"]) / 2 for d in diffs])
        diff = f"{np.mean([d['mean'] for d in diffs]):+.3f} ± {half:.3f} (sd {np.std([d['mean'] for d in diffs]):.3f})"
        win = f"{mean_spread([100 * w['mean'] for w in wins])}"
    heldout = [r["annotator"]["heldout"][0] for r in found if r.get("annotator", {}).get("heldout")]
    own = [np.mean(r["annotator"]["round"]) for r in found if r.get("annotator", {}).get("round")]
    moved = [100 * float(np.mean(r["mass_moved"])) for r in found if r.get("mass_moved")]
    return [
        f"{np.mean([r['mean_score'] for r in found]):.3f}",
        diff,
        win,
        f"{np.mean([r['kl'] for r in found]):.2f}",
        mean_spread(heldout),
        mean_spread(own),
        mean_spread(moved),
        f"{np.mean([r['train_seconds'] for r in found]):.0f}",
        str(len(found)),
    ]


def annotator_metrics(run_dir: Path) -> dict[str, list[float]]:
    """Per self-annotating round: the annotator's held-out agreement before it, and gold's agreement with its labels."""
    out: dict[str, list[float]] = {"heldout": [], "round": []}
    for path in sorted(run_dir.glob("round_*/metrics.json"), key=lambda p: int(p.parent.name.split("_")[1])):
        annotator = json.loads(path.read_text()).get("annotator", {})
        for key in out:
            value = annotator.get(key, {}).get("agreement")
            if value is not None:
                out[key].append(100 * value)
    return out


def label_agreement(run_dir: Path) -> float | None:
    """How often the self-annotation (the implicit reward) picks the response the verifiable judge prefers, in %.

    Over every round's pairs whose two responses the judge does not score equal.
    """
    from sgpo.evaluation import VerifiableJudge

    judge = VerifiableJudge()
    agree = total = 0
    for path in sorted(run_dir.glob("round_*/annotations.jsonl")):
        pairs = read_jsonl(path)
        if not pairs:
            continue
        prompts = [p["prompt"] for p in pairs]
        chosen = judge.scores(prompts, [p["chosen"] for p in pairs])
        rejected = judge.scores(prompts, [p["rejected"] for p in pairs])
        decided = chosen != rejected
        agree += int((chosen > rejected)[decided].sum())
        total += int(decided.sum())
    return 100 * agree / total if total else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the task's defaults filled in (``--quick``'s included)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, nargs="*", default=list(range(1, 12)), help="rows to run, in this order (DPO runs first)"
    )
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--out", default=None, help="default: bench_results/paper (verifiable), bench_results/<task>")
    parser.add_argument(
        "--num-prompts", type=int, default=None, help="held-out test prompts judged per model (64; hidden: 256)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts-per-round", type=int, default=None, help="32; hidden: the recipe's (64)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="the rounds' sampling and the evaluation (80; hidden: 48)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    parser.add_argument(
        "--task",
        default="verifiable",
        help="verifiable | hidden:warmth|concreteness|structure | package.module:Class (any judge; its gold pool and "
        "held-out pairs are labelled once with sgpo label)",
    )
    parser.add_argument(
        "--pool-prompts", type=int, default=192, help="a judge class's task: prompts whose gold pairs make its pool"
    )
    parser.add_argument(
        "--heldout-prompts", type=int, default=64, help="a judge class's task: prompts of its held-out gold pairs"
    )
    parser.add_argument(
        "--seed-size",
        type=int,
        default=None,
        help="gold seed pairs (hidden: hidden.yaml's; verifiable: the bundled 16)",
    )
    parser.add_argument(
        "--table-only", action="store_true", help="print the table and plots of the results so far; run nothing"
    )
    parser.add_argument(
        "--train-settings",
        choices=("track", "hidden"),
        default="track",
        help="the verifiable track's training settings: its own, or the hidden recipe's (learning rates, round 0's "
        "steps, the annotator's options) to compare the tracks side by side",
    )
    parser.add_argument(
        "--round0-epochs",
        type=int,
        default=None,
        help="round 0's epochs on the recipe's seed (default the recipe's); every other seed trains the same steps",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="an install check: rows 1-5 on seed 1, 64 test prompts, rounds of half the recipe's prompts and round 0 "
        "at half its steps, into its own --out (<task>_quick)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs: expected an integer >= 1")
    try:
        task = Task.parse(args.task)
    except ValueError as err:
        parser.error(str(err))
    from sgpo.pipeline import load_config

    recipe = load_config(task.config, [])
    if args.round0_epochs is not None and args.round0_epochs < 1:
        parser.error("--round0-epochs: expected an integer >= 1")
    args.prompts_per_round = args.prompts_per_round or (recipe.data.prompts_per_round if task.hidden else 32)
    out = "bench_results/paper" if not task.hidden else f"bench_results/{args.task.replace(':', '_')}"
    if args.quick:
        # its own output: a clone's committed full-size results are never mistaken for the check's
        args.rows, args.seeds = [r for r in args.rows if r <= 5], args.seeds[:1]
        args.num_prompts = args.num_prompts or 64
        args.prompts_per_round = max(1, args.prompts_per_round // 2)
        round0 = (recipe if task.hidden else load_config(task.config, track_budget(args.train_settings))).round0.epochs
        args.round0_epochs = args.round0_epochs or max(1, round0 // 2)
        out += "_quick"
    args.num_prompts = args.num_prompts or (256 if task.hidden else 64)
    args.out = args.out or out
    if args.seed_size is None:
        args.seed_size = (
            recipe.data.max_seed_pairs if task.hidden else len(read_jsonl(bundled("default_seed_pairs.jsonl")))
        )
    return args


def main() -> None:
    Table(parse_args()).run()


if __name__ == "__main__":
    main()
