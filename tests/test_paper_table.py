"""benchmarks/paper_table.py's data: the flipped seed, the 100% gold set and the rows it runs."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_table.py"


@pytest.fixture(scope="module")
def table() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("sgpo_paper_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up while the file executes
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_flipped_seed_swaps_a_quarter_of_the_pairs(table, tmp_path: Path) -> None:
    seed = table.read_jsonl(table.bundled("default_seed_pairs.jsonl"))
    flipped = table.read_jsonl(table.flipped_seed(tmp_path, 3))
    assert len(flipped) == len(seed)
    swapped = [a for a, b in zip(seed, flipped, strict=True) if a != b]
    assert len(swapped) == round(0.25 * len(seed))
    for a, b in zip(seed, flipped, strict=True):
        if a != b:
            assert (b["chosen"], b["rejected"]) == (a["rejected"], a["chosen"])
            assert b["chosen_score"] < b["rejected_score"]
    # another seed flips other pairs
    assert table.read_jsonl(table.flipped_seed(tmp_path, 4)) != flipped


def test_gold_set_is_the_seed_plus_the_labelled_prompts_the_rounds_see(table, tmp_path: Path) -> None:
    seed = table.read_jsonl(table.bundled("default_seed_pairs.jsonl"))
    rows = table.read_jsonl(table.gold_pairs(tmp_path, 2, 32))
    assert rows[: len(seed)] == seed
    prompts = table.read_jsonl(table.bundled("default_prompts.jsonl"))
    seen = {t: [p["prompt"] for p in prompts if p["round"] == t][:32] for t in (1, 2)}
    extra = rows[len(seed) :]
    assert extra and all(r["prompt"] in seen[r["round"]] for r in extra)
    assert all(r["chosen_score"] > r["rejected_score"] for r in extra)
    # every seen prompt whose samples did not all tie has its pair
    pool = table.read_jsonl(table.bundled("gold_pool.jsonl"))
    expected = [p for p in pool if p["round"] in seen and p["prompt"] in seen[p["round"]]]
    assert extra == expected
    counts = json.loads(table.bundled("manifest.json").read_text())["counts"]
    with pytest.raises(ValueError, match="--prompts-per-round"):
        table.gold_pairs(tmp_path, 2, counts["gold_round_prompts"] + 1)
    with pytest.raises(ValueError, match="--rounds 3"):
        table.gold_pairs(tmp_path, 3, 8)


def test_every_row_of_the_issue_is_a_variant(table) -> None:
    variants = table.variants()
    assert {v.row for v in variants} == {2, 3, 4, 5, 6, 7, 8}
    epsilons = sorted(float(v.name.split("_")[1]) for v in variants if v.row == 7)
    assert epsilons == [0.0, 0.01, 0.03, 0.05, 0.1]
    paper = next(v for v in variants if v.name == "ssapo_paper")
    assert "follower.backend=paper" in paper.overrides
    # iterative runs start from the DPO round 0 on the same seed pairs
    assert {v.donor for v in variants if v.iterative} == {"dpo_seed", "flip_dpo"}
    assert all(v.seed_pairs == "flipped" for v in variants if v.donor == "flip_dpo")
