"""Report: the run's summary, once every round is done.

Reads every round's ``metrics.json`` (as the rounds return it), ``round_<t>/train_log.jsonl``,
``annotations.jsonl`` and ``worst_case.safetensors``. Writes, in ``output_dir/``:

    metrics.jsonl     every training step of every round
    report.json       per round: pairs, loss, reward accuracy, the follower's value and moved mass, the win rate,
                      seconds
    report.md         the same as a table, with win_rate.png, margins.png and follower.png where the run has them
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sgpo.pipeline import files
from sgpo.pipeline.context import RunContext

COLUMNS = ("round", "pairs", "loss", "reward_accuracy", "follower_value", "mass_moved", "win_rate", "seconds")
HEADER = "| round | pairs | loss | reward acc. | follower value | mass moved | win rate | seconds |"


def write_report(ctx: RunContext, rounds: list[dict[str, Any]], seconds: float) -> Path:
    """Write the run's report files from the rounds' metrics; returns the path of ``report.md``."""
    rows = [summary_row(m) for m in rounds]
    report = {
        "method": ctx.cfg.method,
        "output_dir": str(ctx.out),
        "processes": ctx.accelerator.num_processes,
        "rounds": rows,
        "seconds": seconds,
    }
    steps = []
    for m in rounds:
        log_path = ctx.round_dir(m["round"]) / "train_log.jsonl"
        if log_path.is_file():
            steps.extend(files.read_jsonl(log_path))
    if ctx.main:
        from sgpo.evaluation.report import run_plots

        files.write_jsonl(ctx.out / "metrics.jsonl", steps)
        files.write_json(ctx.out / "report.json", report)
        lines = [f"# sgpo run: {ctx.cfg.method}", "", HEADER, "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
        lines += ["", *run_plots(ctx.out, rounds)]
        with files.atomic_path(ctx.out / "report.md") as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    ctx.barrier()
    return ctx.out / "report.md"


def summary_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """A round's line of the report, from its ``metrics.json``."""
    train = metrics.get("train", {})
    follower = metrics.get("follower", {})
    return {
        "round": metrics["round"],
        "pairs": train.get("pairs"),
        "loss": train.get("loss"),
        "reward_accuracy": train.get("reward_accuracy"),
        "follower_value": (follower.get("value") or [None])[0],
        "mass_moved": follower.get("mass_moved"),
        "win_rate": metrics.get("eval", {}).get("win_rate"),
        "seconds": metrics.get("seconds"),
    }


def cell(value: Any) -> str:
    """A number as the report prints it: 4 significant digits, '-' where there is none."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
