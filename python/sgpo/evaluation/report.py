"""The evaluation report: markdown tables and PNG plots (matplotlib, Agg backend, so no display is needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sgpo.evaluation.comparison import WinRate
from sgpo.evaluation.statistics import PairedComparison
from sgpo.follower import moved_mass


@dataclass
class ModelResult:
    """One evaluated model against the baseline."""

    label: str
    model: str
    win: WinRate
    mean_score: float
    baseline_mean_score: float
    mean_chars: float
    comparison: PairedComparison | None = None
    # mean over prompts of log pi(y|x) - log pi_0(y|x) on the model's own samples, and its standard error
    kl: float | None = None
    kl_stderr: float | None = None
    scores: np.ndarray | None = field(default=None, repr=False)
    # the model's implicit reward as an annotator: agreement with held-out gold pairs, per variant
    agreement: dict[str, dict] | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"label": self.label, "model": self.model, "mean_score": self.mean_score}
        out.update(self.win.to_dict())
        out.update(baseline_mean_score=self.baseline_mean_score, mean_chars=self.mean_chars)
        if self.comparison is not None:
            out["paired"] = self.comparison.to_dict()
        out.update(kl=self.kl, kl_stderr=self.kl_stderr)
        if self.agreement is not None:
            out["agreement"] = self.agreement
        if self.scores is not None:
            out["scores"] = [float(x) for x in self.scores]
        return out


@dataclass
class RoundArtifacts:
    """What a training round left on disk that the report plots: its pair margins and the follower's worst case."""

    round: int
    margins: np.ndarray | None = None
    # the follower's inputs xi (probability space: sigmoid(gamma * margin); margin space: beta * margin)
    follower_inputs: np.ndarray | None = None
    weights: np.ndarray | None = None
    shifts: np.ndarray | None = None
    extra: dict[str, float] = field(default_factory=dict)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_win_rates(results: Sequence[ModelResult], path: Path) -> Path:
    return plot_win_rate_series([r.label for r in results], [r.win for r in results], path)


