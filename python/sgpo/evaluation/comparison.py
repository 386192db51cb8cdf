"""A candidate against a baseline on the same prompts, and responses against each other under a judge's scores.

The one comparison of ``sgpo run``'s evaluate stage, ``sgpo eval``, the verifiable judge and the rubrics. From gold
scores ``c_i`` (candidate) and ``b_i`` (baseline) on prompt ``i``:

- **outcomes** ``o_i`` = 1 (higher score), 1/2 (equal scores), 0 (lower score);
- **win rate**: the mean of the outcomes (ties count 1/2), with its standard error ``std(o) / sqrt(n)`` and the
  counts of wins, ties and losses;
- **length-controlled win rate** (the idea of AlpacaEval 2.0 LC, simplified to one candidate and one baseline): with
  ``d_i`` = characters of the candidate minus characters of the baseline and ``z_i = tanh(d_i / std(d))`` (``z = 0``
  when all ``d_i`` are equal), fit ``logit P(o_i = 1) = a + b z_i`` by maximising the likelihood of the soft outcomes
  ``sum_i o_i log sigmoid(a + b z_i) + (1 - o_i) log sigmoid(-(a + b z_i))`` minus ``SLOPE_PRIOR / 2 * b**2`` (a weak
  prior that keeps ``b`` finite when outcomes are fully explained by length). The LC win rate is ``sigmoid(a)``: the
  predicted win rate of a candidate as long as its baseline. It equals the win rate when all length differences are
  equal, swaps to ``1 - LC`` when candidate and baseline swap, and when all outcomes are wins (or all losses) it is the
  win rate itself (nothing to separate);
- **paired difference** ``c_i - b_i`` and the win rate, each mean with a percentile bootstrap interval over prompts
  (:func:`sgpo.evaluation.statistics.paired_comparison`).

Between the K responses to one prompt, a judge with scores ``s`` and a ``temperature`` prefers ``a`` to ``b`` with
probability ``P(a > b) = sigmoid((s_a - s_b) / temperature)`` (Bradley-Terry; exactly 1/2 on equal scores, and 1, 1/2
or 0 at temperature 0), and SPPO's win probability of response ``i`` is ``P_i = (1/K) sum_j P(y_i > y_j)`` with
``j = i`` counting 1/2 (DESIGN 1.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgpo.evaluation.statistics import PairedComparison, outcomes, paired_comparison

SLOPE_PRIOR = 1.0


@dataclass(frozen=True)
class WinRate:
    """Candidate vs baseline on the same prompts; rates are fractions in [0, 1]."""

    win_rate: float
    lc_win_rate: float
    stderr: float
    wins: int
    ties: int
    losses: int
    length_slope: float
    mean_length_diff: float

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def to_dict(self) -> dict[str, float]:
        return {
            "win_rate": self.win_rate,
            "lc_win_rate": self.lc_win_rate,
            "stderr": self.stderr,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "n": self.n,
            "length_slope": self.length_slope,
            "mean_length_diff": self.mean_length_diff,
        }


@dataclass(frozen=True)
class Comparison:
    """Everything one comparison of a candidate with a baseline gives: the win rate and its LC form, the paired
    difference with its interval, and both sides' scores per prompt."""

    win: WinRate
    paired: PairedComparison
    candidate_scores: np.ndarray
    baseline_scores: np.ndarray


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def check_same_length(**arrays: Sequence[object]) -> int:
    """The common length of ``arrays``; a ``ValueError`` naming each one's length when they differ."""
    sizes = {name: len(a) for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"expected sequences of the same length, got lengths {sizes}")
    return next(iter(sizes.values()))


