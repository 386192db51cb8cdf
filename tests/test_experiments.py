"""benchmarks/experiments: the launcher the three experiments share, the table's runs, the pilot's and the sweep's
resumption."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
from experiments import pilot, sweep
from experiments.launch import Job, Launcher, launch
from experiments.rows import Variant, run_name
from experiments.table import Table


def test_a_job_starts_its_own_work_then_waits_for_the_one_it_follows() -> None:
    events, started = [], threading.Event()

    def first(_: Future | None) -> None:
        assert started.wait(10)
        events.append("first done")

    def second(before: Future | None) -> None:
        events.append("second started")
        started.set()
        before.result()
        events.append("second after first")

    futures = launch([Job("a", None, first), Job("b", "a", second), Job("c", "a", None)], workers=2)
    assert events == ["second started", "first done", "second after first"]
    # a job already done runs nothing
    assert futures["c"].done() and futures["c"].result() is None


def test_a_failed_job_fails_the_launch() -> None:
    def fail(_: Future | None) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        launch([Job("ok", None, lambda _: None), Job("bad", None, fail)], workers=1)


def test_a_command_runs_on_one_thread_with_its_output_in_its_log(tmp_path: Path) -> None:
    launcher = Launcher()
    log = tmp_path / "job.log"
    launcher.call([sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"], log)
    assert log.read_text() == "1\n"
    with pytest.raises(RuntimeError, match=f"failed \\(3\\); see {log}"):
        launcher.call([sys.executable, "-c", "import sys; sys.exit(3)"], log)


def test_the_pilot_trains_what_its_results_lack_after_the_initial_evaluation_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = argparse.Namespace(
        out=str(tmp_path / "out"), runs=str(tmp_path / "runs"), rubric="structure", sizes=[16, 32], seeds=[1, 2],
        prompts=None, jobs=1,
    )  # fmt: skip
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text(json.dumps({"structure_n32_s2": {"size": 32}}))
    ran, summarised = [], []
    monkeypatch.setattr(pilot.Pilot, "initial", lambda self, _: ran.append("initial"))
    monkeypatch.setattr(pilot.Pilot, "job", lambda self, n, s, initial: ran.append((n, s, initial.done())))
    monkeypatch.setattr(pilot, "summarise", lambda results, a, out, command: summarised.append(command))
    pilot.Pilot(args).run("benchmarks/pilot_hidden.py --rubric structure")
    # the largest size first; a finished size and seed is not trained again; one worker: the initial evaluation is done
    assert ran == ["initial", (32, 1, True), (16, 1, True), (16, 2, True)]
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(on_disk) == {"structure_n32_s2", "wall_seconds"} and summarised == [
        "benchmarks/pilot_hidden.py --rubric structure"
    ]


def test_the_sweep_gathers_finished_jobs_of_every_setting_without_training(tmp_path: Path) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    (runs / "jobs").mkdir(parents=True)
    point = {"step": 0, "all": dict.fromkeys(("sum", "mean", "length_debiased"), 0.5), "mean_chosen_ratio": 0.0}
    point["on_task"] = point["all"]
    for steps in (128, 64):
        job = {"rubric": "structure", "size": 16, "seed": 1, "heldout_pairs": 85, "on_task_pairs": 48, "curve": [point]}
        (runs / "jobs" / f"structure_n16_s1_steps{steps}_lr0.0005_beta0.1.json").write_text(json.dumps(job))
    # the script path does not exist: a job that had to train would fail
    argv = ["missing/annotator_sweep.py", "--rubrics", "structure", "--sizes", "16", f"--out={out}", f"--runs={runs}"]
    sweep.main(argv)
    sweep.main([*argv, "--steps", "64"])
    gathered = json.loads((out / "sweep.json").read_text())
    assert set(gathered) == {
        "structure_n16_s1_steps128_lr0.0005_beta0.1", "structure_n16_s1_steps64_lr0.0005_beta0.1"
    }  # fmt: skip
    table = (out / "sweep.md").read_text()
    assert table.count("| structure (85, 48 on-task) | 16 | 1 | 0 | 50 / 50 / 50 | 50 / 50 / 50 | +0.0 |") == 2
    assert table.endswith(f"Command: `{' '.join(argv)} --steps 64`\n")


def test_rows_that_share_a_run_train_it_once_whichever_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = argparse.Namespace(
        out=str(tmp_path), task="hidden:structure", rounds=2, prompts_per_round=32, max_new_tokens=None,
        seed_size=16, rows=[10, 5], seeds=[1], jobs=2, table_only=False,
    )  # fmt: skip
    t = Table(args)
    ran = []

    def job(v: Variant, seed: int, donor: Future | None) -> None:
        if donor is not None:
            # as Table.job does, an iterative run waits for its donor: its round 0 is trained before it starts
            donor.result()
            assert run_name(v.donor, seed) in ran
        ran.append(run_name(v.name, seed))
        t.store.save({run_name(v.name, seed): {"win_rate": 50.0 + len(ran)}})

    monkeypatch.setattr(t, "evaluate", lambda model, name: {"mean_score": 0.2})
    monkeypatch.setattr(t, "job", job)
    monkeypatch.setattr(t, "print_table", lambda chosen: None)
    t.run()
    # row 10's x1 seed is rows 2 and 5's: DPO on the seed and SSAPO in probability space, each trained once
    assert sorted(ran) == sorted(set(ran)) and {"dpo_seed_s1", "ssapo_prob_s1"} <= set(ran)
    assert set(ran) == {
        "dpo_seed_s1", "size_dpo_x0.5_s1", "size_dpo_x2_s1",
        "size_ssapo_x0.5_s1", "ssapo_prob_s1", "size_ssapo_x2_s1", "ssapo_margin_s1",
    }  # fmt: skip
    # both rows read the one run's results
    assert t.store.data["size_ssapo_x1_s1"]["win_rate"] == t.store.data["ssapo_prob_s1"]["win_rate"]
    assert t.store.data["size_ssapo_x1_s1"]["row"] == 10 and t.store.entry("ssapo_prob", 1) is not None
