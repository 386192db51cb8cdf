"""--table-only rewrites every committed results table byte for byte, from the committed results alone.

Each case copies what a committed results directory's table is made from (its results.json or sweep.json and the
evaluations' eval.json) into a scratch directory at the same relative path, reruns the command the markdown states with
the render-only flag, and compares the bytes with the committed file. Nothing trains: the commands only read.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from experiments import follower_table, pilot, quoted, render, sweep
from experiments.options import table_args
from experiments.rows import variants
from experiments.store import Results
from experiments.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench_results"
HIDDEN = ["--task", "hidden:structure"]
PILOT = ["benchmarks/pilot_hidden.py", "--rubric", "structure", "--sizes", "16", "249"]
LR3 = ["--seeds", "1", "2", "--learning-rate", "3e-4", "--runs", "runs/pilot_lr3e-4"]

# (directories the command reads, the script, the commands in the order they ran, the file they wrote)
CASES = {
    "hidden_structure": (
        ["hidden_structure"],
        "paper_table",
        [
            # README's order: rows 10 and 8 drew seed_size.png, then the table of rows 1-7 and 11 was written
            [*HIDDEN, "--rows", "10", "8", "--seeds", "1", "--num-prompts", "256", "--table-only"],
            [*HIDDEN, "--rows", "1", "2", "3", "4", "5", "6", "7", "11", "--seeds", "1", "2", "3", "4", "5"]
            + ["--table-only"],
        ],
        "table.md",
    ),
    "hidden_structure_flips": (
        ["hidden_structure_flips"],
        "paper_table",
        [[*HIDDEN, "--rows", "1", "9", "--seeds", "1", "2", "3", "--num-prompts", "256"]
         + ["--out", "bench_results/hidden_structure_flips", "--table-only"]],
        "table.md",
    ),
    "hidden_structure_quick": (["hidden_structure_quick"], "paper_table", [[*HIDDEN, "--quick", "--table-only"]],
                               "table.md"),
    "pilot_hidden_structure_lr1e-4": (
        ["pilot_hidden_structure_lr1e-4"],
        "pilot",
        [[*PILOT, "--seeds", "1", "--learning-rate", "1e-4", "--runs", "runs/pilot_lr"]
         + ["--out", "bench_results/pilot_hidden_structure_lr1e-4", "--table-only"]],
        "pilot.md",
    ),
    "pilot_hidden_structure_lr2e-4": (
        ["pilot_hidden_structure_lr2e-4"],
        "pilot",
        [[*PILOT, "--seeds", "1", "--learning-rate", "2e-4", "--runs", "runs/pilot_lr2e-4"]
         + ["--out", "bench_results/pilot_hidden_structure_lr2e-4", "--summary-only"]],
        "pilot.md",
    ),
    "pilot_hidden_structure_lr3e-4": (
        ["pilot_hidden_structure_lr3e-4"],
        "pilot",
        [[*PILOT, *LR3, "--out", "bench_results/pilot_hidden_structure_lr3e-4", "--table-only"]],
        "pilot.md",
    ),
    "pilot_hidden_warmth": (
        ["pilot_hidden_warmth"],
        "pilot",
        [["benchmarks/pilot_hidden.py", "--sizes", "16", "32", "64", "128", "256", "--seeds", "1", "--jobs", "2"]
         + ["--table-only"]],
        "pilot.md",
    ),
    "pilot_hidden_structure": (
        [f"pilot_hidden_structure_lr{lr}" for lr in ("1e-4", "2e-4", "3e-4", "5e-4")],
        "pilot",
        [["benchmarks/pilot_hidden.py", "--compare"]
         + [f"bench_results/pilot_hidden_structure_lr{lr}" for lr in ("1e-4", "2e-4", "3e-4", "5e-4")]
         + ["--out", "bench_results/pilot_hidden_structure"]],
        "compare.md",
    ),
    "annotator_sweep": (
        ["annotator_sweep"],
        "sweep",
        [["benchmarks/annotator_sweep.py", "--rubrics", "structure", "concreteness", "--sizes", "16", "--every", "16"]
         + ["--table-only"]],
        "sweep.md",
    ),
}  # fmt: skip


def committed_inputs(scratch: Path, directories: list[str]) -> None:
    """What a table reads from committed results directories (results.json or sweep.json, the evaluations'
    eval.json), under ``scratch/bench_results`` at the same relative paths."""
    for name in directories:
        source = RESULTS / name
        for path in [*source.glob("*.json"), *source.glob("eval/*/eval.json")]:
            target = scratch / "bench_results" / name / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def table_only(script: str, argv: list[str]) -> None:
    """What the script does with ``argv`` (``paper_table.py`` takes its options only, the others the whole line)."""
    if script == "paper_table":
        Table(table_args(argv)).run()
    else:
        {"pilot": pilot.main, "sweep": sweep.main}[script](argv)


@pytest.mark.parametrize("case", list(CASES))
def test_table_only_rewrites_the_committed_table_byte_for_byte(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directories, script, commands, rendered = CASES[case]
    committed_inputs(tmp_path, directories)
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        table_only(script, argv)
    assert (tmp_path / "bench_results" / case / rendered).read_bytes() == (RESULTS / case / rendered).read_bytes()
    # nothing trained: no run directory, log or evaluation appeared
    assert not (tmp_path / "runs").exists() and not list((tmp_path / "bench_results").glob("*/logs"))


def test_every_quoted_figure_is_rewritten_from_the_results_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's claims table and the generated blocks of the results and follower pages come from results.json: a
    figure typed by hand, or results changed without --docs, fails here."""
    committed_inputs(tmp_path, ["hidden_structure", "hidden_structure_flips"])
    for name in quoted.DOCS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(quoted.BLOCK.sub(lambda m: m[1] + m[4], (ROOT / name).read_text()))
    monkeypatch.chdir(tmp_path)
    table_only("paper_table", [*HIDDEN, "--rows", "1", "--seeds", "1", "--table-only", "--docs"])
    for name in quoted.DOCS:
        assert (tmp_path / name).read_bytes() == (ROOT / name).read_bytes(), name
    # every page's blocks are there, and a block without a renderer is an error
    text = "".join((ROOT / name).read_text() for name in quoted.DOCS)
    assert {m["name"] for m in quoted.BLOCK.finditer(text)} == set(quoted.Quoted(None, None).blocks())
    with pytest.raises(KeyError, match="page.md: generated block 'nope' has no renderer"):
        quoted.rewrite("<!-- generated: nope -->\n<!-- end: nope -->", {}, "page.md")


