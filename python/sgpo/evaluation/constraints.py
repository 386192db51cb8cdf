"""Verifiable constraints (in the spirit of IFEval) and the on-task check every constraint includes.

A constraint kind is an instruction sentence with parameters plus a deterministic checker. A response satisfies a
constraint only if it also *addresses the task* (:func:`addresses_task`): an empty answer, a refusal, a copy of the
prompt, endless repetition or an answer that never mentions the topic satisfies nothing, so a policy cannot raise its
score by gaming the format while ignoring the question.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

_WORD = re.compile(r"[A-Za-z0-9]+(?:['\u2019-][A-Za-z0-9]+)*")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_PARAGRAPH_SPLIT = re.compile(r"\n\s*\n")
_BULLET = re.compile(r"^\s*[-*\u2022]\s+\S", re.MULTILINE)
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+\S", re.MULTILINE)
_REFUSAL = re.compile(
    r"\b(i\s*(?:am|'m)\s*(?:sorry|unable|not able)|i\s*(?:cannot|can't|can\u2019t|won't|will not)"
    r"|as an ai\b|i apologi[sz]e)",
    re.IGNORECASE,
)

# An answer shorter than this cannot address a task; every length bound the generator asks for stays above it.
MIN_TASK_WORDS = 5
# Fraction of the answer's word trigrams that may also occur in the prompt before it counts as a copy of the prompt.
MAX_PROMPT_OVERLAP = 0.5
# Distinct word trigrams / all word trigrams below this is a loop; ordinary prose stays above 0.9.
MIN_DISTINCT_TRIGRAMS = 0.6
# A refusal phrase this close to the start means the answer declines the task.
REFUSAL_WINDOW = 80


def words(text: str) -> list[str]:
    """Words: runs of letters and digits, joined by apostrophes or hyphens."""
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """Sentences: split after ``.``, ``!`` or ``?`` plus space, and at line breaks; wordless parts are dropped."""
    return [part for part in _SENTENCE_SPLIT.split(text.strip()) if _WORD.search(part)]


def paragraphs(text: str) -> list[str]:
    """Paragraphs: blocks separated by a blank line, each holding at least one word."""
    return [part for part in _PARAGRAPH_SPLIT.split(text.strip()) if _WORD.search(part)]


def _trigrams(tokens: list[str]) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]


@lru_cache(maxsize=1024)
def _stem_pattern(topic_keywords: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, topic_keywords)) + ")", re.IGNORECASE)


@lru_cache(maxsize=65536)
def _prompt_trigrams(prompt: str) -> frozenset[tuple[str, ...]]:
    return frozenset(_trigrams([w.lower() for w in words(prompt)]))


def mentions_topic(response: str, topic_keywords: tuple[str, ...]) -> bool:
    """Whether some word of ``response`` starts with one of the topic's keyword stems (case-insensitive)."""
    return _stem_pattern(topic_keywords).search(response) is not None


def addresses_task(response: str, prompt: str, topic_keywords: tuple[str, ...]) -> bool:
    """The on-task check: a non-trivial, non-refusing, non-copied, non-repeating answer that mentions the topic."""
    tokens = [w.lower() for w in words(response)]
    if len(tokens) < MIN_TASK_WORDS:
        return False
    if _REFUSAL.search(response[:REFUSAL_WINDOW]):
        return False
    grams = _trigrams(tokens)
    if grams:
        prompt_grams = _prompt_trigrams(prompt)
        if sum(g in prompt_grams for g in grams) > MAX_PROMPT_OVERLAP * len(grams):
            return False
        if len(grams) >= 10 and len(set(grams)) < MIN_DISTINCT_TRIGRAMS * len(grams):
            return False
    return mentions_topic(response, topic_keywords)


def _strip_fences(text: str) -> str:
    text = text.strip()
    match = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    return match.group(1) if match else text


def _is_json(text: str) -> bool:
    try:
        value = json.loads(_strip_fences(text))
    except ValueError:
        return False
    return isinstance(value, dict | list)


def _count_word(text: str, word: str) -> int:
    return sum(w.lower() == word for w in words(text))


def _lead(text: str) -> str:
    """The answer's start without leading space, quotes or markdown emphasis, lowercased."""
    return text.lstrip(" \t\n\"'*#>").lower()


