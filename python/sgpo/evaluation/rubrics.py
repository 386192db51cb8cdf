"""Hidden-preference rubrics: gold judges that prefer a property of the response that the prompt never asks for.

A real labeller prefers things no prompt states: a warm tone, concrete facts, an organised layout. Each rubric here
is such a taste written as a formula over countable features of the response alone, so it is the same preference on
every prompt and a policy can learn it from a few labelled pairs. The prompts of this track are the open tasks of
:mod:`sgpo.evaluation.hidden`.

Every rubric shares the verifiable judge's on-task gate (:func:`sgpo.evaluation.constraints.addresses_task`): an
empty, refusing, copied, looping or off-topic answer scores 0, below every on-task answer, which scores
``FLOOR + (1 - FLOOR) * v`` with the rubric's value ``v`` in [0, 1]. Rates are per 100 words of the response, so a
longer answer does not score higher by saying more of the same; ``sat(x) = min(1, x)``.

- ``warmth`` (talks to the reader, with enthusiasm):
  ``v = 0.5 sat(reader / 4) + 0.5 sat(enthusiasm / 3)``, where ``reader`` is the rate of second-person words
  (:data:`READER_WORDS`) and ``enthusiasm`` the rate of positive-affect words (:data:`ENTHUSIASM_WORDS`) plus
  exclamation marks.
- ``concreteness`` (specific facts, not vague claims):
  ``v = 0.4 sat(numbers / 3) + 0.4 sat(names / 5) + 0.2 (1 - sat(hedges / 3))``, where ``numbers`` is the rate of
  words holding a digit, ``names`` the rate of capitalised words that do not start a sentence, and ``hedges`` the rate
  of hedging words (:data:`HEDGE_WORDS`).
- ``structure`` (an organised answer):
  ``v = 0.5 sat((paragraphs - 1) / 2) + 0.5 sat(items / 3)``, where ``paragraphs`` counts blocks separated by blank
  lines (:func:`sgpo.evaluation.constraints.paragraphs`) and ``items`` the lines that start a bullet or numbered item.
  Both are counts, not rates: layout does not grow with length.

On SmolLM2-135M-Instruct's samples of open prompts (the bundled data: 544 train prompts x 4, 48 new tokens) the
features appear in 20% (second person), 20% (enthusiasm), 19% (numbers), 46% (names), 23% (several paragraphs) and
10% (list items) of the answers, so each rubric has something to learn from and room to improve.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from sgpo.evaluation.comparison import WinRate, compare_responses, win_probabilities
from sgpo.evaluation.constraints import addresses_task, paragraphs, words
from sgpo.evaluation.hidden import hidden_topic
from sgpo.evaluation.prompts import TOPICS, parse_prompt

# an on-task answer without any of the rubric's property still beats every off-task one
FLOOR = 0.1
DEFAULT_TEMPERATURE = 0.1

READER_WORDS = frozenset({"you", "your", "yours", "yourself", "yourselves", "you're", "you've", "you'll", "you'd"})
ENTHUSIASM_WORDS = frozenset(
    {
        "love", "loved", "lovely", "wonderful", "amazing", "awesome", "fantastic", "delightful", "delight", "enjoy",
        "enjoying", "fun", "joy", "joyful", "exciting", "excited", "happy", "glad", "beautiful", "brilliant",
        "great", "marvelous", "thrilling", "cheerful", "inspiring",
    }
)  # fmt: skip
HEDGE_WORDS = frozenset(
    {
        "may", "might", "could", "perhaps", "possibly", "probably", "often", "generally", "typically", "usually",
        "somewhat", "various", "numerous", "several", "some", "many", "arguably", "potentially", "likely",
    }
)  # fmt: skip

_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S", re.MULTILINE)
_SENTENCE_START = re.compile(r"(?:^|[.!?:]\s+|\n\s*)([A-Za-z][\w'-]*)")
_STOPWORDS = frozenset(
    "about after again against because before being below between could describe different every explain other "
    "should their there these those through under until where which while would write short someone wants learn "
    "matters today everyone should know common about three might change next fifty years".split()
)


def _rate(count: float, n_words: int) -> float:
    return 100.0 * count / max(n_words, 1)


def _sat(x: float) -> float:
    return min(1.0, max(0.0, x))


def response_features(response: str) -> dict[str, float]:
    """Every feature the rubrics use, measured on the response alone (rates per 100 words)."""
    tokens = words(response)
    lower = [w.lower() for w in tokens]
    n = len(tokens)
    starts = {m.start(1) for m in _SENTENCE_START.finditer(response)}
    names = 0
    for m in re.finditer(r"[A-Za-z0-9]+(?:['\u2019-][A-Za-z0-9]+)*", response):
        w = m.group(0)
        if w[0].isupper() and w not in ("I", "I'm", "I've", "I'll", "I'd") and m.start() not in starts:
            names += 1
    return {
        "words": float(n),
        "reader": _rate(sum(w in READER_WORDS for w in lower), n),
        "enthusiasm": _rate(sum(w in ENTHUSIASM_WORDS for w in lower) + response.count("!"), n),
        "numbers": _rate(sum(any(c.isdigit() for c in w) for w in tokens), n),
        "names": _rate(names, n),
        "hedges": _rate(sum(w in HEDGE_WORDS for w in lower), n),
        "paragraphs": float(len(paragraphs(response))),
        "items": float(len(_ITEM.findall(response))),
    }


def _warmth(f: dict[str, float]) -> float:
    return 0.5 * _sat(f["reader"] / 4) + 0.5 * _sat(f["enthusiasm"] / 3)


def _concreteness(f: dict[str, float]) -> float:
    return 0.4 * _sat(f["numbers"] / 3) + 0.4 * _sat(f["names"] / 5) + 0.2 * (1 - _sat(f["hedges"] / 3))


def _structure(f: dict[str, float]) -> float:
    return 0.5 * _sat((f["paragraphs"] - 1) / 2) + 0.5 * _sat(f["items"] / 3)


RUBRICS: dict[str, Callable[[dict[str, float]], float]] = {
    "warmth": _warmth,
    "concreteness": _concreteness,
    "structure": _structure,
}


@lru_cache(maxsize=65536)
def _topic_keywords(prompt: str) -> tuple[str, ...]:
    """The topic stems an on-task answer mentions: the generator's for its prompts, else the prompt's content words."""
    topic = hidden_topic(prompt)
    if topic is not None:
        return TOPICS[topic]
    try:
        return parse_prompt(prompt).topic_keywords
    except ValueError:
        content = [w.lower() for w in words(prompt) if len(w) >= 5 and w.lower() not in _STOPWORDS]
        return tuple(dict.fromkeys(content))


def prompt_text(prompt: Any) -> str:
    """A prompt's text; a chat message list is judged by its last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise ValueError(f"prompt: expected a string or chat messages with a user turn, got {prompt!r:.80}")
    return users[-1]


