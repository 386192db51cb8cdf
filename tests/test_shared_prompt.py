"""The prompt-sharing forward (sgpo.integrations.shared_prompt) against the plain forward on full sequences."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import sgpo  # noqa: E402
from sgpo.integrations.shared_prompt import decoder_and_head, pairs_logps, split_pairs  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def trl_batch(prompts: list, chosen: list, rejected: list) -> dict[str, torch.Tensor]:
    """TRL's preference layout: prompt + chosen rows over prompt + rejected rows, right-padded."""
    rows = [(p, c) for p, c in zip(prompts, chosen)] + [(p, r) for p, r in zip(prompts, rejected)]
    width = max(len(p) + len(c) for p, c in rows)
    batch = {key: torch.zeros(len(rows), width, dtype=torch.long) for key in ("input_ids", "attention_mask")}
    batch["completion_mask"] = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        batch["input_ids"][i, : len(p) + len(c)] = torch.cat([p, c])
        batch["attention_mask"][i, : len(p) + len(c)] = 1
        batch["completion_mask"][i, len(p) : len(p) + len(c)] = 1
    return batch


def random_pairs(lengths: list[tuple[int, int, int]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    parts = [[torch.randint(1, 200, (n,), generator=generator) for n in triple] for triple in lengths]
    return trl_batch(*zip(*parts))


def full_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return sgpo.ops.sequence_logps(logits[:, :-1], labels[:, 1:])


def test_shared_prompt_gives_the_full_forward_log_probs_and_gradients(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # odd lengths, a one-token response, unequal chosen / rejected lengths (padding inside the shared forward)
    batch = random_pairs([(5, 4, 2), (3, 1, 7), (11, 6, 6), (1, 3, 1)])
    pairs = split_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert pairs is not None and [p.prompt.numel() for p in pairs] == [5, 3, 11, 1]
    assert decoder_and_head(model) is not None

    chosen, rejected = pairs_logps(model, pairs)
    ours = torch.cat([chosen, rejected])
    weights = torch.linspace(0.5, 2.0, ours.numel())
    (ours * weights).sum().backward()
    our_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    theirs = full_logps(model, batch)
    (theirs * weights).sum().backward()

    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    for name, param in model.named_parameters():
        torch.testing.assert_close(our_grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_split_pairs_refuses_batches_it_cannot_share() -> None:
    batch = random_pairs([(4, 2, 3), (2, 2, 2)])
    assert split_pairs(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]) is not None
    # a prompt that differs between the chosen and the rejected row (keep_end truncation cuts them apart)
    ids = batch["input_ids"].clone()
    ids[2, 0] += 1
    assert split_pairs(ids, batch["attention_mask"], batch["completion_mask"]) is None
    # a row without prompt: its first response token has nothing to be predicted from
    empty = random_pairs([(0, 2, 3), (2, 2, 2)])
    assert split_pairs(empty["input_ids"], empty["attention_mask"], empty["completion_mask"]) is None
    # response tokens before the prompt ends (not TRL's layout)
    mask = batch["completion_mask"].clone()
    mask[0, 1] = 1
    assert split_pairs(batch["input_ids"], batch["attention_mask"], mask) is None