def _tail(text: str) -> str:
    return text.rstrip(" \t\n\"'*").lower()


@dataclass(frozen=True)
class ConstraintKind:
    """One kind of verifiable constraint.

    ``instruction`` is a format string over ``fields`` (name -> ``int`` or ``str``); ``choices`` lists the values the
    generator draws for each field; ``check(response, **params)`` is the verifier; two kinds sharing a ``group`` are
    never asked together (they would conflict or one would make the other trivial).
    """

    name: str
    instruction: str
    fields: dict[str, type]
    choices: dict[str, tuple[Any, ...]]
    check: Callable[..., bool]
    groups: frozenset[str]

    @property
    def pattern(self) -> re.Pattern[str]:
        return _instruction_pattern(self)

    def render(self, params: dict[str, Any]) -> str:
        return self.instruction.format(**params)

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {name: values[int(rng.integers(len(values)))] for name, values in self.choices.items()}


_PATTERN_CACHE: dict[str, re.Pattern[str]] = {}


def _instruction_pattern(kind: ConstraintKind) -> re.Pattern[str]:
    cached = _PATTERN_CACHE.get(kind.name)
    if cached is None:
        pattern = re.escape(kind.instruction)
        for name, typ in kind.fields.items():
            group = rf"(?P<{name}>\d+)" if typ is int else rf'(?P<{name}>[^"]+?)'
            pattern = pattern.replace(re.escape("{" + name + "}"), group)
        cached = _PATTERN_CACHE[kind.name] = re.compile(pattern)
    return cached


_INCLUDE_WORDS = ("simple", "future", "example", "history", "people", "daily", "reason", "surprising", "balance")
_EXCLUDE_WORDS = ("very", "really", "important", "many", "also", "thing", "things", "great", "lot")
_START_PHRASES = ("In short", "Here is my answer", "Let me explain", "To begin with", "Good question")
_END_PHRASES = ("That is all", "Thank you for reading", "I hope this helps", "See you soon")


