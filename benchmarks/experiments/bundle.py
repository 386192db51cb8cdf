"""Seed and gold-pair files cut from the data bundled with sgpo (``python/sgpo/data``), written for a run to read."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from sgpo.pipeline.files import read_jsonl, write_jsonl

from experiments.rows import FLIP_FRACTION


def bundled(name: str) -> Path:
    """A file of sgpo's bundled data."""
    path = Path(str(resources.files("sgpo") / "data" / name))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: scripts/make_gold_data.py (the verifiable track) and scripts/make_hidden_data.py "
            "(the hidden track) make the bundled data"
        )
    return path


def write_seed(pool: list[dict[str, Any]], size: int, seed: int, path: Path) -> Path:
    """The first ``size`` pairs of a ``seed``-permutation of ``pool``, written to ``path``."""
    order = np.random.default_rng(seed).permutation(len(pool))
    write_jsonl(path, [pool[int(i)] for i in order[:size]])
    return path


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
    """The verifiable seed plus the gold label of every prompt the self-annotating runs see in rounds 1..rounds.

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
