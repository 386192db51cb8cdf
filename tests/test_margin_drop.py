"""The follower's plain baseline (``follower.apply=margin_drop``): as many of the round's lowest-margin pairs as the
worst case attacks, dropped from the round's DPO loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import tiny_overrides  # noqa: E402
from sgpo.pipeline import load_config, run  # noqa: E402
from sgpo.pipeline.stages.update import margin_drop_weights  # noqa: E402
from test_soft_trim import first_step  # noqa: E402


def test_margin_drop_weights_zero_the_k_lowest_margins() -> None:
    margins = np.array([0.3, -1.0, 2.0, -1.0, 0.0])
    assert margin_drop_weights(margins, 2).tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    # a tie at the boundary goes to the earlier pair
    assert margin_drop_weights(margins, 1).tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert margin_drop_weights(margins, 0).tolist() == [1.0] * 5
    with pytest.raises(ValueError, match="k: expected an integer in \\[0, 5\\]"):
        margin_drop_weights(margins, 6)


def test_margin_drop_needs_an_ssapo_run_and_a_pair_loss() -> None:
    with pytest.raises(ValueError, match="follower.apply: 'margin_drop' weights an ssapo run"):
        load_config("tiny", ["method=dpo", "rounds=0", "follower.apply=margin_drop"])
    with pytest.raises(ValueError, match="train.loss_type: follower.apply 'margin_drop'"):
        load_config("tiny", ["method=ssapo", "train.loss_type=ssapo", "follower.apply=margin_drop"])


def test_margin_drop_trains_without_as_many_lowest_margin_pairs_as_the_follower_attacks(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path], single_thread: None
) -> None:
    out = tmp_path / "drop"
    extra = ("rounds=1", "train.loss_type=sigmoid", "follower.apply=margin_drop", "follower.epsilon=0.2")
    cfg = load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, out, *extra, "follower.max_shift=null"))
    run(cfg)
    step, batch, saved = first_step(out, cfg)
    pairs = [json.loads(line) for line in (out / "round_1" / "annotations.jsonl").read_text().splitlines()]
    margins = np.array([p["margin"] for p in pairs])
    attacked = (saved["weights"] * (np.abs(saved["shifts"]) > 1e-12)).sum(axis=1) > 1e-9
    kept = margin_drop_weights(margins, int(attacked.sum()))
    assert 0 < kept.sum() < kept.size
    # every kept pair's margin is at least every dropped pair's
    assert margins[kept == 1].min() >= margins[kept == 0].max()
    # at the first step the policy is the reference: each kept pair's DPO loss is log 2, a dropped pair's 0
    assert step["loss"] == pytest.approx(math.log(2) * kept[batch].sum() / len(batch), rel=1e-4)
    assert step["attacked_pairs"] == pytest.approx((kept[batch] == 0).mean())