def on_task(prompt: Any, response: str) -> bool:
    """The shared gate: non-trivial, not refusing, not copied, not looping, and on the prompt's topic."""
    text = prompt_text(prompt)
    keywords = _topic_keywords(text)
    if not keywords:
        # nothing to check the topic against: every other part of the gate still applies
        return addresses_task(response, text, ("",))
    return addresses_task(response, text, keywords)


@dataclass(frozen=True)
class RubricScore:
    score: float
    on_task: bool
    value: float


class RubricJudge:
    """A hidden-preference gold judge: ``rubric`` is one of :data:`RUBRICS` (see the module docstring).

    ``scores(prompts, responses)`` is what ``sgpo label``, ``sgpo run`` (``judge.name``) and ``sgpo eval --judge``
    call; preferences follow Bradley-Terry on the scores with ``temperature``.
    """

    def __init__(self, rubric: str = "warmth", temperature: float = DEFAULT_TEMPERATURE) -> None:
        if rubric not in RUBRICS:
            raise ValueError(f"rubric: expected one of {', '.join(RUBRICS)}, got {rubric!r}")
        if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
        self.rubric = rubric
        self.name = rubric
        self.temperature = float(temperature)
        self._value = RUBRICS[rubric]

    def judge(self, prompt: Any, response: str) -> RubricScore:
        if not isinstance(response, str):
            raise ValueError(f"response: expected a string, got {type(response).__name__}")
        if not on_task(prompt, response):
            return RubricScore(0.0, False, 0.0)
        value = self._value(response_features(response))
        return RubricScore(FLOOR + (1 - FLOOR) * value, True, value)

    def score(self, prompt: Any, response: str) -> float:
        return self.judge(prompt, response).score

    def scores(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"responses: expected {len(prompts)} (one per prompt), got {len(responses)}")
        return np.array([self.score(p, r) for p, r in zip(prompts, responses, strict=True)], dtype=np.float64)

    def win_probabilities(self, prompt: Any, responses: Sequence[str]) -> np.ndarray:
        """SPPO's ``P_i = (1/K) sum_j sigmoid((s_i - s_j) / temperature)``, ``j = i`` counting 1/2."""
        if len(responses) == 0:
            raise ValueError("responses: expected at least one response, got none")
        return win_probabilities(self.scores([prompt] * len(responses), responses), self.temperature)

    def compare(
        self, prompts: Sequence[Any], candidates: Sequence[str], baselines: Sequence[str]
    ) -> tuple[WinRate, np.ndarray, np.ndarray]:
        """Win rate of ``candidates`` over ``baselines`` on the same prompts, with both score arrays."""
        result = compare_responses(self, prompts, candidates, baselines)
        return result.win, result.candidate_scores, result.baseline_scores


class WarmthJudge(RubricJudge):
    def __init__(self, temperature: float = DEFAULT_TEMPERATURE) -> None:
        super().__init__("warmth", temperature)


class ConcretenessJudge(RubricJudge):
    def __init__(self, temperature: float = DEFAULT_TEMPERATURE) -> None:
        super().__init__("concreteness", temperature)


class StructureJudge(RubricJudge):
    def __init__(self, temperature: float = DEFAULT_TEMPERATURE) -> None:
        super().__init__("structure", temperature)
