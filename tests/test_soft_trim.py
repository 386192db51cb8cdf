"""The follower's attacked pairs in training: the soft-trim control (``follower.apply=soft_trim``) and the attacked
pairs' share of each step's gradient, which the training log records for every self-annotated round."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import sgpo.ops  # noqa: E402
from conftest import tiny_overrides  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from sgpo.follower import moved_mass  # noqa: E402
from sgpo.pipeline import load_config, run  # noqa: E402
from sgpo.pipeline.leader import global_batches  # noqa: E402


def first_step(out: Path, cfg: Any) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    """Round 1's first training-log row, the pairs of its batch and the round's worst case."""
    d = out / "round_1"
    steps = [json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()]
    saved = load_file(str(d / "worst_case.safetensors"))
    n = len(saved["xi"])
    settings = SimpleNamespace(seed=cfg.seed * 1000 + 1, batch_size=cfg.train.batch_size)
    return steps[0], global_batches(n, settings, 0)[0], saved


def test_soft_trim_trains_each_pairs_loss_times_the_mass_it_keeps(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path], single_thread: None
) -> None:
    out = tmp_path / "trim"
    extra = ("rounds=1", "train.loss_type=sigmoid", "follower.apply=soft_trim", "follower.epsilon=0.2")
    cfg = load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, out, *extra, "follower.max_shift=null"))
    run(cfg)
    step, batch, saved = first_step(out, cfg)
    kept = 1.0 - moved_mass(saved["weights"], saved["shifts"])
    attacked = kept < 1.0 - 1e-9
    # uncapped, the budget takes whole pairs: some keep nothing, the rest everything
    assert attacked.any() and not attacked.all()
    assert (kept[attacked] < 1.0).all() and kept.min() < 1e-6
    # at the first step the policy is the reference: every pair's DPO loss is log 2, times the mass it keeps
    assert step["loss"] == pytest.approx(math.log(2) * kept[batch].sum() / len(batch), rel=1e-4)
    assert step["attacked_pairs"] == pytest.approx(attacked[batch].mean())
    if kept[batch].sum() > 0:
        expected = kept[batch][attacked[batch]].sum() / kept[batch].sum()
        assert step["attacked_grad_share"] == pytest.approx(expected, abs=1e-4)
    summary = json.loads((out / "round_1" / "train_summary.json").read_text())
    assert summary["loss_type"] == "sigmoid" and 0 <= summary["attacked_grad_share"] <= 1


def test_the_log_gives_the_attacked_pairs_share_of_the_gradient(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path], single_thread: None
) -> None:
    # margin space, uncapped: the moved mass sees a lower margin, where -log sigmoid is steeper, so the attacked
    # pairs' share of the gradient exceeds their share of the pairs
    out = tmp_path / "margin"
    extra = ("rounds=1", "follower.space=margin", "follower.epsilon=0.2", "follower.max_shift=null")
    cfg = load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, out, *extra))
    run(cfg)
    step, batch, saved = first_step(out, cfg)
    attacked = moved_mass(saved["weights"], saved["shifts"]) > 1e-9
    assert attacked[batch].any() and not attacked[batch].all()
    # each pair's |d loss / d log pi(chosen)| at margin 0, from the op itself
    m = len(batch)
    chosen = torch.zeros(m, dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(m, dtype=torch.float64)
    worst = (torch.as_tensor(saved["weights"][batch]), torch.as_tensor(saved["shifts"][batch]))
    losses = sgpo.ops.preference_losses(
        chosen, zeros, zeros, zeros, loss_type="ssapo", beta=cfg.train.beta, worst_case=worst, space="margin"
    )
    losses.losses.sum().backward()
    g = chosen.grad.abs().numpy()
    expected = g[attacked[batch]].sum() / g.sum()
    assert step["attacked_pairs"] == pytest.approx(attacked[batch].mean())
    assert step["attacked_grad_share"] == pytest.approx(expected, rel=1e-3)
    assert step["attacked_grad_share"] > step["attacked_pairs"] + 0.01


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["follower.apply=trim"], "follower.apply: unknown value .trim."),
        (["method=dpo", "rounds=0", "train.loss_type=sigmoid", "follower.apply=soft_trim"], "method is 'dpo'"),
        (["follower.apply=soft_trim"], "train.loss_type: follower.apply 'soft_trim'.*got 'ssapo'"),
        (["train.loss_type=sigmoid"], "train.loss_type: method 'ssapo' trains the 'ssapo' loss"),
    ],
)
def test_bad_follower_apply_is_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config("tiny", overrides)
