"""Tables of prompts and preference pairs through Hugging Face ``datasets``: loading them and normalising records.

A table comes from a file (JSON, JSONL, parquet, CSV), a directory saved with ``save_to_disk``, a file bundled in
``sgpo/data``, or the hub. A pair record is ``{"prompt": str | messages, "chosen": str, "rejected": str}``. Columns
may hold strings or chat message lists (the UltraFeedback-binarized schema, where ``chosen`` is the whole
conversation ending with the answer). ``sgpo run`` names its columns in the config's ``data`` section; ``sgpo eval``
and ``sgpo label`` read the default ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

Prompt = str | list[dict[str, str]]
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class Columns(Protocol):
    """Where a table keeps its prompts and responses (a run config's ``data`` section is one)."""

    prompt_column: str
    chosen_column: str
    rejected_column: str


@dataclass(frozen=True)
class DefaultColumns:
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"


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


def pairs_from_table(table: Any, columns: Columns, source: str) -> list[dict[str, Any]]:
    """Normalised ``{"prompt", "chosen", "rejected"}`` records; a conversation-valued chosen gives its own prompt."""
    has_prompt = columns.prompt_column in table.column_names
    _require(table, [columns.chosen_column, columns.rejected_column], source)
    records = []
    for i, row in enumerate(table):
        chosen = row[columns.chosen_column]
        if has_prompt:
            prompt = _prompt_of(row[columns.prompt_column], columns.prompt_column, i)
        elif isinstance(chosen, list) and len(chosen) > 1:
            prompt = _prompt_of(chosen[:-1], columns.chosen_column, i)
        else:
            _require(table, [columns.prompt_column], source)
        records.append(
            {
                "prompt": prompt,
                "chosen": _text_of(chosen, columns.chosen_column, i),
                "rejected": _text_of(row[columns.rejected_column], columns.rejected_column, i),
            }
        )
    return records


def prompts_from_table(table: Any, columns: Columns, source: str) -> list[Prompt]:
    _require(table, [columns.prompt_column], source)
    return [_prompt_of(value, columns.prompt_column, i) for i, value in enumerate(table[columns.prompt_column])]
