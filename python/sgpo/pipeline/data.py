"""Preference data through Hugging Face ``datasets``: loading, normalising, splitting into seed pairs and round prompts.

A record is ``{"prompt": str | messages, "chosen": str, "rejected": str}``. Columns may hold strings or chat message
lists (the UltraFeedback-binarized schema, where ``chosen`` is the whole conversation ending with the answer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sgpo.generation import format_prompt
from sgpo.pipeline.config import DataConfig

Prompt = str | list[dict[str, str]]
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def bundled_data(name: str) -> Path:
    """A file shipped in ``sgpo/data`` (``default_prompts.jsonl``, ``default_seed_pairs.jsonl``)."""
    path = Path(str(resources.files("sgpo") / "data" / name))
    if not path.is_file():
        raise FileNotFoundError(f"data: the bundled file {name} is missing from {path.parent}")
    return path


def bundled_names() -> list[str]:
    """The data files shipped in ``sgpo/data``."""
    return sorted(p.name for p in Path(str(resources.files("sgpo") / "data")).iterdir() if p.is_file())


def load_table(source: str, *, split: str = "train", kind: str = "prompts") -> Any:
    """A ``datasets.Dataset`` from a file, a directory saved with ``save_to_disk``, ``default``, the name of a file
    bundled in ``sgpo/data`` (``prompts_test.jsonl``) or a hub name."""
    import datasets

    if source == "default":
        source = str(bundled_data(f"default_{'seed_pairs' if kind == 'seed_pairs' else 'prompts'}.jsonl"))
    path = Path(source).expanduser()
    if not path.exists() and "/" not in source and Path(str(resources.files("sgpo") / "data" / source)).is_file():
        # a bare file name that is not in the working directory: one of the files bundled in sgpo/data
        path = bundled_data(source)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise ValueError(f"data: {path} has suffix {path.suffix!r}; expected one of {', '.join(_FILE_BUILDERS)}")
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(str(path), split=split)
    if source.startswith((".", "/", "~")) or Path(source).suffix in _FILE_BUILDERS:
        raise FileNotFoundError(f"data: {source} does not exist")
    return datasets.load_dataset(source, split=split)


def _text_of(value: Any, column: str, row: int) -> str:
    """A response column's text: a string, or the last message of a conversation."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        return str(value[-1]["content"])
    raise ValueError(f"{column}: row {row} holds {type(value).__name__}; expected a string or a list of chat messages")


def _prompt_of(value: Any, column: str, row: int) -> Prompt:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{column}: row {row} is an empty prompt")
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in value):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    raise ValueError(f"{column}: row {row} holds {value!r}; expected a non-empty string or a list of chat messages")


def _require(table: Any, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(
            f"data: {source} has no column {missing[0]!r}; its columns are {', '.join(table.column_names)} "
            "(set data.prompt_column / data.chosen_column / data.rejected_column)"
        )


def pairs_from_table(table: Any, cfg: DataConfig, source: str) -> list[dict[str, Any]]:
    """Normalised ``{"prompt", "chosen", "rejected"}`` records; a conversation-valued chosen gives its own prompt."""
    has_prompt = cfg.prompt_column in table.column_names
    _require(table, [cfg.chosen_column, cfg.rejected_column], source)
    records = []
    for i, row in enumerate(table):
        chosen = row[cfg.chosen_column]
        if has_prompt:
            prompt = _prompt_of(row[cfg.prompt_column], cfg.prompt_column, i)
        elif isinstance(chosen, list) and len(chosen) > 1:
            prompt = _prompt_of(chosen[:-1], cfg.chosen_column, i)
        else:
            _require(table, [cfg.prompt_column], source)
        records.append(
            {
                "prompt": prompt,
                "chosen": _text_of(chosen, cfg.chosen_column, i),
                "rejected": _text_of(row[cfg.rejected_column], cfg.rejected_column, i),
            }
        )
    return records


def prompts_from_table(table: Any, cfg: DataConfig, source: str) -> list[Prompt]:
    _require(table, [cfg.prompt_column], source)
    return [_prompt_of(value, cfg.prompt_column, i) for i, value in enumerate(table[cfg.prompt_column])]


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