def test_the_verifiable_table_rewrites_every_cell_its_results_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committed verifiable table's self-label agreement came from its runs' round labels, which are not kept;
    every other cell comes back byte for byte from results.json and the evaluations."""
    case = "verifiable_hidden_settings"
    committed_inputs(tmp_path, [case])
    monkeypatch.chdir(tmp_path)
    args = ["--task", "verifiable", "--train-settings", "hidden", "--rows", "1", "2", "3", "4", "5", "--seeds", "1"]
    args += ["2", "--prompts-per-round", "64", "--num-prompts", "200", "--out", f"bench_results/{case}", "--table-only"]
    Table(table_args(args)).run()
    ours = (tmp_path / "bench_results" / case / "table.md").read_text().splitlines()
    theirs = (RESULTS / case / "table.md").read_text().splitlines()
    assert len(ours) == len(theirs) == 8
    column = theirs[0].split("|").index(" self-labels = judge % ")
    for mine, committed in zip(ours, theirs, strict=True):
        a, b = mine.split("|"), committed.split("|")
        assert a[:column] + a[column + 1 :] == b[:column] + b[column + 1 :]
        assert a[column] in (" - ", b[column])
    # the iterative rows are the ones whose cell the kept results cannot give
    assert [line.split("|")[column] for line in ours[5:]] == [" - "] * 3


def test_the_verifiable_table_reads_the_stored_label_agreement_once_the_runs_are_gone(tmp_path: Path) -> None:
    results = Results(tmp_path / "results.json")
    entry = {"win_rate": 40.0, "lc_win_rate": 41.0, "mean_score": 0.2, "train_seconds": 10.0, "mass_moved": [0.02]}
    gone = str(tmp_path / "runs" / "gone")
    results.data.update(
        {
            "initial": {"mean_score": 0.3},
            "iter_dpo_s1": {**entry, "run_dir": gone, "label_agreement": 50.0},
            "iter_dpo_s2": {**entry, "run_dir": gone, "label_agreement": 58.0},
            "ssapo_prob_s1": {**entry, "run_dir": gone},
        }
    )
    chosen = [v for v in variants() if v.name in ("iter_dpo", "ssapo_prob")]
    lines = render.verifiable_table(results, chosen, [1, 4, 5], [1, 2]).splitlines()
    assert lines[3].split(" | ")[5] == "54.0 ± 5.7"
    # a run whose directory is gone and whose results hold no agreement shows none
    assert lines[4].split(" | ")[5] == "-"


@pytest.mark.parametrize(
    "case,script,argv",
    [
        ("hidden_structure_quick", "paper_table.py", [*HIDDEN, "--quick", "--table-only"]),
        ("pilot_hidden_structure_lr3e-4", "pilot_hidden.py", CASES["pilot_hidden_structure_lr3e-4"][2][0][1:]),
        ("annotator_sweep", "annotator_sweep.py", CASES["annotator_sweep"][2][0][1:]),
    ],
)
def test_the_scripts_run_their_table_only_command_from_the_repository_root(
    case: str, script: str, argv: list[str], tmp_path: Path
) -> None:
    """The commands the results pages quote, as typed: ``python benchmarks/<script> ...`` from the root."""
    _, _, _, rendered = CASES[case]
    committed_inputs(tmp_path, [case])
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    done = subprocess.run([sys.executable, f"benchmarks/{script}", *argv], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "bench_results" / case / rendered).read_text()
    assert written == (RESULTS / case / rendered).read_text() and written.rstrip("\n") in done.stdout


def test_the_follower_sweep_table_compares_each_setting_with_epsilon_0_and_the_soft_trim(tmp_path: Path) -> None:
    import json

    import numpy as np

    results = Results(tmp_path / "results.json", tmp_path / "eval")
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 64)
    attack = {
        "pairs": 100,
        "attacked": 10,
        "mass_moved": 0.05,
        "attacked_grad_share": 0.02,
        "attacked_margin_percentile": 0.04,
        "attacked_margin_percentile_max": 0.09,
        "gold_disagrees_attacked": 6,
        "decided_attacked": 8,
        "gold_disagrees_all": 40,
        "decided_all": 80,
        "gradient_ratio_attacked": 0.0,
        "gradient_ratio_rest": 1.0,
    }
    for name, shift, seed_attack in (
        ("iter_dpo", 0.0, None),
        ("uncapped_probability_0.1", 0.05, attack),
        ("soft_trim_0.1", 0.02, {**attack, "gradient_ratio_attacked": 0.5}),
    ):
        for seed in (1, 2):
            run = f"{name}_s{seed}"
            scores = base + shift + (0.01 * seed if name != "iter_dpo" else 0.0)
            (tmp_path / "eval" / run).mkdir(parents=True)
            (tmp_path / "eval" / run / "eval.json").write_text(json.dumps({"results": [{"scores": scores.tolist()}]}))
            entry = {"run_dir": str(tmp_path / "runs" / run), "kl": 10.0 + seed, "mean_score": float(scores.mean())}
            if seed_attack:
                entry["attack"] = [{**seed_attack, "round": 1}, {**seed_attack, "round": 2}]
            results.data[run] = entry
    chosen = [v for v in variants() if v.name in ("uncapped_probability_0.1", "soft_trim_0.1")]
    lines = follower_table.follower_sweep_table(results, chosen, [1, 2]).splitlines()
    assert len(lines) == 4
    # the control first, then the follower's settings
    trim, uncapped = lines[2].split(" | "), lines[3].split(" | ")
    # against epsilon 0: +0.06 and +0.07 on every prompt, so no prompt variance: the t interval over two seed means
    # (t_1 = 12.71, standard error 0.005), p = 0.049, and Holm doubles the smaller of the two settings' p-values
    assert uncapped[1] == "+0.065 [+0.001, +0.129] (s1 +0.060 / s2 +0.070)"
    assert trim[1] == "+0.035 [-0.029, +0.099] (s1 +0.030 / s2 +0.040)"
    assert uncapped[2] == trim[2] == "0.098"
    # the 90% interval [+0.033, +0.097] lies beyond the +-0.02 margin; the trim's [+0.003, +0.067] straddles it
    assert (uncapped[3], trim[3]) == ("not equivalent", "inconclusive")
    assert uncapped[4].startswith("+0.030 [") and trim[4] == "-"
    assert uncapped[5:11] == ["11.50", "5.0", "10.0", "2.0", "4 / 9", "4 of 4"]
    # 6 of 8 attacked pairs reversed in each of 4 rounds of 80 decided pairs with 40 reversed: exact within rounds
    from sgpo.evaluation.statistics import stratified_exact_test

    assert uncapped[11] == f"75 (24/32) / 50, p = {stratified_exact_test([(6, 8, 40, 80)] * 4):.2g}"
    # each round alone: two strata, one per seed
    assert uncapped[12] == uncapped[13] == f"75 (12/16) / 50, p = {stratified_exact_test([(6, 8, 40, 80)] * 2):.2g}"
    assert uncapped[14:] == ["0.00 / 1.00", "2 |"] and trim[14] == "0.50 / 1.00"
