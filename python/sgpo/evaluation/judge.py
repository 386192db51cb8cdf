"""``VerifiableJudge``: an exact, deterministic, offline judge for the prompts of :mod:`sgpo.evaluation.prompts`.

What it computes, exactly:

- **score** ``s(x, y)`` = (number of constraints of prompt ``x`` that response ``y`` satisfies) / (number of
  constraints), where a constraint counts as satisfied only if ``y`` also addresses the task
  (:func:`sgpo.evaluation.constraints.addresses_task`). ``s`` lies in [0, 1].
- **preference probability** ``P(a > b | x) = sigmoid((s(x, a) - s(x, b)) / temperature)``; exactly 1/2 on equal
  scores; with ``temperature=0`` it is 1, 1/2 or 0.
- **SPPO win probabilities** of K responses to one prompt: ``P_i = (1/K) sum_j P(y_i > y_j)`` with ``j = i`` counting
  1/2 (DESIGN 1.4).
- **win rate** of candidates against baselines on the same prompts: the mean of the outcomes ``o_i`` = 1 (higher
  score), 1/2 (equal scores), 0 (lower score).
- **length-controlled win rate** (the idea of AlpacaEval 2.0 LC, simplified to one candidate and one baseline): with
  ``d_i`` = characters of the candidate minus characters of the baseline and ``z_i = tanh(d_i / std(d))`` (``z = 0``
  when all ``d_i`` are equal), fit ``logit P(o_i = 1) = a + b z_i`` by maximising the likelihood of the soft outcomes
  ``sum_i o_i log sigmoid(a + b z_i) + (1 - o_i) log sigmoid(-(a + b z_i))`` minus ``SLOPE_PRIOR / 2 * b**2`` (a weak
  prior that keeps ``b`` finite when outcomes are fully explained by length). The LC win rate is ``sigmoid(a)``: the
  predicted win rate of a candidate as long as its baseline. It equals the win rate when all length differences are
  equal, swaps to ``1 - LC`` when candidate and baseline swap, and when all outcomes are wins (or all losses) it is the
  win rate itself (nothing to separate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sgpo.evaluation.prompts import PromptSpec, parse_prompt

SLOPE_PRIOR = 1.0
DEFAULT_TEMPERATURE = 0.1


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


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _check_same_length(**arrays: Sequence[object]) -> int:
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
        p = _sigmoid(features @ theta)
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
    n = _check_same_length(outcomes=outcomes, candidate_lengths=candidate_lengths, baseline_lengths=baseline_lengths)
    if n == 0:
        raise ValueError("outcomes: expected at least one comparison, got none")
    y = np.asarray(outcomes, dtype=np.float64)
    d = np.asarray(candidate_lengths, dtype=np.float64) - np.asarray(baseline_lengths, dtype=np.float64)
    a, b = fit_length_logistic(y, d)
    lc = float(_sigmoid(np.array(a))) if math.isfinite(a) else float(a > 0)
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


class VerifiableJudge:
    """Scores, preference probabilities and win rates for prompts made by :mod:`sgpo.evaluation.prompts`.

    ``temperature`` sets how sharply a higher score turns into a preference (see the module docstring). The judge
    reads each prompt's constraints from its text, so it accepts exactly the prompt strings the pipeline carries.
    """

    name = "verifiable"

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE) -> None:
        if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
        self.temperature = float(temperature)

    @staticmethod
    def spec(prompt: str | Sequence[dict[str, str]]) -> PromptSpec:
        """The prompt's spec; a chat message list is judged by its last user message."""
        if not isinstance(prompt, str):
            users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
            if not users or not isinstance(users[-1], str):
                raise ValueError(f"prompt: expected a string or chat messages with a user turn, got {prompt!r:.80}")
            prompt = users[-1]
        return parse_prompt(prompt)

    def accepts(self, prompt: str | Sequence[dict[str, str]]) -> bool:
        """Whether this judge can score responses to ``prompt`` (a prompt of :mod:`sgpo.evaluation.prompts`)."""
        try:
            self.spec(prompt)
        except ValueError:
            return False
        return True

    def score(self, prompt: str, response: str) -> float:
        """The fraction of the prompt's constraints the response satisfies while addressing the task."""
        if not isinstance(response, str):
            raise ValueError(f"response: expected a string, got {type(response).__name__}")
        spec = self.spec(prompt)
        # a bare task without constraints is scored by the on-task check alone
        satisfied = spec.satisfied(response) if spec.constraints else [spec.addresses_task(response)]
        return sum(satisfied) / len(satisfied)

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """:meth:`score` for each (prompt, response) pair, as a float64 array."""
        _check_same_length(prompts=prompts, responses=responses)
        return np.array([self.score(p, r) for p, r in zip(prompts, responses, strict=True)], dtype=np.float64)

    def _probability(self, diff: np.ndarray) -> np.ndarray:
        if self.temperature == 0:
            return 0.5 * (1.0 + np.sign(diff))
        return _sigmoid(diff / self.temperature)

    def preference_probs(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> np.ndarray:
        """``P(a_i > b_i | x_i)`` for each i (module docstring)."""
        _check_same_length(prompts=prompts, responses_a=responses_a, responses_b=responses_b)
        return self._probability(self.scores(prompts, responses_a) - self.scores(prompts, responses_b))

    def preference(self, prompt: str, response_a: str, response_b: str) -> float:
        return float(self.preference_probs([prompt], [response_a], [response_b])[0])

    def win_probabilities(self, prompt: str, responses: Sequence[str]) -> np.ndarray:
        """SPPO's ``P_i = (1/K) sum_j P(y_i > y_j)`` over the K responses to one prompt, ``j = i`` counting 1/2."""
        if len(responses) == 0:
            raise ValueError("responses: expected at least one response, got none")
        s = self.scores([prompt] * len(responses), responses)
        return self._probability(s[:, None] - s[None, :]).mean(axis=1)

    def compare(
        self, prompts: Sequence[str], candidates: Sequence[str], baselines: Sequence[str]
    ) -> tuple[WinRate, np.ndarray, np.ndarray]:
        """Win rate of ``candidates`` over ``baselines`` on the same prompts, with both score arrays."""
        _check_same_length(prompts=prompts, candidates=candidates, baselines=baselines)
        cand = self.scores(prompts, candidates)
        base = self.scores(prompts, baselines)
        outcomes = 0.5 * (1.0 + np.sign(cand - base))
        result = win_rate_from_outcomes(outcomes, [len(c) for c in candidates], [len(b) for b in baselines])
        return result, cand, base
