"""``sgpo eval``: sampling with fixed seeds, judging against a baseline, report.md with tables and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sgpo.cli import main
from sgpo.eval_cli import judge_responses, load_eval_prompts
from sgpo.evaluation import Constraint, PromptSpec, generate_prompts
from sgpo.evaluation.report import RoundArtifacts, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_eval_of_a_model_against_itself_ties_everywhere(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    argv = ["eval", str(tiny_model_dir), "--baseline", str(tiny_model_dir), "--num-prompts", "4"]
    argv += ["--max-new-tokens", "6", "--output", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "eval.json").read_text())
    (result,) = summary["results"]
    # same weights, same per-row seeds: identical responses, so every comparison is a tie
    assert (result["ties"], result["n"], result["win_rate"], result["lc_win_rate"]) == (4, 4, 0.5, 0.5)
    report = (out / "report.md").read_text()
    assert "| model | win rate %" in report and "![win rate per round](win_rate.png)" in report
    assert (out / "win_rate.png").read_bytes()[:8] == PNG_MAGIC
    # the same model on both sides: no KL, no score difference, an interval of width 0
    assert result["kl"] == 0.0 and result["paired"]["difference"] == {"mean": 0, "low": 0, "high": 0, "level": 0.95}
    assert "![gold score against KL from the baseline](frontier.png)" in report
    assert (out / "frontier.png").read_bytes()[:8] == PNG_MAGIC
    cached = sorted(p for p in (out / "responses").iterdir() if not p.name.startswith("logps_"))
    assert len(cached) == 1 and len(json.loads(cached[0].read_text())["responses"]) == 4
    assert len(json.loads(cached[0].read_text())["logps"]) == 4
    # a second evaluation reuses the cached responses instead of sampling again
    mtime = cached[0].stat().st_mtime_ns
    assert main(argv) == 0
    assert cached[0].stat().st_mtime_ns == mtime
    # another evaluation pointed at the same cache samples nothing and writes its own report
    other = tmp_path / "other"
    assert main([*argv[:-2], "--output", str(other), "--cache-dir", str(out / "responses")]) == 0
    assert cached[0].stat().st_mtime_ns == mtime and not (other / "responses").exists()
    assert json.loads((other / "eval.json").read_text())["results"][0]["ties"] == 4


def test_eval_reports_bad_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "missing-model"), "--output", str(tmp_path / "out")]) == 2
    assert "sgpo eval: error" in capsys.readouterr().err
    assert main(["eval", "x", "--num-prompts", "0", "--output", str(tmp_path / "out")]) == 2
    assert "num_prompts" in capsys.readouterr().err


def test_eval_prompts_are_the_generated_split_or_a_file(tmp_path: Path) -> None:
    assert load_eval_prompts("test", 5) == [s.text for s in generate_prompts(5, "test", seed=0)]
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n{"prompt": "c"}\n')
    assert load_eval_prompts(str(path), 2) == ["a", "b"]
    with pytest.raises(ValueError, match="--prompts: expected 'hidden', .* got '.*none.jsonl'"):
        load_eval_prompts(str(tmp_path / "none.jsonl"), 2)
    assert load_eval_prompts("prompts_test.jsonl", 3) == load_eval_prompts("test", 3)
    path.write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match="--prompts: .* no column 'prompt'"):
        load_eval_prompts(str(path), 2)


def test_report_tables_and_plots_from_known_responses(tmp_path: Path) -> None:
    prompt = PromptSpec(3, "coffee", (Constraint("include_word", (("word", "history"),)),)).text
    good = "The history of coffee starts with a bean picked in the hills of Ethiopia."
    plain = "Coffee is brewed from roasted beans and most people drink it every morning."
    result = judge_responses("round 1", "m", [prompt] * 4, [good, good, plain, good], [plain, good, plain, plain])
    assert (result.win.wins, result.win.ties, result.win.losses) == (2, 2, 0)
    assert result.mean_score == 0.75 and result.baseline_mean_score == 0.25
    rng = np.random.default_rng(0)
    rounds = []
    for r in (1, 2):
        margins = rng.normal(size=40)
        weights = rng.dirichlet(np.ones(6), size=40)
        shifts = np.where(rng.random((40, 6)) < 0.2, rng.random((40, 6)), 0.0)
        rounds.append(RoundArtifacts(r, margins, 1 / (1 + np.exp(-0.1 * margins)), weights, shifts))
    path = write_report(tmp_path, title="t", results=[result], rounds=rounds, settings={"k": 1}, baseline="b")
    report = path.read_text()
    assert "| round 1 | 75.0 ± 12.5 | " in report
    assert "| 2 | 40 |" in report
    for png in ("win_rate.png", "margins.png", "follower.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG_MAGIC
        assert f"({png})" in report


def test_eval_of_a_run_directory_reports_every_round(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    import sgpo
    from safetensors.numpy import save_file

    # the layout `sgpo run` documents: config.yaml, round_<t>/checkpoint, annotations.jsonl, worst_case.safetensors
    run = tmp_path / "run"
    (run / "round_0").mkdir(parents=True)
    (run / "config.yaml").write_text(f"model:\n  name_or_path: {tiny_model_dir}\n")
    shutil.copytree(tiny_model_dir, run / "round_0" / "checkpoint")
    rng = np.random.default_rng(0)
    margins = rng.normal(size=12)
    xi = 1 / (1 + np.exp(-0.1 * margins))
    worst = sgpo.worst_case(xi, 0.05, pieces=6, space="probability")
    (run / "round_1").mkdir()
    shutil.copytree(tiny_model_dir, run / "round_1" / "checkpoint")
    (run / "round_1" / "annotations.jsonl").write_text("".join(json.dumps({"margin": m}) + "\n" for m in margins))
    save_file(
        {"xi": xi, "weights": np.asarray(worst.weights), "shifts": np.asarray(worst.shifts)},
        str(run / "round_1" / "worst_case.safetensors"),
    )
    assert main(["eval", str(run), "--num-prompts", "2", "--max-new-tokens", "4"]) == 0
    summary = json.loads((run / "eval" / "eval.json").read_text())
    assert summary["baseline"] == str(tiny_model_dir)
    assert [r["label"] for r in summary["results"]] == ["round 0", "round 1"]
    report = (run / "eval" / "report.md").read_text()
    assert "| 1 | 12 |" in report
    for png in ("win_rate.png", "margins.png", "follower.png"):
        assert (run / "eval" / png).read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(FileNotFoundError, match="run directory"):
        from sgpo.evaluation.runs import discover

        discover(str(tmp_path))
