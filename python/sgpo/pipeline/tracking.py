"""``logging.report_to``: experiment trackers through accelerate (TensorBoard, Trackio, Weights & Biases, MLflow, ...).

A run's trackers receive what its files hold: every training step's row of ``metrics.jsonl`` as ``train/<key>`` at its
global step (the update stage logs it as it trains), and each finished round's summary of ``report.json`` as
``round/<key>`` at the global step where the round's training ended. The names are accelerate's; each needs its
package, checked with the config, before any model loads, so a missing one is an error rather than a silent no-op.
"""

from __future__ import annotations

import importlib.util
from typing import Any

# accelerate's tracker names and the package each one imports
TRACKERS: dict[str, str] = {
    "tensorboard": "tensorboard",
    "trackio": "trackio",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
}


def check_report_to(names: list[str]) -> list[str]:
    """The trackers of ``logging.report_to`` (``["none"]`` means none); raises naming the key, the value and what is
    expected for an unknown name or a tracker whose package is not installed."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"logging.report_to: expected a list of tracker names, got {names!r}")
    if names == ["none"]:
        return []
    for name in names:
        if name not in TRACKERS:
            raise ValueError(
                f"logging.report_to: unknown tracker {name!r}; expected some of {', '.join(TRACKERS)} (or 'none')"
            )
        package = TRACKERS[name]
        if importlib.util.find_spec(package) is None:
            raise ValueError(
                f"logging.report_to: tracker {name!r} needs the package {package!r}, which is not installed; "
                f"pip install {package}, or remove {name!r} from logging.report_to"
            )
    return list(names)


def round_scalars(row: dict[str, Any]) -> dict[str, float]:
    """``round/<key>`` for every number of a round's row of ``report.json`` (loss, reward accuracy, follower value,
    mass moved, win rate, pairs, seconds)."""
    return {
        f"round/{key}": float(value)
        for key, value in row.items()
        if key != "round" and isinstance(value, int | float) and not isinstance(value, bool)
    }
