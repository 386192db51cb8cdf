"""The experiments' markdown, from their stored results alone: ``--table-only`` rewrites every table without training.

The paper table (``table.md``, a hidden-track and a verifiable-track layout), the pilot's learning curve
(``pilot.md``), several pilots side by side (``compare.md``) and the annotator sweep (``sweep.md``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from experiments import versus
from experiments.rows import INITIAL, SAME_RUN, Variant
from experiments.store import Results, label_agreement

AGREEMENT_VARIANTS = ("sum", "mean", "length_debiased")


def mean_spread(values: list[float]) -> str:
    """One value, or the mean ± the standard deviation over several (seeds)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def interval(d: dict[str, float], spec: str = "+.3f", scale: float = 1.0) -> str:
    """``mean [low, high]`` of a bootstrap summary, each ``scale`` times the value in format ``spec``."""
    low, mean, high = (format(scale * d[k], spec) for k in ("low", "mean", "high"))
    return f"{mean} [{low}, {high}]"


def hidden_row(results: Results, name: str, found: list[dict[str, Any]], seeds: list[int]) -> list[str]:
    """Cells of one hidden-track row: score, paired difference vs the initial model (over seeds and prompts, or the
    one seed's prompts), win rate, KL, annotator numbers."""
    wins = [r["paired"]["win_rate"] for r in found]
    win = interval(wins[0], ".1f", 100) if len(found) == 1 else mean_spread([100 * w["mean"] for w in wins])
    heldout = [r["annotator"]["heldout"][0] for r in found if r.get("annotator", {}).get("heldout")]
    own = [np.mean(r["annotator"]["round"]) for r in found if r.get("annotator", {}).get("round")]
    moved = [100 * float(np.mean(r["mass_moved"])) for r in found if r.get("mass_moved")]
    return [
        f"{np.mean([r['mean_score'] for r in found]):.3f}",
        versus.cell(results, name, "initial", seeds, per_seed=False),
        win,
        f"{np.mean([r['kl'] for r in found]):.2f}",
        mean_spread(heldout),
        mean_spread(own),
        mean_spread(moved),
        f"{np.mean([r['train_seconds'] for r in found]):.0f}",
        str(len(found)),
    ]


def versus_seed(results: Results, variant: Variant, seeds: list[int]) -> str:
    """The row against DPO on the same seed pairs, prompt by prompt, over the seeds both ran (:func:`versus.cell`)."""
    reference = "flip_dpo" if variant.seed_pairs == "flipped" else "dpo_seed"
    if variant.seed_scale != 1.0:
        reference = f"size_dpo_x{variant.seed_scale:g}"
    if variant.name in (reference, SAME_RUN.get(reference)) or SAME_RUN.get(variant.name) == reference:
        return "-"
    return versus.cell(results, variant.name, reference, seeds)


def standard_errors(diff: np.ndarray) -> float:
    """A paired difference's mean in standard errors."""
    return diff.mean() / (diff.std(ddof=1) / math.sqrt(diff.size))


def fitness(results: Results, seeds: list[int]) -> list[str]:
    """Whether the track separates labels (DESIGN 5): full gold against the seed in standard errors, per seed."""
    lines = []
    for seed in seeds:
        gold, seed_only = results.scores("dpo_gold", seed), results.scores("dpo_seed", seed)
        if gold is None or seed_only is None:
            continue
        diff = gold - seed_only
        lines.append(
            f"- seed {seed}: DPO on 100% gold - DPO on the seed = {diff.mean():+.3f} "
            f"({standard_errors(diff):.1f} standard errors)"
        )
    return ["", *lines] if lines else []


def hidden_table(results: Results, chosen: list[Variant], rows: list[int], seeds: list[int], judge: str) -> str:
    """The hidden track's table: paired differences against the initial model and DPO on the seed, KL, annotator."""
    lines = [
        f"| row | method | mean {judge} score | difference vs initial [95% CI over seeds and prompts] | win rate % "
        "| difference vs DPO on the seed [95% CI over seeds and prompts] (per seed) | KL "
        "| annotator agrees with held-out gold % "
        "| gold agrees with round labels % | mass moved % | train wall time (s) | seeds |",
        "|---" * 12 + "|",
    ]
    if 1 in rows:
        score = results.data["initial"]["mean_score"]
        lines.append(f"| 1 | initial model ({INITIAL}) | {score:.3f} | - | 50.0 | - | 0 | - | - | - | 0 | - |")
    for v in chosen:
        found = [e for s in seeds if (e := results.entry(v.name, s)) is not None]
        if found:
            label = v.label + (f" ({found[0]['seed_pairs']} seed pairs)" if v.row == 10 else "")
            cells = hidden_row(results, v.name, found, seeds)
            cells.insert(3, versus_seed(results, v, seeds))
            lines.append(f"| {v.row} | {label} | " + " | ".join(cells) + " |")
    lines += fitness(results, seeds)
    return "\n".join(lines)


