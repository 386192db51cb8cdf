"""Paired statistics for comparing a model with a baseline on the same prompts, and annotator agreement.

Every model answers the same prompts with the same per-row seeds as the baseline, so the natural unit is the prompt:
``d_i = score(model, x_i) - score(baseline, x_i)``. Intervals are percentile bootstraps over prompts (resampling
prompts with replacement), with a fixed generator seed so a report is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided ``level`` interval."""

    mean: float
    low: float
    high: float
    level: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval:
    """The mean of ``values`` with a percentile bootstrap interval (resampling the values with replacement)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values: expected a non-empty 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("values: expected finite numbers, got NaN or infinity")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    if samples < 1:
        raise ValueError(f"samples: expected an integer >= 1, got {samples!r}")
    rng = np.random.default_rng(seed)
    # one (samples, n) index draw: the mean of each row is one bootstrap replicate
    means = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(x.mean()), float(low), float(high), level)


def outcomes(candidate: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per prompt: 1 if the candidate scores higher, 1/2 on equal scores, 0 if lower."""
    c, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if c.shape != b.shape:
        raise ValueError(f"candidate, baseline: expected scores of one shape, got {c.shape} and {b.shape}")
    return 0.5 * (1.0 + np.sign(c - b))


@dataclass(frozen=True)
class PairedComparison:
    """A candidate against a baseline on the same prompts: gold scores, their paired difference and the win rate."""

    n: int
    mean_score: float
    baseline_mean_score: float
    difference: Interval
    win_rate: Interval
    stderr_difference: float

    def to_dict(self) -> dict[str, object]:
        return {
            "n": self.n,
            "mean_score": self.mean_score,
            "baseline_mean_score": self.baseline_mean_score,
            "difference": self.difference.to_dict(),
            "win_rate": self.win_rate.to_dict(),
            "stderr_difference": self.stderr_difference,
        }


def paired_comparison(
    candidate: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedComparison:
    """Mean gold scores, the paired per-prompt difference and the win rate, each mean with a bootstrap interval."""
    c, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    wins = outcomes(c, b)
    diff = c - b
    return PairedComparison(
        n=int(c.size),
        mean_score=float(c.mean()),
        baseline_mean_score=float(b.mean()),
        difference=bootstrap_mean(diff, level=level, samples=samples, seed=seed),
        win_rate=bootstrap_mean(wins, level=level, samples=samples, seed=seed),
        stderr_difference=float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else 0.0,
    )


@dataclass(frozen=True)
class Agreement:
    """How often an annotator prefers the response a gold judge prefers; pairs gold calls equal are left out."""

    # None when gold separates no pair
    agreement: float | None
    pairs: int
    ties: int
    stderr: float | None

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def agreement(
    annotator_chosen: Sequence[float] | np.ndarray,
    annotator_rejected: Sequence[float] | np.ndarray,
    gold_chosen: Sequence[float] | np.ndarray | None = None,
    gold_rejected: Sequence[float] | np.ndarray | None = None,
) -> Agreement:
    """The annotator's agreement with gold on pairs ``(a, b)``.

    With gold scores, a pair counts when gold separates it, and the annotator agrees when it orders the pair as gold
    does; without them, ``a`` is gold's choice (a gold-labelled pair). An annotator tie counts 1/2.
    """
    a, b = np.asarray(annotator_chosen, dtype=np.float64), np.asarray(annotator_rejected, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"annotator_chosen, annotator_rejected: expected 1-D arrays of one shape, got {a.shape} and {b.shape}"
        )
    if gold_chosen is None or gold_rejected is None:
        sign = np.ones_like(a)
    else:
        gc, gr = np.asarray(gold_chosen, dtype=np.float64), np.asarray(gold_rejected, dtype=np.float64)
        if gc.shape != a.shape or gr.shape != a.shape:
            raise ValueError(f"gold_chosen, gold_rejected: expected shape {a.shape}, got {gc.shape} and {gr.shape}")
        sign = np.sign(gc - gr)
    decided = sign != 0
    n = int(decided.sum())
    if n == 0:
        return Agreement(None, 0, int(a.size), None)
    agree = 0.5 * (1.0 + np.sign((a - b)[decided]) * sign[decided])
    return Agreement(
        agreement=float(agree.mean()),
        pairs=n,
        ties=int(a.size - n),
        stderr=float(agree.std() / math.sqrt(n)),
    )
