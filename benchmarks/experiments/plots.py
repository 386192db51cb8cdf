"""The experiments' pictures: reward against KL per row, row 10's seed sizes, and the pilot's learning curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sgpo.evaluation.report import pyplot

from experiments.rows import SEED_SCALES, Variant, lookup


def _found(results: dict[str, Any], name: str, seeds: list[int]) -> list[dict[str, Any]]:
    """A row's evaluated results over ``seeds``."""
    return [e for s in seeds if (e := lookup(results, name, s)) is not None and e.get("paired")]


def plot_frontier(
    results: dict[str, Any], chosen: list[Variant], seeds: list[int], path: Path, judge: str
) -> dict[str, tuple[list[float], list[float]]]:
    """The reward-vs-KL picture across rows: each seed's run as a small point, the seeds' mean as a large one.

    Returns the points drawn, ``label: (KL, paired difference)`` per seed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 4.6))
    ax.scatter([0.0], [0.0], marker="*", s=140, color="black", label="initial model", zorder=3)
    points: dict[str, tuple[list[float], list[float]]] = {}
    names = list(dict.fromkeys(v.name for v in chosen))
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(2, len(names))))
    for name, color in zip(names, colors, strict=False):
        found = _found(results, name, seeds)
        if not found:
            continue
        label = next(v for v in chosen if v.name == name).label
        kl = [float(r["kl"]) for r in found]
        diff = [float(r["paired"]["difference"]["mean"]) for r in found]
        points[label] = (kl, diff)
        ax.scatter(kl, diff, s=14, color=color, alpha=0.5)
        ax.scatter([np.mean(kl)], [np.mean(diff)], s=70, color=color, edgecolor="black", label=label, zorder=3)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("KL from the initial model (nats, on the model's own samples)")
    ax.set_ylabel(f"mean {judge} score - initial model's")
    # the legend below the axes, so the long labels never squeeze the plot
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7, ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return points


def plot_seed_sizes(
    results: dict[str, Any], seeds: list[int], path: Path, judge: str
) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Row 10: the gain over the initial model against the seed's size, DPO and SSAPO, with 100% gold as a line.

    Returns ``method: (seed pairs, mean difference, standard deviation over seeds)`` per size drawn."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    curves: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for method, marker in (("dpo", "o"), ("ssapo", "s")):
        sizes, means, spreads = [], [], []
        for scale in SEED_SCALES:
            name = f"size_{method}_x{scale:g}"
            found = _found(results, name, seeds)
            if not found:
                continue
            diffs = [float(r["paired"]["difference"]["mean"]) for r in found]
            sizes.append(float(found[0]["seed_pairs"]))
            means.append(float(np.mean(diffs)))
            spreads.append(float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0)
        if sizes:
            curves[method] = (sizes, means, spreads)
            label = "DPO on the seed" if method == "dpo" else "SSAPO eps = 0.01 (seed + 2 self-annotated rounds)"
            ax.errorbar(sizes, means, yerr=spreads, marker=marker, capsize=3, label=label)
    gold = _found(results, "dpo_gold", seeds)
    if gold:
        ax.axhline(np.mean([r["paired"]["difference"]["mean"] for r in gold]), color="green", linestyle="--",
                   label="DPO on 100% gold labels")  # fmt: skip
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("gold seed pairs")
    ax.set_ylabel(f"mean {judge} score - initial model's")
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return curves


def plot_learning_curve(
    rows: list[tuple[int, list[dict[str, Any]]]], initial: float, seeds: list[int], rubric: str, path: Path
) -> None:
    """The pilot: mean gold score (95% interval) and the implicit reward's held-out agreement against gold pairs."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for k, seed in enumerate(seeds):
        xs, ys, lo, hi, ag = [], [], [], [], []
        for size, entries in rows:
            e = next((e for e in entries if e["seed"] == seed), None)
            if e is None:
                continue
            d = e["paired"]["difference"]
            # seeds side by side, a little apart on the log axis
            xs.append(size * (1 + 0.04 * k))
            ys.append(e["mean_score"])
            lo.append(e["mean_score"] - (initial + d["low"]))
            hi.append(initial + d["high"] - e["mean_score"])
            ag.append(100 * (e["agreement"]["sum"]["agreement"] or 0))
        left.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=f"seed {seed}")
        right.plot(xs, ag, marker="o", label=f"seed {seed}")
    left.axhline(initial, color="grey", linewidth=0.8, label="initial model")
    right.axhline(65, color="tab:red", linewidth=0.8, linestyle="--", label="65%")
    right.axhline(50, color="grey", linewidth=0.8)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("gold pairs")
        ax.legend(fontsize=7)
    left.set_ylabel(f"mean {rubric} score (95% CI)")
    right.set_ylabel("implicit-reward agreement with gold %")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
