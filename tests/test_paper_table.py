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


def test_hidden_task_seed_flips_and_gold_from_the_rubric_pool(table, tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pool = [
        {
            "prompt": f"Tell me about tea {i}.",
            "chosen": f"c{i}",
            "rejected": f"r{i}",
            "chosen_score": 1.0,
            "rejected_score": 0.1,
        }
        for i in range(10)
    ]
    table.write_jsonl(data / "hidden_warmth_pool.jsonl", pool)
    table.write_jsonl(data / "hidden_warmth_heldout.jsonl", pool[:2])
    rounds = [{"round": 1 + i // 5, "prompt": f"round prompt {i}"} for i in range(10)]
    table.write_jsonl(data / "hidden_prompts.jsonl", rounds)
    monkeypatch.setattr(table, "bundled", lambda name: data / name)
    task = table.Task.parse("hidden:warmth")
    assert (task.config, task.judge, task.hidden) == ("hidden", "warmth", True)
    assert table.read_jsonl(task.seed_file(tmp_path, 4)) == pool[:4]
    with pytest.raises(ValueError, match="--seed-size: the warmth pool holds 10 pairs"):
        task.seed_file(tmp_path, 11)
    flipped = table.read_jsonl(table.flipped_seed(tmp_path, 1, task.seed_file(tmp_path, 4)))
    assert sum(a != b for a, b in zip(pool[:4], flipped, strict=True)) == 1
    assert table.round_prompts(2, 3) == ["round prompt 0", "round prompt 1", "round prompt 2"] + [
        "round prompt 5",
        "round prompt 6",
        "round prompt 7",
    ]
    args = task.eval_args()
    assert (
        args[:4] == ["--prompts", "hidden", "--judge", "warmth"] and str(data / "hidden_warmth_heldout.jsonl") in args
    )
    with pytest.raises(ValueError, match="--task: expected 'verifiable' or 'hidden:<warmth|concreteness|structure>'"):
        table.Task.parse("hidden:tone")
    assert table.Task.parse("verifiable").eval_args() == []
    # SPPO's preference model is the task's gold judge
    sppo = next(v for v in table.variants("warmth") if v.name == "sppo")
    assert "judge.name=warmth" in sppo.overrides
