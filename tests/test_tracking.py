"""``logging.report_to``: a run's TensorBoard events hold what its files hold (every step of ``metrics.jsonl``, every
round of ``report.json``), read back from the event files; bad tracker names and missing packages stop the config;
``SGPODPOTrainer`` keeps TRL's ``report_to``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_overrides
from sgpo.pipeline import files, load_config, run
from sgpo.pipeline.tracking import TRACKERS, check_report_to

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed (the dev extra has it)"
)


def scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the TensorBoard event files under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, dict[int, float]] = {}
    for events in log_dir.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return found


@needs_tensorboard
def test_tensorboard_receives_every_step_and_every_round(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path], single_thread: Any
) -> None:
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_model_dir, preference_files, out, "rounds=1", "logging.report_to=[tensorboard]")
    report = run(load_config("tiny", overrides))
    logged = scalars(out)
    steps = files.read_jsonl(out / "metrics.jsonl")
    assert len(steps) >= 2
    for row in steps:
        assert logged["train/loss"][row["global_step"]] == pytest.approx(row["loss"], rel=1e-6)
    # one point per round, at the step where its training ended
    rounds = report["rounds"]
    assert len(rounds) == 2
    for row in rounds:
        last = max(s["global_step"] for s in steps if s["round"] == row["round"])
        assert logged["round/loss"][last] == pytest.approx(row["loss"], rel=1e-6)
        assert logged["round/pairs"][last] == row["pairs"]
    assert logged["round/mass_moved"][max(logged["round/mass_moved"])] == pytest.approx(rounds[1]["mass_moved"])


def test_unknown_trackers_and_missing_packages_are_named_before_a_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="logging.report_to: unknown tracker 'tensorbord'; expected some of"):
        load_config("tiny", [f"output_dir={tmp_path}", "logging.report_to=[tensorbord]"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match="tracker 'wandb' needs the package 'wandb', which is not installed"):
        load_config("tiny", [f"output_dir={tmp_path}", "logging.report_to=[wandb]"])
    assert check_report_to(["none"]) == []
    assert set(TRACKERS) >= {"tensorboard", "trackio", "wandb", "mlflow"}


@needs_tensorboard
def test_the_trl_trainer_keeps_its_report_to(tmp_path: Path, tiny_model_dir: Path) -> None:
    from datasets import Dataset
    from sgpo.integrations.trl import SGPODPOConfig, SGPODPOTrainer
    from transformers import AutoTokenizer

    args = SGPODPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        logging_steps=1,
        report_to=["tensorboard"],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    data = Dataset.from_dict({"prompt": ["a: ", "b: "] * 2, "chosen": ["yes", "no"] * 2, "rejected": ["x", "y"] * 2})
    trainer = SGPODPOTrainer(
        model=str(tiny_model_dir),
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    trainer.train()
    logged = scalars(tmp_path)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert [logged["train/loss"][step] for step in (1, 2)] == pytest.approx(losses, rel=1e-6)
