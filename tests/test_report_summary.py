"""The end of a run (and of ``make demo``): what the gold judge says about the last evaluated round, in plain
sentences, with the paired difference's interval deciding whether it is told from noise; no bare win rate."""

from __future__ import annotations

from types import SimpleNamespace

from sgpo.pipeline.stages.report import gold_summary


def cfg(prompts: str = "hidden", judge: str = "structure") -> SimpleNamespace:
    return SimpleNamespace(evaluate=SimpleNamespace(prompts=prompts, judge=SimpleNamespace(name=judge)))


def evaluated(t: int, low: float, high: float) -> dict:
    e = dict(baseline_mean_score=0.2, mean_score=0.25, prompts=32, difference=(low + high) / 2)
    return {"round": t, "eval": {**e, "difference_low": low, "difference_high": high, "win_rate": 0.6}}


def test_an_interval_across_zero_is_called_noise_and_the_real_comparison_is_named() -> None:
    lines = gold_summary(cfg(), [evaluated(0, 0.1, 0.3), evaluated(1, -0.02, 0.05)])
    assert "after round 1" in lines[0] and "[-0.020, +0.050]" in lines[0] and "32 held-out prompts" in lines[0]
    assert lines[1] == "The interval includes 0: at 32 prompts this difference cannot be told from noise."
    assert "--task hidden:structure" in lines[2] and "--seeds 1 2 3" in lines[2]
    assert not any("win rate" in line for line in lines)


def test_an_interval_clear_of_zero_says_which_way_and_that_it_is_one_seed() -> None:
    gain = gold_summary(cfg(), [evaluated(1, 0.01, 0.09)])
    assert "this gain is distinguishable from noise, for this one seed" in gain[1]
    loss = gold_summary(cfg(), [evaluated(1, -0.09, -0.01)])
    assert "this loss is distinguishable from noise" in loss[1]
    assert "docs/benchmarks.md" in gold_summary(cfg("prompts_test.jsonl", "verifiable"), [evaluated(1, 0.0, 0.1)])[2]


def test_a_run_without_evaluation_says_nothing() -> None:
    assert gold_summary(cfg(), [{"round": 0, "train": {}}]) == []
