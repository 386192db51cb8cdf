"""The pipeline's update stage with packed, prefix-shared pairs (``train.packed``, the default): the scorer's packed
log-probs and gradients equal the padded rows', and a run trains as the padded run does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from conftest import tiny_overrides  # noqa: E402
from sgpo.models import load_model, load_tokenizer  # noqa: E402
from sgpo.pipeline import load_config, run  # noqa: E402
from sgpo.pipeline.scoring import SequenceScorer, collate, encode, pack_rows  # noqa: E402

PROMPTS = ["Name a colour.", "Say hi.", "Count to three, slowly and clearly.", "Why?"]
CHOSEN = ["Blue.", "Hi there!", "One, two, three.", "Because it is."]
REJECTED = ["I will not.", "no", "1 2 3", "Unclear, and that is all I can say about it."]


def test_the_packed_scorer_equals_the_padded_rows(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = [
        [encode(tokenizer, p, r, system_prompt=None, max_length=64) for p, r in zip(PROMPTS, side, strict=True)]
        for side in (CHOSEN, REJECTED)
    ]
    grads = []
    results = []
    for packed in (False, True):
        model = load_model(tiny_model_dir, dtype="float32")
        scorer = SequenceScorer(model)
        inputs = (
            pack_rows(*rows, tokenizer.pad_token_id) if packed else collate(rows[0] + rows[1], tokenizer.pad_token_id)
        )
        assert inputs is not None
        logps = scorer(**inputs)
        (logps * torch.linspace(0.5, 1.5, logps.numel())).sum().backward()
        results.append(logps.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_pairs_that_do_not_share_their_prompt_are_not_packed(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    chosen = [encode(tokenizer, "a", "b", system_prompt=None, max_length=32)]
    rejected = [encode(tokenizer, "another prompt", "b", system_prompt=None, max_length=32)]
    assert pack_rows(chosen, rejected, tokenizer.pad_token_id) is None


def test_a_packed_run_trains_as_the_padded_run(
    tmp_path: Path,
    tiny_model_dir: Path,
    preference_files: dict[str, Path],
    single_thread: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sgpo.pipeline import leader

    packed_batches = []

    def counting(*args: Any) -> Any:
        out = pack_rows(*args)
        packed_batches.append(out is not None)
        return out

    monkeypatch.setattr(leader, "pack_rows", counting)
    losses = {}
    for packed in (True, False):
        out = tmp_path / f"packed_{packed}"
        overrides = tiny_overrides(tiny_model_dir, preference_files, out, "rounds=1", f"train.packed={packed}")
        run(load_config("tiny", overrides))
        losses[packed] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses[True]) >= 2
    # every micro-batch of the packed run was packed; the padded run packed none
    assert packed_batches and all(packed_batches) and len(packed_batches) >= len(losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_the_packed_reference_pass_equals_the_padded_rows(tiny_model_dir: Path) -> None:
    from sgpo.pipeline.scoring import score_pairs, score_rows

    tokenizer = load_tokenizer(tiny_model_dir)
    chosen, rejected = (
        [encode(tokenizer, p, r, system_prompt=None, max_length=64) for p, r in zip(PROMPTS, side, strict=True)]
        for side in (CHOSEN, REJECTED)
    )
    scorer = SequenceScorer(load_model(tiny_model_dir, dtype="float32"))
    options = dict(pad_id=tokenizer.pad_token_id, batch_size=3, device="cpu")
    rows = score_rows(scorer, chosen + rejected, **options).reshape(2, len(PROMPTS))
    pairs = score_pairs(scorer, chosen, rejected, **options)
    assert pairs.shape == (2, len(PROMPTS))
    assert pairs == pytest.approx(rows, rel=1e-5)