def _kinds() -> tuple[ConstraintKind, ...]:
    k = ConstraintKind
    fs = frozenset
    return (
        k("max_words", "Answer in at most {n} words.", {"n": int}, {"n": (30, 40, 50, 60, 80)},
          lambda r, n: len(words(r)) <= n, fs({"length"})),
        k("min_words", "Use at least {n} words.", {"n": int}, {"n": (20, 30, 40, 50)},
          lambda r, n: len(words(r)) >= n, fs({"length"})),
        k("max_chars", "Keep your answer under {n} characters.", {"n": int}, {"n": (200, 300, 400)},
          lambda r, n: len(r.strip()) < n, fs({"length"})),
        k("max_sentences", "Use at most {n} sentences.", {"n": int}, {"n": (2, 3, 4, 5)},
          lambda r, n: len(sentences(r)) <= n, fs({"sentences"})),
        k("min_sentences", "Write at least {n} sentences.", {"n": int}, {"n": (3, 4, 5)},
          lambda r, n: len(sentences(r)) >= n, fs({"sentences"})),
        k("include_word", 'Include the word "{word}".', {"word": str}, {"word": _INCLUDE_WORDS},
          lambda r, word: _count_word(r, word) >= 1, fs({"include"})),
        k("word_frequency", 'Use the word "{word}" at least {n} times.', {"word": str, "n": int},
          {"word": _INCLUDE_WORDS, "n": (2, 3)}, lambda r, word, n: _count_word(r, word) >= n, fs({"include"})),
        k("exclude_word", 'Do not use the word "{word}".', {"word": str}, {"word": _EXCLUDE_WORDS},
          lambda r, word: _count_word(r, word) == 0, fs({"exclude"})),
        k("bullets", 'Answer with exactly {n} bullet points, each on its own line starting with "- ".',
          {"n": int}, {"n": (2, 3, 4, 5)}, lambda r, n: len(_BULLET.findall(r)) == n,
          fs({"layout", "sentences"})),
        k("numbered", "Answer with exactly {n} numbered items (1., 2., ...), one per line.", {"n": int},
          {"n": (2, 3, 4)}, lambda r, n: len(_NUMBERED.findall(r)) == n, fs({"layout", "sentences", "digits"})),
        k("paragraphs", "Write exactly {n} paragraphs separated by blank lines.", {"n": int}, {"n": (2, 3)},
          lambda r, n: len(paragraphs(r)) == n, fs({"layout", "sentences"})),
        k("lowercase", "Write your whole answer in lowercase letters only.", {}, {},
          lambda r: r == r.lower() and any(c.isalpha() for c in r), fs({"case"})),
        k("uppercase", "Write your whole answer in capital letters only.", {}, {},
          lambda r: r == r.upper() and any(c.isalpha() for c in r), fs({"case"})),
        k("capital_words", "Write at least {n} words in all capital letters for emphasis.", {"n": int},
          {"n": (2, 3)}, lambda r, n: sum(len(w) > 1 and w.isupper() for w in words(r)) >= n, fs({"case"})),
        k("starts_with", 'Start your answer with the phrase "{phrase}".', {"phrase": str}, {"phrase": _START_PHRASES},
          lambda r, phrase: _lead(r).startswith(phrase.lower()), fs({"start"})),
        k("ends_with", 'End your answer with the exact phrase "{phrase}".', {"phrase": str}, {"phrase": _END_PHRASES},
          lambda r, phrase: _tail(r).rstrip(".!?").endswith(phrase.lower()), fs({"end"})),
        k("ends_with_question", "Finish your answer with a question.", {}, {},
          lambda r: _tail(r).endswith("?"), fs({"end"})),
        k("postscript", 'At the end, add a postscript starting with "{marker}".', {"marker": str},
          {"marker": ("P.S.", "P.P.S.")},
          lambda r, marker: re.search(r"\S[\s\S]*\n\s*" + re.escape(marker) + r"\s*\S", r) is not None,
          fs({"end"})),
        k("json", "Format your whole answer as valid JSON.", {}, {}, _is_json,
          fs({"start", "end", "layout", "commas", "title", "quote"})),
        k("no_commas", "Do not use any commas.", {}, {}, lambda r: "," not in r, fs({"commas"})),
        k("no_digits", "Do not use any digits.", {}, {}, lambda r: not any(c.isdigit() for c in r), fs({"digits"})),
        k("title", "Give your answer a title wrapped in double angular brackets, such as <<my title>>.", {}, {},
          lambda r: re.search(r"<<[^<>\n]+>>", r) is not None, fs({"title"})),
        k("quoted", "Wrap your whole answer in double quotation marks.", {}, {},
          lambda r: len(r.strip()) > 2 and r.strip()[0] in "\"\u201c" and r.strip()[-1] in "\"\u201d",
          fs({"start", "end", "quote"})),
        k("placeholders", "Include at least {n} placeholders in square brackets, such as [name].", {"n": int},
          {"n": (1, 2, 3)}, lambda r, n: len(re.findall(r"\[[^\[\]\n]+\]", r)) >= n, fs({"placeholders"})),
        k("highlights", "Highlight at least {n} parts of your answer with markdown, such as *highlighted part*.",
          {"n": int}, {"n": (1, 2, 3)}, lambda r, n: len(re.findall(r"\*[^*\n]+\*", r)) >= n, fs({"highlights"})),
        k("letter_frequency", 'Use the letter "{letter}" at least {n} times.', {"letter": str, "n": int},
          {"letter": ("z", "q", "x", "j", "k", "v"), "n": (3, 5)},
          lambda r, letter, n: r.lower().count(letter) >= n, fs({"letters"})),
    )  # fmt: skip


CONSTRAINT_KINDS: dict[str, ConstraintKind] = {kind.name: kind for kind in _kinds()}


@dataclass(frozen=True)
class Constraint:
    """A constraint kind with its parameters."""

    kind: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def spec(self) -> ConstraintKind:
        return CONSTRAINT_KINDS[self.kind]

    def instruction(self) -> str:
        return self.spec.render(dict(self.params))

    def satisfied(self, response: str) -> bool:
        """The kind's own check, without the on-task part (see :meth:`PromptSpec.satisfied`)."""
        return bool(self.spec.check(response, **dict(self.params)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dict(self.params)}
