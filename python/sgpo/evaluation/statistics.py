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


@dataclass(frozen=True)
class SeedPromptInterval(Interval):
    """A mean difference over training seeds and prompts with a random-effects interval (:func:`seed_prompt_interval`);
    ``p_value`` is the two-sided test of a zero mean, ``df`` the interval's degrees of freedom."""

    seeds: int = 0
    prompts: int = 0
    stderr: float = 0.0
    df: float = math.inf
    p_value: float = 1.0


def seed_prompt_interval(
    differences: Sequence[Sequence[float]] | np.ndarray, *, level: float = 0.95
) -> SeedPromptInterval:
    """The mean of a (seeds, prompts) array of paired differences, with an interval for the method, not for these
    trained models: both the training seed and the prompt are random draws.

    Model (crossed, every seed answers the same prompts): ``d[s, i] = mu + a_s + b_i + e_si`` with seed, prompt and
    residual variances. The grand mean's variance is ``s_a^2/S + s_b^2/n + s_e^2/(S n)``; from the two-way mean squares,
    ``(MS_seed + max(MS_prompt - MS_res, 0)) / (S n)`` estimates it, and the interval is ``mean +- t_df * stderr``
    with Satterthwaite's ``df`` (``S - 1`` when the prompt term is 0).

    Why this and not a two-level bootstrap (resample seeds, then prompts within them): with the 3 to 5 seeds a table
    has, a percentile bootstrap over seeds treats their spread as known; it shrinks the seed variance by (S-1)/S and
    has no t quantile, so it under-covers (about 80% for a nominal 95% at 3 seeds when the seed variance dominates).
    The t interval on the seeds' mean squares is exact for the normal model and keeps nominal coverage at any S >= 2.
    Pooling the prompts of all seeds and bootstrapping them as one sample (:func:`bootstrap_mean`) ignores ``s_a``
    altogether: an interval for these S trained models, kept as the prompt-level interval.
    """
    from scipy import stats

    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] < 2:
        raise ValueError(
            f"differences: expected a (seeds, prompts) array with at least 2 seeds and 2 prompts, got shape {d.shape}"
        )
    if not np.all(np.isfinite(d)):
        raise ValueError("differences: expected finite numbers, got NaN or infinity")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    s, n = d.shape
    mean = float(d.mean())
    seed_means, prompt_means = d.mean(axis=1), d.mean(axis=0)
    ms_seed = n * float(np.var(seed_means, ddof=1))
    ms_prompt = s * float(np.var(prompt_means, ddof=1))
    residual = d - seed_means[:, None] - prompt_means[None, :] + mean
    ms_res = float((residual**2).sum()) / ((s - 1) * (n - 1))
    terms = [(ms_seed, s - 1)]
    if ms_prompt > ms_res:
        terms += [(ms_prompt, n - 1), (-ms_res, (s - 1) * (n - 1))]
    variance = sum(ms for ms, _ in terms) / (s * n)
    if variance <= 0:
        # every seed and prompt gives the same difference: a point
        return SeedPromptInterval(mean, mean, mean, level, s, n, 0.0, math.inf, 0.0 if mean else 1.0)
    df = variance**2 / sum((ms / (s * n)) ** 2 / k for ms, k in terms)
    stderr = math.sqrt(variance)
    half = float(stats.t.ppf(0.5 + level / 2, df)) * stderr
    p = float(2 * stats.t.sf(abs(mean) / stderr, df))
    return SeedPromptInterval(mean, mean - half, mean + half, level, s, n, stderr, float(df), p)


def equivalence(interval: SeedPromptInterval, margin: float, *, alpha: float = 0.05) -> str:
    """Two one-sided tests (TOST) of ``|mu| < margin`` at ``alpha``, from a :func:`seed_prompt_interval`:
    "equivalent" when the ``1 - 2 alpha`` interval lies inside ``(-margin, margin)``, "not equivalent" when it lies
    wholly outside (the difference is significantly larger than the margin), "inconclusive" otherwise."""
    from scipy import stats

    if not margin > 0:
        raise ValueError(f"margin: expected a number > 0, got {margin!r}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha: expected a number in (0, 0.5), got {alpha!r}")
    half = float(stats.t.ppf(1 - alpha, interval.df)) * interval.stderr
    low, high = interval.mean - half, interval.mean + half
    if -margin < low and high < margin:
        return "equivalent"
    if low >= margin or high <= -margin:
        return "not equivalent"
    return "inconclusive"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (strong control of the family-wise error rate)."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError(f"p_values: expected a 1-D sequence of numbers in [0, 1], got {p_values!r}")
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((p.size - np.arange(p.size)) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


def stratified_exact_test(strata: Sequence[tuple[int, int, int, int]]) -> float:
    """One-sided exact conditional test that flagged items are "bad" more often than the rest, within strata.

    Each stratum is ``(bad_flagged, flagged, bad, total)``. Given each stratum's margins (how many items it flags and
    how many are bad), the count of bad flagged items is hypergeometric under independence; the statistic is their sum
    over strata, whose exact null distribution is the convolution of the strata's (the exact form of the
    Mantel-Haenszel test for a common odds ratio of 1). Returns P(sum >= observed). The base rate is each stratum's
    own, estimated from the same items, which a binomial test against a pooled rate treats as known.
    """
    from scipy.stats import hypergeom

    if not strata:
        raise ValueError("strata: expected at least one (bad_flagged, flagged, bad, total) stratum, got none")
    dist = np.ones(1)
    observed = 0
    for stratum in strata:
        x, k, m, n = (int(v) for v in stratum)
        if not (0 <= k <= n and 0 <= m <= n and max(0, k + m - n) <= x <= min(k, m)):
            raise ValueError(
                f"strata: expected (bad_flagged, flagged, bad, total) with the flagged and bad counts within the "
                f"total and bad_flagged possible for them, got {tuple(stratum)!r}"
            )
        observed += x
        dist = np.convolve(dist, hypergeom.pmf(np.arange(k + 1), n, m, k))
    return float(min(1.0, dist[observed:].sum()))
