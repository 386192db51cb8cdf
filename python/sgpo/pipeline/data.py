"""A run's data: the gold seed pairs of round 0 and the new prompts of each round, fitted to the prompt budget.

The tables are read by :mod:`sgpo.tables` (files, data bundled with sgpo, saved datasets, the hub), with the columns
``data.prompt_column``, ``data.chosen_column`` and ``data.rejected_column``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from sgpo.generation import format_prompt
from sgpo.pipeline.config import DataConfig
from sgpo.tables import Prompt, load_table, pairs_from_table, prompts_from_table


@dataclass
class RunData:
    """The seed pairs for round 0 and the new prompts of each round t = 1..rounds."""

    seed_pairs: list[dict[str, Any]]
    round_prompts: list[list[Prompt]]
    stats: dict[str, int] = field(default_factory=dict)


def prepare_data(cfg: DataConfig, *, rounds: int, needs_pairs: bool, seed: int) -> RunData:
    """Load, check and split the run's data; errors come here, before any model is loaded."""
    rng = random.Random(seed)
    seed_pairs: list[dict[str, Any]] = []
    pool: list[Prompt] = []
    if cfg.seed_pairs is not None and (needs_pairs or cfg.seed_fraction is not None):
        table = load_table(cfg.seed_pairs, split=cfg.split, kind="seed_pairs")
        seed_pairs = pairs_from_table(table, cfg, cfg.seed_pairs)
        if cfg.seed_fraction is not None:
            rng.shuffle(seed_pairs)
            cut = max(1, round(cfg.seed_fraction * len(seed_pairs)))
            pool = [r["prompt"] for r in seed_pairs[cut:]]
            seed_pairs = seed_pairs[:cut]
        if cfg.max_seed_pairs is not None:
            seed_pairs = seed_pairs[: cfg.max_seed_pairs]
        if needs_pairs and not seed_pairs:
            raise ValueError(f"data.seed_pairs: {cfg.seed_pairs} holds no pairs")
    round_prompts: list[list[Prompt]] = []
    if cfg.prompts is not None and rounds > 0:
        table = load_table(cfg.prompts, split=cfg.split)
        pool = prompts_from_table(table, cfg, cfg.prompts)
        if cfg.round_column in table.column_names:
            labels = table[cfg.round_column]
            round_prompts = [[p for p, r in zip(pool, labels, strict=True) if r == t] for t in range(1, rounds + 1)]
            per_round = cfg.prompts_per_round
            if per_round is not None:
                counts = per_round if isinstance(per_round, list) else [per_round] * rounds
                round_prompts = [prompts[:count] for prompts, count in zip(round_prompts, counts, strict=True)]
            empty = [t for t, prompts in enumerate(round_prompts, 1) if not prompts]
            if empty:
                raise ValueError(
                    f"data.prompts: {cfg.prompts} has no prompt with {cfg.round_column} = {empty[0]}; "
                    f"rounds = {rounds} needs prompts for rounds 1..{rounds}"
                )
            return RunData(seed_pairs, round_prompts, {"seed_pairs": len(seed_pairs), "prompt_pool": len(pool)})
        rng.shuffle(pool)
    if rounds > 0:
        per_round = cfg.prompts_per_round
        if per_round is None:
            counts = [len(pool) // rounds] * rounds
        elif isinstance(per_round, int):
            counts = [per_round] * rounds
        else:
            counts = list(per_round)
        if sum(counts) > len(pool) or min(counts) < 1:
            raise ValueError(
                f"data.prompts_per_round: rounds need {counts} prompts ({sum(counts)} in all) but the prompt pool "
                f"holds {len(pool)}"
            )
        start = 0
        for count in counts:
            round_prompts.append(pool[start : start + count])
            start += count
    return RunData(seed_pairs, round_prompts, {"seed_pairs": len(seed_pairs), "prompt_pool": len(pool)})


def fit_prompts(
    tokenizer: Any, prompts: list[Prompt], cfg: DataConfig, system_prompt: str | None
) -> tuple[list[Prompt], list[int], dict[str, int]]:
    """Prompts that fit ``max_prompt_length`` tokens once templated, with their original indices and counts.

    ``long_prompts: skip`` drops over-long prompts; ``truncate`` keeps the end of their last message (the question
    usually sits at the end), cutting whole tokens so the templated prompt fits.
    """
    kept, indices = [], []
    counts = {"prompts": len(prompts), "truncated": 0, "skipped": 0}
    for i, prompt in enumerate(prompts):
        length = len(tokenizer(format_prompt(tokenizer, prompt, system_prompt), add_special_tokens=False)["input_ids"])
        if length > cfg.max_prompt_length:
            if cfg.long_prompts == "skip":
                counts["skipped"] += 1
                continue
            prompt = _truncate_prompt(tokenizer, prompt, length - cfg.max_prompt_length, system_prompt, cfg)
            counts["truncated"] += 1
        kept.append(prompt)
        indices.append(i)
    return kept, indices, counts


def _truncate_prompt(tokenizer: Any, prompt: Prompt, excess: int, system_prompt: str | None, cfg: DataConfig) -> Prompt:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
    overhead = len(tokenizer(format_prompt(tokenizer, messages, system_prompt), add_special_tokens=False)["input_ids"])
    overhead -= len(ids)
    budget = cfg.max_prompt_length - overhead
    if budget < 1:
        raise ValueError(
            f"data.max_prompt_length: {cfg.max_prompt_length} tokens cannot hold even the chat template "
            f"({overhead} tokens) of a prompt"
        )
    # decoding a token suffix can re-tokenise slightly longer; shrink until it fits
    keep = min(budget, max(1, len(ids) - excess))
    while True:
        messages[-1]["content"] = tokenizer.decode(ids[len(ids) - keep :])
        length = len(
            tokenizer(format_prompt(tokenizer, messages, system_prompt), add_special_tokens=False)["input_ids"]
        )
        if length <= cfg.max_prompt_length or keep == 1:
            break
        keep -= 1
    return messages[-1]["content"] if isinstance(prompt, str) else messages
