"""Which track a table runs: its recipe, gold judge, seed pool, held-out pairs and evaluation options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from sgpo.pipeline.files import read_jsonl, write_jsonl

from experiments import bundle
from experiments.launch import sgpo
from experiments.rows import INITIAL


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
            pool = bundle.bundled(f"hidden_{rubric}_pool.jsonl")
            return cls("hidden", rubric, pool, bundle.bundled(f"hidden_{rubric}_heldout.jsonl"))
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
        """``sgpo eval``'s options for the task's judge and held-out pairs (none on the verifiable track)."""
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
    task: Task,
    out: Path,
    call: Callable[[list[str], Path], float],
    *,
    model: str = INITIAL,
    pool_prompts: int,
    heldout_prompts: int,
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
        command = sgpo("label", model, "--judge", task.judge, "--prompts", "hidden")
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
