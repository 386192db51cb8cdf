"""benchmarks/experiments (paper_table.py's package): the flipped seed, the 100% gold set and the rows it runs."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
from experiments import bundle, render, tasks
from experiments import rows as catalogue
from experiments.options import table_args
from experiments.plots import plot_frontier, plot_seed_sizes
from experiments.table import Table
from sgpo.pipeline.files import read_jsonl, write_jsonl


def test_flipped_seed_swaps_a_quarter_of_the_pairs(tmp_path: Path) -> None:
    seed = read_jsonl(bundle.bundled("default_seed_pairs.jsonl"))
    flipped = read_jsonl(bundle.flipped_seed(tmp_path, 3))
    assert len(flipped) == len(seed)
    swapped = [a for a, b in zip(seed, flipped, strict=True) if a != b]
    assert len(swapped) == round(0.25 * len(seed))
    for a, b in zip(seed, flipped, strict=True):
        if a != b:
            assert (b["chosen"], b["rejected"]) == (a["rejected"], a["chosen"])
            assert b["chosen_score"] < b["rejected_score"]
    # another seed flips other pairs
    assert read_jsonl(bundle.flipped_seed(tmp_path, 4)) != flipped


def test_gold_set_is_the_seed_plus_the_labelled_prompts_the_rounds_see(tmp_path: Path) -> None:
    seed = read_jsonl(bundle.bundled("default_seed_pairs.jsonl"))
    rows = read_jsonl(bundle.gold_pairs(tmp_path, 2, 32))
    assert rows[: len(seed)] == seed
    prompts = read_jsonl(bundle.bundled("default_prompts.jsonl"))
    seen = {t: [p["prompt"] for p in prompts if p["round"] == t][:32] for t in (1, 2)}
    extra = rows[len(seed) :]
    assert extra and all(r["prompt"] in seen[r["round"]] for r in extra)
    assert all(r["chosen_score"] > r["rejected_score"] for r in extra)
    # every seen prompt whose samples did not all tie has its pair
    pool = read_jsonl(bundle.bundled("gold_pool.jsonl"))
    expected = [p for p in pool if p["round"] in seen and p["prompt"] in seen[p["round"]]]
    assert extra == expected
    counts = json.loads(bundle.bundled("manifest.json").read_text())["counts"]
    with pytest.raises(ValueError, match="--prompts-per-round"):
        bundle.gold_pairs(tmp_path, 2, counts["gold_round_prompts"] + 1)
    with pytest.raises(ValueError, match="--rounds 3"):
        bundle.gold_pairs(tmp_path, 3, 8)


def test_every_row_of_the_issue_is_a_variant() -> None:
    variants = catalogue.variants()
    assert {v.row for v in variants} == set(range(2, 13))
    gated = [v for v in variants if v.row == 11]
    assert [v.name for v in gated] == ["iter_dpo_gate", "ssapo_prob_gate"]
    assert all("judge.options.gate=on_task" in v.overrides and v.donor == "dpo_seed" for v in gated)
    epsilons = sorted(float(v.name.split("_")[1]) for v in variants if v.row == 8)
    assert epsilons == [0.0, 0.005, 0.01, 0.03, 0.05, 0.1]
    paper = next(v for v in variants if v.name == "ssapo_paper")
    assert "follower.backend=paper" in paper.overrides
    # iterative runs start from the DPO round 0 on the same seed pairs; SPPO on gold starts from the instruct model
    donors = {v.name: v.donor for v in variants if v.iterative}
    assert donors["sppo"] is None and donors["sppo_self"] == "dpo_seed" and donors["flip_ssapo"] == "flip_dpo"
    assert donors["size_ssapo_x0.5"] == "size_dpo_x0.5" and donors["size_ssapo_x2"] == "size_dpo_x2"
    names = {v.name for v in variants}
    assert all(d in names for d in donors.values() if d)
    # every run a row shares with another is trained once
    assert all(catalogue.SAME_RUN[v.name] in names for v in variants if v.name in catalogue.SAME_RUN)
    assert all(v.seed_pairs == "flipped" for v in variants if v.donor == "flip_dpo")
    flips = {v.name: v for v in variants if v.row == 9}
    assert set(flips) == {"flip_dpo", "flip_rdpo", "flip_cdpo", "flip_ssapo"}
    assert all(v.seed_pairs == "flipped" for v in flips.values())
    assert {"round0.loss_type=robust", "train.label_smoothing=0.25"} <= set(flips["flip_rdpo"].overrides)
    assert "train.label_smoothing=0.25" in flips["flip_cdpo"].overrides
    scales = sorted({v.seed_scale for v in variants if v.row == 10})
    assert scales == [0.5, 1.0, 2.0]
    # row 12: the uncapped follower in both spaces and the capped follower's soft trim, each after the seed's round 0
    sweep = {v.name: v for v in variants if v.row == 12}
    assert set(sweep) == {
        "uncapped_probability_0.01",
        "uncapped_probability_0.05",
        "uncapped_probability_0.1",
        "uncapped_margin_0.05",
        "uncapped_margin_0.1",
        "soft_trim_0.1",
        "trim_uncapped_0.1",
        "margin_drop_0.1",
    }
    assert all(v.donor == "dpo_seed" for v in sweep.values())
    drop = sweep["margin_drop_0.1"].overrides
    assert {"follower.apply=margin_drop", "train.loss_type=sigmoid", "follower.max_shift=null"} <= set(drop)
    assert all("follower.max_shift=null" in v.overrides for k, v in sweep.items() if k.startswith("uncapped"))
    trim = sweep["soft_trim_0.1"].overrides
    assert {"follower.apply=soft_trim", "train.loss_type=sigmoid", "follower.max_shift=0.1"} <= set(trim)
    hard = sweep["trim_uncapped_0.1"].overrides
    assert {"follower.apply=soft_trim", "train.loss_type=sigmoid", "follower.max_shift=null"} <= set(hard)


@pytest.mark.parametrize("task", ["verifiable", "hidden:warmth"])
def test_every_variant_is_a_valid_run_config_with_equal_round0_steps(tmp_path: Path, task: str) -> None:
    from sgpo.pipeline import load_config
    from sgpo.pipeline.judges import check_judge_options

    recipe = load_config("hidden" if task != "verifiable" else "default", [])
    seed_size = recipe.data.max_seed_pairs if task != "verifiable" else 16
    args = argparse.Namespace(
        out=str(tmp_path), task=task, rounds=2, prompts_per_round=32, max_new_tokens=None, seed_size=seed_size
    )
    t = Table(args)
    steps = set()
    for v in catalogue.variants(t.task.judge):
        if not t.available(v):
            # the verifiable bundle has no 2x seed
            assert task == "verifiable" and v.seed_scale == 2.0
            continue
        if v.seed_pairs == "gold":
            continue  # made by sgpo label on the hidden track
        seed_file = t.seed_pairs(v, 1)
        rows = read_jsonl(seed_file)
        assert len(rows) == t.seed_size(v) == max(1, round(seed_size * v.seed_scale))
        if v.seed_pairs == "flipped":
            assert sum(r["chosen_score"] < r["rejected_score"] for r in rows) == round(0.25 * len(rows))
        epochs = t.round0_epochs(seed_file)
        cfg = load_config(
            t.task.config, [*t.base, *v.overrides, f"data.seed_pairs={seed_file}", f"round0.epochs={epochs}"]
        )
        if not v.iterative:
            assert cfg.method == "dpo" and cfg.rounds == 0
        else:
            # the annotating judge takes its options (the recipe's annotator options do not follow a gold judge)
            check_judge_options(cfg.judge.name, dict(cfg.judge.options))
        # round 0 takes the same optimizer steps whatever the seed's size
        steps.add(epochs * -(-len(rows) // cfg.train.batch_size))
    # the recipe's seed: hidden 32 epochs of 16 pairs, verifiable 3 epochs of 16 (the table's budget), batches of 4
    base_steps = (recipe.round0.epochs if task != "verifiable" else 3) * -(-seed_size // 4)
    # a seed whose size is not a multiple of 4 ends its epochs on a short batch: at most one extra step per epoch
    assert min(steps) == base_steps and max(steps) <= base_steps + max(1, base_steps // 4)


def test_a_donor_whose_round0_is_gone_trains_again(tmp_path: Path) -> None:
    args = argparse.Namespace(
        out=str(tmp_path), task="hidden:structure", rounds=2, prompts_per_round=32, max_new_tokens=None, seed_size=16
    )
    t = Table(args)
    donor = next(v for v in catalogue.variants("structure") if v.name == "dpo_seed")
    assert t.lost_round0(donor, 1)
    (tmp_path / "runs" / "dpo_seed_s1" / "round_0" / "checkpoint").mkdir(parents=True)
    assert not t.lost_round0(donor, 1) and t.lost_round0(donor, 2)
    # row 10's x1 DPO is row 2's run
    assert not t.lost_round0(next(v for v in catalogue.variants("structure") if v.name == "size_dpo_x1"), 1)


@pytest.mark.parametrize("name", ["flip_rdpo", "flip_cdpo", "sppo_self"])
def test_new_rows_losses_train_on_the_tiny_model(
    name: str, tmp_path: Path, tiny_model_dir: Path, preference_files: dict, single_thread: None
) -> None:
    from conftest import tiny_overrides
    from sgpo.pipeline import load_config, run

    v = next(v for v in catalogue.variants("verifiable") if v.name == name)
    overrides = [o for o in v.overrides if not o.startswith("generation.num_samples")]
    extra = ["rounds=1", "generation.num_samples=3"] if v.iterative else []
    out = tmp_path / name
    report = run(load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, out, *overrides, *extra)))
    rounds = {r["round"]: r for r in report["rounds"]}
    metrics = json.loads((out / "round_0" / "metrics.json").read_text())
    assert metrics["train"]["loss_type"] == ("robust" if name == "flip_rdpo" else "sigmoid")
    assert np.isfinite(metrics["train"]["loss"])
    if name == "sppo_self":
        assert set(rounds) == {0, 1}
        pairs = read_jsonl(out / "round_1" / "annotations.jsonl")
        # the implicit reward's Bradley-Terry win probabilities over 3 samples sum to 3 / 2
        assert pairs and all(sum(p["win_probs"]) == pytest.approx(1.5) for p in pairs)
    else:
        assert set(rounds) == {0}


def test_a_donor_trained_again_keeps_the_tables_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = argparse.Namespace(
        out=str(tmp_path), task="hidden:structure", rounds=2, prompts_per_round=32, max_new_tokens=None, seed_size=16
    )
    t = Table(args)
    stored = {"win_rate": 60.0, "train_seconds": 400.0, "run_dir": str(tmp_path / "runs" / "dpo_seed_s1")}
    t.store.data["dpo_seed_s1"] = stored
    calls = []
    monkeypatch.setattr(t.launcher, "call", lambda command, log: calls.append(command) or 1.0)
    monkeypatch.setattr(t, "evaluate", lambda model, name: pytest.fail("a kept entry is not evaluated again"))
    t.job(next(v for v in catalogue.variants("structure") if v.name == "dpo_seed"), 1, None)
    assert len(calls) == 1 and t.store.data["dpo_seed_s1"] is stored


def test_hidden_task_seed_flips_and_gold_from_the_rubric_pool(tmp_path: Path, monkeypatch) -> None:
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
    write_jsonl(data / "hidden_warmth_pool.jsonl", pool)
    write_jsonl(data / "hidden_warmth_heldout.jsonl", pool[:2])
    rounds = [{"round": 1 + i // 5, "prompt": f"round prompt {i}"} for i in range(10)]
    write_jsonl(data / "hidden_prompts.jsonl", rounds)
    monkeypatch.setattr(bundle, "bundled", lambda name: data / name)
    task = tasks.Task.parse("hidden:warmth")
    assert (task.config, task.judge, task.hidden) == ("hidden", "warmth", True)
    assert read_jsonl(task.seed_file(tmp_path, 4)) == pool[:4]
    with pytest.raises(ValueError, match="--seed-size: the warmth pool holds 10 pairs"):
        task.seed_file(tmp_path, 11)
    # every table seed draws its own pairs; row 10's smaller seed is a subset of the chosen one on the same seed
    assert read_jsonl(task.seed_file(tmp_path, 4, seed=2, block=4)) == pool[4:8]
    assert read_jsonl(task.seed_file(tmp_path, 2, seed=2, block=4)) == pool[4:6]
    with pytest.raises(ValueError, match="seed 3 asks for pairs 8..11"):
        task.seed_file(tmp_path, 4, seed=3, block=4)
    flipped = read_jsonl(bundle.flipped_seed(tmp_path, 1, task.seed_file(tmp_path, 4)))
    assert sum(a != b for a, b in zip(pool[:4], flipped, strict=True)) == 1
    assert bundle.round_prompts(2, 3) == ["round prompt 0", "round prompt 1", "round prompt 2"] + [
        "round prompt 5",
        "round prompt 6",
        "round prompt 7",
    ]
    args = task.eval_args()
    assert (
        args[:4] == ["--prompts", "hidden", "--judge", "warmth"] and str(data / "hidden_warmth_heldout.jsonl") in args
    )
    expected = "--task: expected 'verifiable', 'hidden:<warmth|concreteness|structure>' or 'package.module:Class'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        tasks.Task.parse("hidden:tone")
    assert tasks.Task.parse("verifiable").eval_args() == []
    # SPPO's preference model is the task's gold judge
    sppo = next(v for v in catalogue.variants("warmth") if v.name == "sppo")
    assert "judge.name=warmth" in sppo.overrides


def test_frontier_and_seed_size_plots_draw_every_seed(tmp_path: Path) -> None:
    def entry(diff: float, kl: float, pairs: int) -> dict:
        return {"paired": {"difference": {"mean": diff}}, "kl": kl, "seed_pairs": pairs}

    results = {
        "dpo_seed_s1": entry(0.10, 5.0, 16), "dpo_seed_s2": entry(0.20, 7.0, 16),
        "size_dpo_x0.5_s1": entry(0.05, 4.0, 8), "size_dpo_x0.5_s2": entry(0.07, 4.0, 8),
        "size_dpo_x2_s1": entry(0.15, 6.0, 32),
        "ssapo_prob_s1": entry(0.12, 9.0, 16), "dpo_gold_s1": entry(0.3, 10.0, 144),
        "iter_dpo_s1": {"kl": 3.0},  # a row without an evaluation is left out
    }  # fmt: skip
    chosen = [v for v in catalogue.variants("structure") if v.name in ("dpo_seed", "ssapo_prob", "iter_dpo")]
    points = plot_frontier(results, chosen, [1, 2], tmp_path / "frontier.png", "structure")
    assert points == {"DPO, seed only": ([5.0, 7.0], [0.10, 0.20]), chosen[2].label: ([9.0], [0.12])}
    curves = plot_seed_sizes(results, [1, 2], tmp_path / "seed_size.png", "structure")
    sizes, means, spreads = curves["dpo"]
    assert sizes == [8.0, 16.0, 32.0] and means == pytest.approx([0.06, 0.15, 0.15])
    assert spreads[0] == pytest.approx(np.std([0.05, 0.07], ddof=1)) and spreads[2] == 0.0
    assert curves["ssapo"][0] == [16.0]
    assert (tmp_path / "frontier.png").stat().st_size > 0 and (tmp_path / "seed_size.png").stat().st_size > 0


def test_rows_against_dpo_on_the_seed_are_paired_and_pooled_over_seeds(tmp_path: Path) -> None:
    args = argparse.Namespace(
        out=str(tmp_path), task="hidden:structure", rounds=2, prompts_per_round=32, max_new_tokens=None, seed_size=16
    )
    t = Table(args)
    rng = np.random.default_rng(0)
    scores = {}
    for name in ("dpo_seed", "dpo_gold", "iter_dpo"):
        for seed in (1, 2):
            scores[name, seed] = rng.uniform(size=64) + (0.5 if name == "dpo_gold" else 0.0)
            run = f"{name}_s{seed}"
            (tmp_path / "eval" / run).mkdir(parents=True)
            (tmp_path / "eval" / run / "eval.json").write_text(
                json.dumps({"results": [{"scores": scores[name, seed].tolist()}]})
            )
            t.store.data[run] = {"run_dir": str(tmp_path / "runs" / run)}
    iterative = next(v for v in catalogue.variants("structure") if v.name == "iter_dpo")
    cell = render.versus_seed(t.store, iterative, [1, 2])
    pooled = np.concatenate([scores["iter_dpo", s] - scores["dpo_seed", s] for s in (1, 2)])
    assert cell.startswith(f"{pooled.mean():+.3f} [")
    per_seed = [(scores["iter_dpo", s] - scores["dpo_seed", s]).mean() for s in (1, 2)]
    assert cell.endswith(f"(s1 {per_seed[0]:+.3f} / s2 {per_seed[1]:+.3f})")
    # a seed without the reference's evaluation is left out; DPO on the seed is not compared with itself
    assert render.versus_seed(t.store, iterative, [1, 3]).startswith(
        f"{(scores['iter_dpo', 1] - scores['dpo_seed', 1]).mean():+.3f}"
    )
    assert (
        render.versus_seed(t.store, next(v for v in catalogue.variants("structure") if v.name == "dpo_seed"), [1, 2])
        == "-"
    )
    # row 10's x1 DPO is row 2's run: it reads that run's results
    assert t.store.entry("size_dpo_x1", 1) is t.store.data["dpo_seed_s1"] and t.store.entry("size_dpo_x2", 1) is None
    lines = render.fitness(t.store, [1, 2])
    diff = scores["dpo_gold", 1] - scores["dpo_seed", 1]
    z = diff.mean() / (diff.std(ddof=1) / np.sqrt(64))
    assert lines[1] == f"- seed 1: DPO on 100% gold - DPO on the seed = {diff.mean():+.3f} ({z:.1f} standard errors)"
    assert len(lines) == 3


def test_a_judge_class_task_labels_its_own_pool_once(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    from sgpo.cli import main

    tests = Path(__file__).resolve().parent
    monkeypatch.syspath_prepend(str(tests))
    with pytest.raises(ValueError, match="--task: cannot import 'test_label:NoSuchJudge'"):
        tasks.Task.parse("test_label:NoSuchJudge")
    with pytest.raises(ValueError, match="--task: expected 'verifiable', 'hidden:<warmth"):
        tasks.Task.parse("hidden:tone")
    task = tasks.Task.parse("test_label:LetterJudge")
    assert (task.kind, task.config, task.hidden, task.judge, task.pool) == (
        "custom", "hidden", True, "test_label:LetterJudge", None
    )  # fmt: skip
    calls = []

    def call(command: list[str], log: Path) -> float:
        calls.append(command)
        # sgpo label in this process, on the tiny model
        assert main(command[command.index("label") :]) == 0
        return 0.0

    labelled = tasks.label_pool(task, tmp_path, call, model=str(tiny_model_dir), pool_prompts=6, heldout_prompts=3)
    pairs = read_jsonl(tmp_path / "gold" / "label_test_label_LetterJudge.jsonl")
    pool, heldout = read_jsonl(labelled.pool), read_jsonl(labelled.heldout)
    assert sorted(p["index"] for p in pool) == [p["index"] for p in pairs if p["index"] < 6]
    assert [p["index"] for p in heldout] == [p["index"] for p in pairs if p["index"] >= 6] and heldout
    order = np.random.default_rng(0).permutation(len(pool))
    assert [p["index"] for p in pool] == [sorted(p["index"] for p in pool)[int(i)] for i in order]
    assert read_jsonl(labelled.seed_file(tmp_path, 2)) == pool[:2]
    assert str(labelled.heldout) in labelled.eval_args() and "test_label:LetterJudge" in labelled.eval_args()
    # cached: a second table on the same output labels nothing
    tasks.label_pool(task, tmp_path, call, model=str(tiny_model_dir), pool_prompts=6, heldout_prompts=3)
    assert len(calls) == 1 and "--budget" in calls[0] and calls[0][calls[0].index("--budget") + 1] == "9"


def test_two_tables_on_one_output_keep_each_others_results(tmp_path: Path) -> None:
    args = argparse.Namespace(
        out=str(tmp_path), task="hidden:structure", rounds=2, prompts_per_round=32, max_new_tokens=None, seed_size=16
    )
    first, second = Table(args), Table(args)
    first.store.save({"dpo_seed_s1": {"win_rate": 60.0}})
    second.store.save({"iter_dpo_s1": {"win_rate": 62.0}})
    first.store.save({"dpo_gold_s1": {"win_rate": 80.0}})
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert set(on_disk) == {"dpo_seed_s1", "iter_dpo_s1", "dpo_gold_s1"} and first.store.data == on_disk


def test_a_row_that_is_another_rows_run_is_not_trained_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = argparse.Namespace(
        out=str(tmp_path), task="hidden:structure", rounds=2, prompts_per_round=32, max_new_tokens=None,
        seed_size=16, rows=[8], seeds=[1], jobs=1, table_only=False,
    )  # fmt: skip
    t = Table(args)
    t.store.data.update({name: {"win_rate": 60.0} for name in ("dpo_seed_s1", "iter_dpo_s1", "ssapo_prob_s1")})
    (tmp_path / "runs" / "dpo_seed_s1" / "round_0" / "checkpoint").mkdir(parents=True)
    ran = []
    monkeypatch.setattr(t, "evaluate", lambda model, name: {"mean_score": 0.2})
    monkeypatch.setattr(t, "job", lambda v, seed, donor: ran.append(v.name))
    monkeypatch.setattr(t, "print_table", lambda chosen: None)
    t.run()
    # eps 0 and 0.01 are rows 4 and 5's runs, already evaluated: they are copied, not trained
    assert sorted(ran) == ["eps_0.005", "eps_0.03", "eps_0.05", "eps_0.1"]
    assert t.store.data["eps_0_s1"]["row"] == 8 and t.store.data["eps_0.01_s1"]["win_rate"] == 60.0


def test_runs_share_a_cache_and_seeds_take_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = argparse.Namespace(
        out=str(tmp_path), task="hidden:structure", rounds=2, prompts_per_round=32, max_new_tokens=None,
        seed_size=16, rows=[4, 5], seeds=[1, 2], jobs=1, table_only=False,
    )  # fmt: skip
    t = Table(args)
    assert f"cache_dir={tmp_path / 'cache'}" in t.base
    ran = []
    monkeypatch.setattr(t, "evaluate", lambda model, name: {"mean_score": 0.2})
    monkeypatch.setattr(t, "job", lambda v, seed, donor: ran.append(f"{v.name}_s{seed}"))
    monkeypatch.setattr(t, "print_table", lambda chosen: None)
    t.run()
    # the donors first; then each run for both seeds, so the two side by side start from different round-0 policies
    # and the next run on a seed finds round 1 in the cache
    assert ran == [
        "dpo_seed_s1", "dpo_seed_s2", "iter_dpo_s1", "iter_dpo_s2",
        "ssapo_prob_s1", "ssapo_prob_s2", "ssapo_margin_s1", "ssapo_margin_s2",
    ]  # fmt: skip


def test_variants_run_only_the_named_runs_and_write_no_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--task", "hidden:structure", "--rows", "2", "12", "--seeds", "4", "--out", str(tmp_path), "--jobs", "1"]
    args = table_args([*argv, "--variants", "dpo_seed", "trim_uncapped_0.1"])
    t = Table(args)
    # a finished run is skipped: invoking the same command again resumes the sweep
    t.store.data["dpo_seed_s4"] = {"win_rate": 60.0}
    (tmp_path / "runs" / "dpo_seed_s4" / "round_0" / "checkpoint").mkdir(parents=True)
    ran = []
    monkeypatch.setattr(t, "evaluate", lambda model, name: {"mean_score": 0.2})
    monkeypatch.setattr(t, "job", lambda v, seed, donor: ran.append(f"{v.name}_s{seed}"))
    t.run()
    assert ran == ["trim_uncapped_0.1_s4"]
    assert not (tmp_path / "table.md").exists() and not (tmp_path / "follower_sweep.md").exists()
    with pytest.raises(SystemExit):
        table_args([*argv, "--variants", "ssapo_prob"])


@pytest.mark.parametrize("task", ["hidden:structure", "verifiable"])
def test_quick_is_a_smaller_table_in_its_own_directory(tmp_path: Path, task: str) -> None:
    from sgpo.pipeline import load_config

    full = table_args(["--task", task])
    quick = table_args(["--task", task, "--quick"])
    # a clone's committed results live in the full table's directory; the check never reads them
    assert quick.out == full.out + "_quick"
    assert (quick.rows, quick.seeds, quick.num_prompts) == ([1, 2, 3, 4, 5], [1], 64)
    assert quick.prompts_per_round == full.prompts_per_round // 2
    quick.out, full.out = str(tmp_path / "quick"), str(tmp_path / "full")
    small, big = Table(quick), Table(full)
    seed_file = small.seed_pairs(catalogue.variants(small.task.judge)[0], 1)
    # round 0 trains half the recipe's steps, through the same equal-steps rule as every other seed
    assert small.round0_epochs(seed_file) == max(1, big.round0_epochs(seed_file) // 2)
    command = load_config(small.task.config, small.base)
    assert command.data.prompts_per_round == quick.prompts_per_round and command.rounds == 2
    # an explicit choice wins over the check's defaults
    chosen = table_args(["--task", task, "--quick", "--round0-epochs", "5", "--out", str(tmp_path / "mine")])
    assert chosen.round0_epochs == 5 and chosen.out == str(tmp_path / "mine")


def test_the_verifiable_track_can_train_with_the_hidden_recipes_settings(tmp_path: Path) -> None:
    from sgpo.pipeline import load_config

    args = table_args(["--task", "verifiable", "--train-settings", "hidden", "--out", str(tmp_path)])
    t = Table(args)
    hidden, ours = load_config("hidden", []), t.config
    for section, key in [("train", "learning_rate"), ("train", "batch_size"), ("round0", "learning_rate")]:
        assert getattr(getattr(ours, section), key) == getattr(getattr(hidden, section), key)
    assert ours.judge.options == hidden.judge.options and ours.judge.name == hidden.judge.name
    # round 0 takes the hidden recipe's steps on the 16 bundled seed pairs
    seed_file = t.seed_pairs(catalogue.variants(t.task.judge)[0], 1)
    assert t.round0_epochs(seed_file) == hidden.round0.epochs
    # the track's own settings stay the default
    own = Table(table_args(["--task", "verifiable", "--out", str(tmp_path / "own")]))
    assert own.config.train.learning_rate != hidden.train.learning_rate
