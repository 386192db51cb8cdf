"""``VerifiableJudge``: an exact, deterministic, offline judge for the prompts of :mod:`sgpo.evaluation.prompts`.

What it computes, exactly:

- **score** ``s(x, y)`` = (number of constraints of prompt ``x`` that response ``y`` satisfies) / (number of
  constraints), where a constraint counts as satisfied only if ``y`` also addresses the task
  (:func:`sgpo.evaluation.constraints.addresses_task`). ``s`` lies in [0, 1].
- **preference probability** ``P(a > b | x) = sigmoid((s(x, a) - s(x, b)) / temperature)``; exactly 1/2 on equal
  scores; with ``temperature=0`` it is 1, 1/2 or 0.
- **SPPO win probabilities** of K responses to one prompt: ``P_i = (1/K) sum_j P(y_i > y_j)`` with ``j = i`` counting
  1/2 (DESIGN 1.4).
- **win rate** and **length-controlled win rate** of candidates against baselines on the same prompts:
  :mod:`sgpo.evaluation.comparison`, which every judge shares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sgpo.evaluation.comparison import (
    WinRate,
    check_same_length,
    compare_responses,
    preference_probabilities,
    win_probabilities,
)
from sgpo.evaluation.prompts import PromptSpec, parse_prompt

DEFAULT_TEMPERATURE = 0.1


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
        check_same_length(prompts=prompts, responses=responses)
        return np.array([self.score(p, r) for p, r in zip(prompts, responses, strict=True)], dtype=np.float64)

    def preference_probs(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> np.ndarray:
        """``P(a_i > b_i | x_i)`` for each i (module docstring)."""
        check_same_length(prompts=prompts, responses_a=responses_a, responses_b=responses_b)
        diff = self.scores(prompts, responses_a) - self.scores(prompts, responses_b)
        return preference_probabilities(diff, self.temperature)

    def preference(self, prompt: str, response_a: str, response_b: str) -> float:
        return float(self.preference_probs([prompt], [response_a], [response_b])[0])

    def win_probabilities(self, prompt: str, responses: Sequence[str]) -> np.ndarray:
        """SPPO's ``P_i = (1/K) sum_j P(y_i > y_j)`` over the K responses to one prompt, ``j = i`` counting 1/2."""
        if len(responses) == 0:
            raise ValueError("responses: expected at least one response, got none")
        return win_probabilities(self.scores([prompt] * len(responses), responses), self.temperature)

    def compare(
        self, prompts: Sequence[str], candidates: Sequence[str], baselines: Sequence[str]
    ) -> tuple[WinRate, np.ndarray, np.ndarray]:
        """Win rate of ``candidates`` over ``baselines`` on the same prompts, with both score arrays."""
        result = compare_responses(self, prompts, candidates, baselines)
        return result.win, result.candidate_scores, result.baseline_scores
