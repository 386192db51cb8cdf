"""Where prompts come from for ``sgpo label`` and ``sgpo eval``: a generated track or a file with a ``prompt`` field."""

from __future__ import annotations

from typing import Any

from sgpo.evaluation.hidden import hidden_prompts, hidden_tasks
from sgpo.evaluation.prompts import SPLITS, generate_prompts

# generated tracks: the hidden-preference track's open prompts, and the verifiable-instruction track's prompts
TRACKS = ("hidden", "verifiable")


def available_prompts(source: str, split: str) -> int | None:
    """How many distinct prompts a generated track holds in ``split`` (None: unbounded or a file)."""
    if source == "hidden":
        return len(hidden_tasks(split))
    return None


def load_prompts(source: str, limit: int | None, *, split: str = "test", option: str = "--prompts") -> list[Any]:
    """The first ``limit`` prompts of ``source`` (all of them for ``limit=None``, files only).

    ``hidden`` / ``verifiable``: the generated prompts of that track in ``split`` (seed 0); ``train`` / ``test``: the
    verifiable track's prompts of that split; anything else: a file (JSONL, JSON, parquet, CSV) or a saved dataset with
    a ``prompt`` column holding strings or chat message lists.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"{option}: expected a number of prompts >= 1, got {limit!r}")
    if source in SPLITS:
        source, split = "verifiable", source
    if source in TRACKS:
        if limit is None:
            raise ValueError(f"{option}: a generated track needs a number of prompts")
        if source == "hidden":
            total = len(hidden_tasks(split))
            if limit > total:
                raise ValueError(
                    f"{option}: the hidden track's {split} split has {total} prompts; {limit} were asked for"
                )
            return hidden_prompts(limit, split)
        return [spec.text for spec in generate_prompts(limit, split, seed=0)]
    from pathlib import Path

    from sgpo.tables import DefaultColumns, bundled_names, load_table, prompts_from_table

    # files only (or one bundled with sgpo): a bare name must never become a hub download
    if not Path(source).expanduser().exists() and source not in bundled_names():
        raise ValueError(f"{option}: expected 'hidden', 'verifiable', 'train', 'test' or a prompt file, got {source!r}")
    try:
        table = load_table(source)
        prompts = prompts_from_table(table, DefaultColumns(), source)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"{option}: expected 'hidden', 'verifiable', 'train', 'test' or a prompt file; {err}") from err
    if not prompts:
        raise ValueError(f"{option}: {source} holds no prompts")
    if limit is not None and limit > len(prompts):
        raise ValueError(f"{option}: {source} holds {len(prompts)} prompts; {limit} were asked for")
    return prompts[:limit] if limit is not None else prompts
