"""Report: the run's summary, once every round is done.

Reads every round's ``metrics.json`` (as the rounds return it) and, in ``round_<t>/``, ``train_log.jsonl``,
``annotations.jsonl`` (the margins) and ``worst_case.safetensors`` (the follower's answer). Writes, in ``output_dir/``:

    metrics.jsonl     every training step of every round
    report.json       per round: pairs, loss, reward accuracy, the follower's value and moved mass, the win rate,
                      seconds
    report.md         the same as a table, what the gold judge says about the last round against the starting model
                      (scores, paired difference and interval, noise or not), and win_rate.png, margins.png and
                      follower.png where the run has them
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
        files.write_jsonl(ctx.out / "metrics.jsonl", steps)
        files.write_json(ctx.out / "report.json", report)
        lines = [f"# sgpo run: {ctx.cfg.method}", "", HEADER, "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
        summary = gold_summary(ctx.cfg, rounds)
        if summary:
            lines += ["", " ".join(summary)]
        lines += ["", *plots(ctx.out, rounds)]
        with files.atomic_path(ctx.out / "report.md") as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    ctx.barrier()
    return ctx.out / "report.md"


def plots(run_dir: Path, rounds: list[dict[str, Any]]) -> list[str]:
    """Draw the run's plots from what its rounds wrote; returns the markdown lines that embed them.

    The win rate per round where the run evaluated its rounds, the margin histograms and the follower's worst case.
    """
    from dataclasses import fields

    from sgpo.evaluation.comparison import WinRate
    from sgpo.evaluation.report import plot_follower, plot_margin_histograms, plot_win_rate_series
    from sgpo.evaluation.runs import load_round

    parts: list[str] = []
    keys = [f.name for f in fields(WinRate)]
    evaluated = [m for m in rounds if all(k in m.get("eval", {}) for k in keys)]
    if evaluated:
        wins = [WinRate(**{k: m["eval"][k] for k in keys}) for m in evaluated]
        plot_win_rate_series([f"round {m['round']}" for m in evaluated], wins, run_dir / "win_rate.png")
        parts += ["![win rate per round against the starting model](win_rate.png)", ""]
    artifacts = [load_round(run_dir / f"round_{m['round']}", m["round"]) for m in rounds]
    if any(r.margins is not None and r.margins.size for r in artifacts):
        plot_margin_histograms(artifacts, run_dir / "margins.png")
        parts += ["![margin histograms](margins.png)", ""]
    if any(r.weights is not None and r.follower_inputs is not None for r in artifacts):
        plot_follower(artifacts, run_dir / "follower.png")
        parts += ["![follower weights and displacements](follower.png)", ""]
    return parts


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


def gold_summary(cfg: Any, rounds: list[dict[str, Any]]) -> list[str]:
    """What the gold judge says about the last evaluated round against the starting model, in plain sentences: the
    mean scores, the paired difference with its 95% interval, whether that interval tells it from noise at this many
    prompts, and the command of the real comparison. Empty when no round was evaluated."""
    evaluated = [m for m in rounds if "difference" in m.get("eval", {})]
    if not evaluated:
        return []
    last = evaluated[-1]
    e, judge = last["eval"], cfg.evaluate.judge.name
    d, low, high, n = e["difference"], e["difference_low"], e["difference_high"], int(e["prompts"])
    lines = [
        f"Gold judge '{judge}' on {n} held-out prompts: mean score {e['baseline_mean_score']:.3f} for the starting "
        f"model, {e['mean_score']:.3f} after round {last['round']}; paired difference {d:+.3f}, 95% interval "
        f"[{low:+.3f}, {high:+.3f}].",
    ]
    if low > 0 or high < 0:
        lines.append(
            f"The interval excludes 0: at {n} prompts this {'gain' if d > 0 else 'loss'} is distinguishable from "
            "noise, for this one seed and this one run."
        )
    else:
        lines.append(f"The interval includes 0: at {n} prompts this difference cannot be told from noise.")
    if cfg.evaluate.prompts == "hidden":
        command = (
            f"python benchmarks/paper_table.py --task hidden:{judge} --rows 1 2 3 4 5 --seeds 1 2 3 4 5"
            " --num-prompts 256 (docs/results-hidden.md)"
        )
    else:
        command = "python benchmarks/paper_table.py (docs/benchmarks.md)"
    lines.append(f"The real comparison, every method against the same seed over five seeds: {command}")
    return lines


def cell(value: Any) -> str:
    """A number as the report prints it: 4 significant digits, '-' where there is none."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
