"""Per-pair loss inputs that ride along in dataset columns: sppo's win probabilities and ssapo's precomputed worst
case, found in the datasets before TRL tokenises them and added to each collated batch."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from sgpo.integrations.trl_config import SGPODPOConfig

# (chosen, rejected) win-probability columns for sppo: sgpo's names, then SPPO's released data (arXiv 2405.00675)
WIN_PROB_COLUMNS: tuple[tuple[str, str], ...] = (
    ("chosen_win_prob", "rejected_win_prob"),
    ("chosen_probs_win", "chosen_probs_lose"),
)


def add_worst_case_columns(
    dataset: Any,
    worst_case: Any,
    *,
    weights_column: str = "worst_case_weights",
    shifts_column: str = "worst_case_shifts",
) -> Any:
    """Return ``dataset`` with the follower's per-pair weights and shifts as two list columns (ssapo ``"columns"``).

    ``worst_case`` is a :class:`sgpo.WorstCase` (or a (weights, shifts) pair of (n, K) arrays) solved on the margins
    of ``dataset``'s rows, in row order.
    """
    if hasattr(worst_case, "weights") and hasattr(worst_case, "shifts"):
        weights, shifts = worst_case.weights, worst_case.shifts
    elif isinstance(worst_case, (tuple, list)) and len(worst_case) == 2:
        weights, shifts = worst_case
    else:
        raise ValueError(
            f"worst_case: expected a sgpo.WorstCase or a (weights, shifts) pair, got {type(worst_case).__name__}"
        )
    weights = torch.as_tensor(weights).detach().cpu().double()
    shifts = torch.as_tensor(shifts).detach().cpu().double()
    if weights.dim() != 2 or weights.shape[0] != len(dataset) or shifts.shape != weights.shape:
        raise ValueError(
            f"worst_case: expected weights and shifts of shape ({len(dataset)}, K) for a dataset of {len(dataset)} "
            f"rows, got {tuple(weights.shape)} and {tuple(shifts.shape)}"
        )
    dataset = dataset.add_column(weights_column, weights.tolist())
    return dataset.add_column(shifts_column, shifts.tolist())


def _column_names(dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:
        names = list(next(iter(dataset)).keys())
    return list(names)


def loss_columns(args: SGPODPOConfig, dataset: Any, dataset_arg: str = "train_dataset") -> dict[str, str]:
    """Batch key -> dataset column for the per-pair inputs ``args.loss_type`` reads from ``dataset``."""
    names = _column_names(dataset)
    columns: dict[str, str] = {}
    if "sppo" in args.loss_type:
        pair = next((p for p in WIN_PROB_COLUMNS if p[0] in names and p[1] in names), None)
        if pair is None:
            options = " or ".join("/".join(p) for p in WIN_PROB_COLUMNS)
            raise ValueError(
                f"{dataset_arg}: loss_type 'sppo' reads win probabilities from the columns {options}; "
                f"the dataset has {names}"
            )
        columns["chosen_win_prob"], columns["rejected_win_prob"] = pair
    if "ssapo" in args.loss_type and args.ssapo_worst_case == "columns":
        for key, column in (
            ("worst_case_weights", args.worst_case_weights_column),
            ("worst_case_shifts", args.worst_case_shifts_column),
        ):
            if column not in names:
                raise ValueError(
                    f"{dataset_arg}: ssapo_worst_case='columns' reads the column {column!r}, which the dataset "
                    f"lacks (it has {names}); add it with sgpo.integrations.trl.add_worst_case_columns"
                )
            columns[key] = column
    return columns


class WithLossColumns:
    """Wraps a preference collator: adds the per-pair loss inputs, as float32 tensors, to each batch."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], columns: Mapping[str, str]):
        self.collator = collator
        self.columns = dict(columns)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        for key, column in self.columns.items():
            if column not in examples[0]:
                raise ValueError(f"dataset: the loss reads the column {column!r}, which this dataset's rows lack")
            batch[key] = torch.tensor([example[column] for example in examples], dtype=torch.float32)
        return batch