def plot_win_rate_series(labels: Sequence[str], wins: Sequence[WinRate], path: Path) -> Path:
    """Win rate (± standard error) and LC win rate of each labelled model against the baseline."""
    plt = pyplot()
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) + 2), 3.2))
    wr = [100 * w.win_rate for w in wins]
    lc = [100 * w.lc_win_rate for w in wins]
    err = [100 * w.stderr for w in wins]
    ax.errorbar(x, wr, yerr=err, marker="o", capsize=3, label="win rate")
    ax.plot(x, lc, marker="s", linestyle="--", label="LC win rate")
    ax.axhline(50, color="grey", linewidth=0.8)
    ax.set_xticks(x, list(labels), rotation=20)
    ax.set_ylabel("% vs baseline")
    ax.set_ylim(0, 100)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(results: Sequence[ModelResult], path: Path, baseline_score: float) -> Path:
    """The reward-vs-KL frontier (the DPO paper's picture): mean gold score against KL from the baseline."""
    plt = pyplot()
    shown = [r for r in results if r.kl is not None and r.comparison is not None]
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    ax.scatter([0.0], [baseline_score], marker="*", s=120, color="black", label="baseline", zorder=3)
    for r in shown:
        c = r.comparison
        low, high = baseline_score + c.difference.low, baseline_score + c.difference.high
        ax.errorbar(
            [r.kl],
            [r.mean_score],
            yerr=[[r.mean_score - low], [high - r.mean_score]],
            xerr=[[r.kl_stderr or 0.0], [r.kl_stderr or 0.0]],
            marker="o",
            capsize=3,
            label=r.label,
        )
    ax.axhline(baseline_score, color="grey", linewidth=0.8)
    ax.set_xlabel("KL from the baseline (nats, on the model's own samples)")
    ax.set_ylabel("mean gold score")
    if len(shown) <= 12:
        ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_margin_histograms(rounds: Sequence[RoundArtifacts], path: Path) -> Path:
    plt = pyplot()
    shown = [r for r in rounds if r.margins is not None and r.margins.size]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 2.8), squeeze=False)
    for ax, r in zip(axes[0], shown, strict=True):
        ax.hist(r.margins, bins=30, color="tab:blue", alpha=0.8)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_title(f"round {r.round}")
        ax.set_xlabel("margin")
    axes[0][0].set_ylabel("pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_follower(rounds: Sequence[RoundArtifacts], path: Path) -> Path:
    """Per round: the mass the follower moves off each input xi and its mean displacement, against xi."""
    plt = pyplot()
    shown = [r for r in rounds if r.weights is not None and r.shifts is not None and r.follower_inputs is not None]
    fig, axes = plt.subplots(2, len(shown), figsize=(3.2 * len(shown), 5.0), squeeze=False)
    for col, r in enumerate(shown):
        w, d = np.asarray(r.weights), np.asarray(r.shifts)
        moved = moved_mass(w, d)
        mean_shift = (w * d).sum(axis=1)
        axes[0][col].scatter(r.follower_inputs, moved, s=6)
        axes[0][col].set_title(f"round {r.round}")
        axes[1][col].scatter(r.follower_inputs, mean_shift, s=6, color="tab:red")
        axes[1][col].set_xlabel("follower input xi")
        for ax in (axes[0][col], axes[1][col]):
            ax.locator_params(axis="x", nbins=4)
            ax.ticklabel_format(axis="x", useOffset=False)
    axes[0][0].set_ylabel("mass moved")
    axes[1][0].set_ylabel("sum_k W D")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def paired_table(results: Sequence[ModelResult]) -> str:
    lines = [
        "| model | mean score | paired difference [95% CI] | win rate % [95% CI] | KL from baseline |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        c = r.comparison
        if c is None:
            continue
        kl = "-" if r.kl is None else f"{r.kl:.2f} ± {r.kl_stderr or 0.0:.2f}"
        lines.append(
            f"| {r.label} | {c.mean_score:.3f} (baseline {c.baseline_mean_score:.3f}) | {c.difference.mean:+.3f} "
            f"[{c.difference.low:+.3f}, {c.difference.high:+.3f}] | {_pct(c.win_rate.mean)} "
            f"[{_pct(c.win_rate.low)}, {_pct(c.win_rate.high)}] | {kl} |"
        )
    return "\n".join(lines)


def agreement_table(results: Sequence[ModelResult]) -> str:
    shown = [r for r in results if r.agreement]
    variants = list(shown[0].agreement) if shown else []
    lines = ["| model | " + " | ".join(f"{v} %" for v in variants) + " | pairs |", "|---" * (len(variants) + 2) + "|"]
    for r in shown:
        cells = []
        for v in variants:
            a = r.agreement[v]
            cells.append("-" if a["agreement"] is None else f"{_pct(a['agreement'])} ± {_pct(a['stderr'])}")
        lines.append(f"| {r.label} | " + " | ".join(cells) + f" | {r.agreement[variants[0]]['pairs']} |")
    return "\n".join(lines)


def results_table(results: Sequence[ModelResult]) -> str:
    lines = [
        "| model | win rate % | LC win rate % | wins / ties / losses | mean score | baseline score | mean chars |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        w = r.win
        lines.append(
            f"| {r.label} | {_pct(w.win_rate)} ± {_pct(w.stderr)} | {_pct(w.lc_win_rate)} | "
            f"{w.wins} / {w.ties} / {w.losses} | {r.mean_score:.3f} | {r.baseline_mean_score:.3f} | "
            f"{r.mean_chars:.0f} |"
        )
    return "\n".join(lines)


def rounds_table(rounds: Sequence[RoundArtifacts]) -> str:
    lines = ["| round | pairs | mean margin | margins < 0 | mass moved by the follower |", "|---|---|---|---|---|"]
    for r in rounds:
        if r.margins is None or not r.margins.size:
            continue
        moved = "-"
        if r.weights is not None and r.shifts is not None:
            moved = f"{float(moved_mass(r.weights, r.shifts).mean()):.4f}"
        lines.append(
            f"| {r.round} | {r.margins.size} | {float(r.margins.mean()):.4f} | "
            f"{float((r.margins < 0).mean()):.2f} | {moved} |"
        )
    return "\n".join(lines)


def write_report(
    output_dir: Path,
    *,
    title: str,
    results: Sequence[ModelResult],
    rounds: Sequence[RoundArtifacts],
    settings: dict[str, object],
    baseline: str,
    judge: str = "verifiable",
) -> Path:
    """Write ``report.md`` and its PNGs into ``output_dir``; returns the report's path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", f"Baseline: `{baseline}`. Gold judge: `{judge}`.", ""]
    if any(r.comparison is not None for r in results):
        parts += ["## Gold score against the baseline, paired by prompt", "", paired_table(results), ""]
        parts += [
            "Each model answers the baseline's prompts with the same per-row seeds. Paired difference: the mean over "
            "prompts of score(model) - score(baseline); intervals are percentile bootstraps over prompts. KL: the "
            "mean of log pi - log pi_0 over the model's own samples (± standard error).",
            "",
        ]
        if any(r.kl is not None for r in results):
            plot_frontier(results, output_dir / "frontier.png", results[0].baseline_mean_score)
            parts += ["![gold score against KL from the baseline](frontier.png)", ""]
    if any(r.agreement for r in results):
        parts += ["## Each model as a self-annotator", "", agreement_table(results), ""]
        parts += [
            "How often the model's implicit reward log pi - log pi_baseline ranks held-out gold pairs as gold does "
            "(annotator ties count 1/2): summed over tokens (the paper), per-token mean, and length-debiased "
            "(r - alpha len, alpha fitted on these pairs so that chosen and rejected lengths balance).",
            "",
        ]
    parts += ["## Win rate against the baseline", "", results_table(results), ""]
    parts += [
        "Win rate: ties count 1/2; ± is the standard error over prompts. LC win rate: the intercept of a logistic "
        "regression of the outcome on tanh(length difference / its std), i.e. the predicted win rate at equal "
        "length (see `sgpo.evaluation.comparison`).",
        "",
    ]
    if results:
        plot_win_rates(results, output_dir / "win_rate.png")
        parts += ["![win rate per round](win_rate.png)", ""]
    if any(r.margins is not None and r.margins.size for r in rounds):
        plot_margin_histograms(rounds, output_dir / "margins.png")
        parts += ["## Training rounds", "", rounds_table(rounds), "", "![margin histograms](margins.png)", ""]
    if any(r.weights is not None and r.follower_inputs is not None for r in rounds):
        plot_follower(rounds, output_dir / "follower.png")
        parts += [
            "Follower (worst case in the Wasserstein ball): per pair, the probability mass moved off its input "
            "xi_i and the weighted displacement sum_k W_ik D_ik, against xi_i.",
            "",
            "![follower weights and displacements](follower.png)",
            "",
        ]
    parts += ["## Settings", "", "| key | value |", "|---|---|"]
    parts += [f"| {k} | `{v}` |" for k, v in settings.items()]
    path = output_dir / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
