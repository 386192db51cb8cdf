"""``sgpo label``: gold pairs from any judge, resumable, every option checked before a model loads; the same
``module:Class`` judge in ``sgpo label``, ``sgpo eval`` and ``sgpo run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sgpo.cli import main

TESTS = Path(__file__).resolve().parent


class LetterJudge:
    """A bring-your-own judge: only ``scores``. It prefers responses with many of ``letter``, then varied ones."""

    def __init__(self, letter: str = "e") -> None:
        self.letter = letter

    def scores(self, prompts: Any, responses: Any) -> np.ndarray:
        return np.array([r.count(self.letter) + 0.01 * len(set(r)) for r in responses])


class InterruptedJudge(LetterJudge):
    """Interrupts the job at its ``interrupt_at``-th call: a labelling job killed after its first chunk."""

    interrupt_at: int | None = None
    calls = 0

    def scores(self, prompts: Any, responses: Any) -> np.ndarray:
        InterruptedJudge.calls += 1
        if InterruptedJudge.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return super().scores(prompts, responses)


class NoScores:
    pass


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def label_argv(model: Path, out: Path, judge: str, *extra: str) -> list[str]:
    argv = ["label", str(model), "--judge", judge, "--budget", "6", "--samples", "3", "--chunk", "4"]
    return [*argv, "--max-new-tokens", "12", "--out", str(out), "--quiet", *extra]


def test_label_writes_best_vs_worst_pairs_and_resumes(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: Any
) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    out = tmp_path / "pairs.jsonl"
    monkeypatch.setattr(InterruptedJudge, "interrupt_at", 2)
    with pytest.raises(KeyboardInterrupt):
        main(label_argv(tiny_model_dir, out, "test_label:InterruptedJudge"))
    monkeypatch.setattr(InterruptedJudge, "interrupt_at", None)
    parts = sorted((tmp_path / "pairs.jsonl.parts").iterdir())
    # the first chunk finished; the second was sampled (kept) but killed while it was judged
    assert len(parts) == 2 and not out.exists()
    first_chunk = parts[0].read_text()
    import sgpo.generation

    calls = []
    original = sgpo.generation.generate_responses
    monkeypatch.setattr(sgpo.generation, "generate_responses", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    assert main(label_argv(tiny_model_dir, out, "test_label:InterruptedJudge")) == 0
    # nothing was sampled again
    assert calls == []
    assert not (tmp_path / "pairs.jsonl.parts").exists()
    samples = read(tmp_path / "pairs.samples.jsonl")
    assert [s["index"] for s in samples] == list(range(6))
    assert samples[:4] == [
        {"index": i, "prompt": p, "samples": s, "scores": sc}
        for i, (p, s, sc) in enumerate(
            zip(
                [row["prompt"] for row in samples[:4]],
                json.loads(first_chunk)["samples"],
                json.loads(first_chunk)["scores"],
                strict=True,
            )
        )
    ]
    judge = LetterJudge()
    pairs = read(out)
    assert pairs and all(p["judge"] == "test_label:InterruptedJudge" for p in pairs)
    for pair in pairs:
        row = samples[pair["index"]]
        scores = judge.scores(None, row["samples"])
        assert pair["chosen"] == row["samples"][int(np.argmax(scores))]
        assert pair["rejected"] == row["samples"][int(np.argmin(scores))]
        assert pair["chosen_score"] == pytest.approx(scores.max())
        assert pair["rejected_score"] == pytest.approx(scores.min()) and scores.min() < scores.max()
    summary = json.loads((tmp_path / "pairs.json").read_text())
    assert summary["pairs"] == len(pairs) >= 4 and summary["pairs"] + summary["ties"] == 6
    # a finished job is not redone; a larger budget samples only the new prompts
    assert main(label_argv(tiny_model_dir, out, "test_label:InterruptedJudge")) == 0
    assert calls == []
    bigger = label_argv(tiny_model_dir, out, "test_label:InterruptedJudge")
    bigger[bigger.index("--budget") + 1] = "9"
    assert main(bigger) == 0
    # prompts 6 and 7 (in the second chunk of 4) and 8 (the third)
    assert [len(prompts) for prompts in calls] == [2, 1]
    assert read(tmp_path / "pairs.samples.jsonl")[:6] == samples


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--judge", "oracle"], "--judge: unknown judge 'oracle'"),
        (["--judge", "test_label:NoScores"], "--judge: NoScores has no scores"),
        (["--judge", "implicit_reward"], "--judge: 'implicit_reward' scores with the policy"),
        (["--judge-options", '{"tone": 1}'], "--judge.options|do not fit WarmthJudge"),
        (["--judge-options", "[1]"], "--judge-options: expected a JSON object"),
        (["--samples", "1"], "--samples: expected K >= 2"),
        (["--budget", "400", "--split", "test"], "--prompts: the hidden track's test split has 360 prompts"),
        (["--prompts", "nowhere.jsonl"], "--prompts: expected 'hidden', 'verifiable', 'train', 'test' or a prompt"),
        (["--prompts", "BADFILE"], "--prompts: .* no column 'prompt'"),
        (["--budget", "5", "--prompts", "SHORTFILE"], "--prompts: .* holds 2 prompts; 5 were asked for"),
    ],
)
def test_label_rejects_bad_options_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt here"}\n')
    short = tmp_path / "short.jsonl"
    short.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    extra = [str(bad) if e == "BADFILE" else str(short) if e == "SHORTFILE" else e for e in extra]
    import sgpo.models

    monkeypatch.setattr(sgpo.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = ["label", str(tmp_path / "no-such-model"), "--judge", "warmth", "--out", str(tmp_path / "o.jsonl"), *extra]
    assert main(argv) == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_one_module_class_judge_in_label_eval_and_run(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    preference_files: dict[str, Path],
    single_thread: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from conftest import tiny_overrides
    from sgpo.pipeline import load_config, run

    monkeypatch.syspath_prepend(str(TESTS))
    judge = "test_label:LetterJudge"
    pairs_file = tmp_path / "gold.jsonl"
    assert main(label_argv(tiny_model_dir, pairs_file, judge, "--judge-options", '{"letter": "a"}')) == 0
    out = tmp_path / "eval"
    argv = ["eval", str(tiny_model_dir), "--baseline", str(tiny_model_dir), "--prompts", "hidden", "--num-prompts"]
    argv += ["4", "--max-new-tokens", "6", "--judge", judge, "--output", str(out), "--agreement-pairs", str(pairs_file)]
    assert main(argv) == 0
    summary = json.loads((out / "eval.json").read_text())
    assert summary["judge"] == judge and summary["results"][0]["paired"]["n"] == 4
    # the baseline as its own annotator: log pi - log pi_0 is 0 on every response, a tie on every pair
    assert summary["results"][0]["agreement"]["sum"]["agreement"] == 0.5
    overrides = tiny_overrides(tiny_model_dir, preference_files, tmp_path / "run", "rounds=1")
    overrides += [f"evaluate.judge.name={judge}", f"judge.agreement_pairs={pairs_file}"]
    overrides += ["judge.options.reward=length_debiased"]
    report = run(load_config("tiny", overrides))
    metrics = json.loads((tmp_path / "run" / "round_1" / "metrics.json").read_text())
    held, own = metrics["annotator"]["heldout"], metrics["annotator"]["round"]
    assert held["pairs"] == len(read(pairs_file)) and 0 <= held["agreement"] <= 1
    annotations = read(tmp_path / "run" / "round_1" / "annotations.jsonl")
    gold = LetterJudge()
    expected = np.mean(
        [
            np.sign(gold.scores(None, [p["chosen"]]) - gold.scores(None, [p["rejected"]]))[0] > 0
            for p in annotations
            if gold.scores(None, [p["chosen"]])[0] != gold.scores(None, [p["rejected"]])[0]
        ]
    )
    assert own["agreement"] == pytest.approx(expected)
    # the run says how many labels gold decided, so a small round's percentage is not read as a rate
    printed = capsys.readouterr().out
    assert f"of the {own['pairs']} round labels it decides ({own['ties']} ties)" in printed, printed[-3000:]
    # the length-debiased annotator: raw summed log-ratios kept, the debiased ones chose
    counts = json.loads((tmp_path / "run" / "round_1" / "annotation_counts.json").read_text())
    alpha = counts["length_alpha"]
    for p in annotations:
        assert np.allclose(np.array(p["raw_scores"]) - alpha * np.array(p["lengths"]), p["scores"])
    assert report["rounds"][-1]["round"] == 1


def test_gated_annotator_picks_admissible_chosen_in_a_run(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    preference_files: dict[str, Path],
    single_thread: Any,
) -> None:
    import sgpo.evaluation.rubrics as rubrics
    from conftest import tiny_overrides
    from sgpo.pipeline import load_config, run

    # the tiny model's random text never names a topic: a stand-in gate that splits its samples
    monkeypatch.setattr(rubrics, "on_task", lambda prompt, response: len(response) % 2 == 0)
    overrides = tiny_overrides(tiny_model_dir, preference_files, tmp_path / "run", "rounds=1")
    overrides += ["generation.num_samples=4", "judge.options.gate=on_task"]
    run(load_config("tiny", overrides))
    annotations = read(tmp_path / "run" / "round_1" / "annotations.jsonl")
    split = 0
    for p in annotations:
        flags, scores = np.array(p["admissible"]), np.array(p["scores"])
        if flags.any() and not flags.all():
            split += 1
            # the best admissible sample against the worst inadmissible one
            assert len(p["chosen"]) % 2 == 0 and len(p["rejected"]) % 2 == 1
            assert p["margin"] == pytest.approx(scores[flags].max() - scores[~flags].min())
    assert split > 0