def self_label_agreement(entry: dict[str, Any]) -> float | None:
    """The verifiable judge's agreement with a run's self-labels: stored with its results, or read from its run."""
    if "label_agreement" in entry:
        return entry["label_agreement"]
    return label_agreement(Path(entry["run_dir"]))


def verifiable_table(results: Results, chosen: list[Variant], rows: list[int], seeds: list[int]) -> str:
    """The verifiable track's table: win rates against the initial model and the self-labels' agreement with gold."""
    lines = [
        "| row | method | win rate % | LC win rate % | mean judge score | self-labels = judge % | mass moved % "
        "| train wall time (s) | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if 1 in rows:
        score = results.data["initial"]["mean_score"]
        lines.append(f"| 1 | initial model ({INITIAL}) | 50.0 | 50.0 | {score:.3f} | - | - | 0 | - |")
    for v in chosen:
        found = [results.data[f"{v.name}_s{s}"] for s in seeds if f"{v.name}_s{s}" in results.data]
        if not found:
            continue
        agreement = [x for r in found if (x := self_label_agreement(r)) is not None] if v.iterative else []
        moved = [100 * float(np.mean(r["mass_moved"])) for r in found if r.get("mass_moved")]
        lines.append(
            f"| {v.row} | {v.label} | {mean_spread([r['win_rate'] for r in found])} | "
            f"{mean_spread([r['lc_win_rate'] for r in found])} | {np.mean([r['mean_score'] for r in found]):.3f} | "
            f"{mean_spread(agreement)} | {mean_spread(moved) if v.iterative else '-'} | "
            f"{np.mean([r['train_seconds'] for r in found]):.0f} | {len(found)} |"
        )
    return "\n".join(lines)


def agreements(entry: dict[str, Any]) -> str:
    """The implicit reward's held-out agreement %, summed / per-token mean / length-debiased."""
    return "/".join(f"{100 * (entry['agreement'][v]['agreement'] or 0):.0f}" for v in AGREEMENT_VARIANTS)


def pilot_markdown(
    rows: list[tuple[int, list[dict[str, Any]]]], initial: float, args: Any, wall_seconds: float, command: str
) -> str:
    """pilot.md: the learning curve (one line per seed-set size, ``;`` between seeds) and its fitness checks."""
    full = rows[-1][1] if rows else []
    full_gain = float(np.mean([e["mean_score"] for e in full])) - initial if full else float("nan")
    lines = [
        f"# Pilot: DPO on gold pairs of the `{args.rubric}` rubric ({', '.join(map(str, args.seeds))} seeds)",
        "",
        f"Initial model's mean gold score: {initial:.3f} on {args.num_prompts} dev prompts of the hidden track.",
        "",
        "| gold pairs | mean gold score | paired difference vs initial [95% CI] | win rate % [95% CI] | KL | share of "
        "full-gold gain | annotator agreement % (sum / mean / length-debiased) | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, entries in rows:
        diffs = "; ".join(interval(e["paired"]["difference"]) for e in entries)
        wins = "; ".join(interval(e["paired"]["win_rate"], ".1f", 100) for e in entries)
        score = np.mean([e["mean_score"] for e in entries])
        share = (score - initial) / full_gain if full_gain and math.isfinite(full_gain) else float("nan")
        lines.append(
            f"| {size} | {score:.3f} | {diffs} | {wins} | {np.mean([e['kl'] for e in entries]):.2f} | "
            f"{100 * share:.0f}% | {'; '.join(agreements(e) for e in entries)} | "
            f"{np.mean([e['train_seconds'] for e in entries]):.0f} |"
        )
    lines += [
        "",
        "Cells with `;` list the seeds in order. Share of full-gold gain: (score - initial) / (full - initial).",
    ]
    lines += pilot_fitness(rows)
    lines += ["", f"Wall time: {wall_seconds / 60:.1f} min. Command: `{command}`"]
    return "\n".join(lines)


def pilot_fitness(rows: list[tuple[int, list[dict[str, Any]]]]) -> list[str]:
    """The three checks of a benchmark fit for comparing methods, for the largest size against every smaller one."""
    if len(rows) < 2:
        return []
    full_size, full = rows[-1]
    lines = ["", f"## Fitness (full gold = {full_size} pairs)", ""]
    for e in full:
        d, w = e["paired"]["difference"], e["paired"]["win_rate"]
        lines.append(
            f"- seed {e['seed']}: full gold vs initial: difference {interval(d)}, win rate {100 * w['mean']:.1f}% "
            f"(interval excludes 0: {d['low'] > 0 or d['high'] < 0})"
        )
    for size, entries in rows[:-1]:
        zs = []
        for e, f in zip(entries, full, strict=False):
            diff = np.asarray(f["scores"]) - np.asarray(e["scores"])
            zs.append(standard_errors(diff) if diff.std(ddof=1) > 0 else float("inf"))
        agree = [e["agreement"]["sum"]["agreement"] or 0 for e in entries]
        lines.append(
            f"- {size} pairs: full gold - this = {', '.join(f'{z:.1f}' for z in zs)} standard errors; annotator "
            f"agreement {', '.join(f'{100 * a:.1f}%' for a in agree)}"
        )
    return lines


def compare_markdown(directories: list[str], command: str) -> str:
    """compare.md: several pilots' results.json (one per setting) in one table, with the share of answers that fail
    the on-task gate (gold score 0): a policy that games the rubric by looping scores 0 there."""
    lines = [
        "| pilot | gold pairs | seed | mean score | paired difference vs initial [95% CI] | win rate % "
        "| off-task answers % | KL | full gold - this (SE) | annotator agreement % (sum / mean / length-debiased) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for directory in directories:
        name = Path(directory).name
        results = json.loads((Path(directory) / "results.json").read_text())
        initial = np.asarray(results["initial"]["scores"])
        lines.append(
            f"| {name} | 0 (initial) | - | {initial.mean():.3f} | - | 50 | "
            f"{100 * np.mean(initial == 0):.0f} | 0 | - | - |"
        )
        entries = sorted(
            (e for e in results.values() if isinstance(e, dict) and "size" in e), key=lambda e: (e["size"], e["seed"])
        )
        for e in entries:
            scores = np.asarray(e["scores"])
            full = max((f for f in entries if f["seed"] == e["seed"]), key=lambda f: f["size"])
            diff = np.asarray(full["scores"]) - scores
            z = "-" if full is e or diff.std(ddof=1) == 0 else f"{standard_errors(diff):.1f}"
            lines.append(
                f"| {name} | {e['size']} | {e['seed']} | {e['mean_score']:.3f} | {interval(e['paired']['difference'])} "
                f"| {100 * e['paired']['win_rate']['mean']:.1f} | {100 * np.mean(scores == 0):.0f} | {e['kl']:.1f} | "
                f"{z} | {agreements(e)} |"
            )
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)


def sweep_markdown(entries: list[dict[str, Any]], command: str) -> str:
    """sweep.md: the annotator's held-out agreement after each number of DPO steps, per rubric, seed size and seed."""
    lines = [
        "# Annotator sweep: held-out agreement of the seed-trained implicit reward",
        "",
        "Agreement % with gold on the rubric's held-out pairs (all / pairs whose both answers are on-task), for the "
        "summed, per-token mean and length-debiased implicit reward, after each number of DPO steps.",
        "",
        "| rubric | seed pairs | seed | step | all: sum / mean / debiased | on-task: sum / mean / debiased | "
        "log-ratio of chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in sorted(entries, key=lambda e: (e["rubric"], e["size"], e["seed"])):
        for p in e["curve"]:
            cells = [
                " / ".join(f"{100 * (p[part][v] or 0):.0f}" for v in AGREEMENT_VARIANTS) for part in ("all", "on_task")
            ]
            lines.append(
                f"| {e['rubric']} ({e['heldout_pairs']}, {e['on_task_pairs']} on-task) | {e['size']} | {e['seed']} | "
                f"{p['step']} | {cells[0]} | {cells[1]} | {p['mean_chosen_ratio']:+.1f} |"
            )
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines)