def fit_length_logistic(outcomes: np.ndarray, length_diffs: np.ndarray) -> tuple[float, float]:
    """The (a, b) of the module docstring's length regression, by damped Newton steps on the concave likelihood."""
    y = np.asarray(outcomes, dtype=np.float64)
    d = np.asarray(length_diffs, dtype=np.float64)
    if y.shape != d.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(
            f"outcomes, length_diffs: expected two non-empty 1-D arrays of one shape, got {y.shape} and {d.shape}"
        )
    if np.any((y < 0) | (y > 1)) or not np.all(np.isfinite(d)):
        raise ValueError("outcomes: expected values in [0, 1] and finite length differences")
    mean = float(y.mean())
    if mean in (0.0, 1.0):
        return (math.inf if mean == 1.0 else -math.inf), 0.0
    scale = float(d.std())
    z = np.tanh(d / scale) if scale > 0 else np.zeros_like(d)
    features = np.stack([np.ones_like(z), z], axis=1)
    prior = np.array([0.0, SLOPE_PRIOR])

    def objective(theta: np.ndarray) -> float:
        t = features @ theta
        return float(np.sum(y * -np.logaddexp(0, -t) + (1 - y) * -np.logaddexp(0, t)) - 0.5 * prior @ theta**2)

    theta = np.array([math.log(mean / (1 - mean)), 0.0])
    value = objective(theta)
    for _ in range(100):
        p = sigmoid(features @ theta)
        grad = features.T @ (y - p) - prior * theta
        hess = -(features.T * (p * (1 - p))) @ features - np.diag(prior)
        # the intercept-only direction is flat when z is constant; a tiny ridge keeps the solve defined
        step = np.linalg.solve(hess - 1e-12 * np.eye(2), -grad)
        t = 1.0
        while t > 1e-8:
            candidate = theta + t * step
            new_value = objective(candidate)
            if new_value >= value - 1e-12:
                break
            t *= 0.5
        theta, value = candidate, new_value
        if np.max(np.abs(t * step)) < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def win_rate_from_outcomes(
    outcomes: Sequence[float], candidate_lengths: Sequence[int], baseline_lengths: Sequence[int]
) -> WinRate:
    """Win rate and LC win rate (module docstring) from outcomes in {0, 1/2, 1} and response lengths in characters."""
    n = check_same_length(outcomes=outcomes, candidate_lengths=candidate_lengths, baseline_lengths=baseline_lengths)
    if n == 0:
        raise ValueError("outcomes: expected at least one comparison, got none")
    y = np.asarray(outcomes, dtype=np.float64)
    d = np.asarray(candidate_lengths, dtype=np.float64) - np.asarray(baseline_lengths, dtype=np.float64)
    a, b = fit_length_logistic(y, d)
    lc = float(sigmoid(np.array(a))) if math.isfinite(a) else float(a > 0)
    return WinRate(
        win_rate=float(y.mean()),
        lc_win_rate=lc,
        stderr=float(y.std() / math.sqrt(n)),
        wins=int(np.sum(y == 1.0)),
        ties=int(np.sum(y == 0.5)),
        losses=int(np.sum(y == 0.0)),
        length_slope=b,
        mean_length_diff=float(d.mean()),
    )


def compare_scores(
    candidate_scores: Sequence[float] | np.ndarray,
    baseline_scores: Sequence[float] | np.ndarray,
    candidate_lengths: Sequence[int],
    baseline_lengths: Sequence[int],
) -> Comparison:
    """The comparison of the module docstring from both sides' gold scores and response lengths (characters)."""
    c, b = np.asarray(candidate_scores, dtype=np.float64), np.asarray(baseline_scores, dtype=np.float64)
    win = win_rate_from_outcomes(outcomes(c, b), candidate_lengths, baseline_lengths)
    return Comparison(win=win, paired=paired_comparison(c, b), candidate_scores=c, baseline_scores=b)


def compare_responses(
    judge: Any, prompts: Sequence[Any], candidates: Sequence[str], baselines: Sequence[str]
) -> Comparison:
    """``judge.scores`` of the candidates' and the baselines' responses to the same prompts, compared."""
    check_same_length(prompts=prompts, candidates=candidates, baselines=baselines)
    cand = judge.scores(list(prompts), list(candidates))
    base = judge.scores(list(prompts), list(baselines))
    return compare_scores(cand, base, [len(r) for r in candidates], [len(r) for r in baselines])


def preference_probabilities(score_diffs: np.ndarray, temperature: float) -> np.ndarray:
    """Bradley-Terry ``P(a > b) = sigmoid((s_a - s_b) / temperature)``; 1, 1/2 or 0 at temperature 0."""
    diff = np.asarray(score_diffs, dtype=np.float64)
    if temperature == 0:
        return 0.5 * (1.0 + np.sign(diff))
    return sigmoid(diff / temperature)


def win_probabilities(scores: Sequence[float] | np.ndarray, temperature: float) -> np.ndarray:
    """SPPO's ``P_i = (1/K) sum_j P(y_i > y_j)`` of the K responses to one prompt from their scores, ``j = i``
    counting 1/2."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError("responses: expected at least one response, got none")
    return preference_probabilities(s[:, None] - s[None, :], temperature).mean(axis=1)
