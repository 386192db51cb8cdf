"""Open prompts for the hidden-preference track: a task on a topic, with nothing said about how to answer.

The tasks are :data:`HIDDEN_TEMPLATES` (the verifiable track's twenty plus ten more) applied to the same
:data:`sgpo.evaluation.prompts.TOPICS`. The (template, topic) pairs are split once into train and test by
:data:`HIDDEN_SPLIT_SEED` (1,440 train, 360 test), so held-out evaluation never sees a trained task; a split's prompts
are its tasks in a seeded order, each at most once.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from sgpo.evaluation.prompts import SPLITS, TASK_TEMPLATES, TEST_FRACTION, TOPICS

HIDDEN_TEMPLATES: tuple[str, ...] = TASK_TEMPLATES + (
    "Tell me about {topic}.",
    "What should a beginner know about {topic}?",
    "Write a short introduction to {topic} for a school newsletter.",
    "Why do people find {topic} interesting?",
    "Describe a day in the life of someone who works with {topic}.",
    "Write a short review of a museum exhibition about {topic}.",
    "Explain the basics of {topic}.",
    "Write a short message encouraging a friend to learn about {topic}.",
    "What are the pros and cons of {topic}?",
    "Describe {topic} to someone who has never heard of it.",
)
# fixes which (template, topic) pairs are held out; never change it, or the test prompts leak into training
HIDDEN_SPLIT_SEED = 20260301


def hidden_tasks(split: str) -> list[tuple[int, str]]:
    """The (template index, topic) pairs of ``split`` in the hidden track."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    pairs = [(t, topic) for t in range(len(HIDDEN_TEMPLATES)) for topic in TOPICS]
    order = np.random.default_rng(HIDDEN_SPLIT_SEED).permutation(len(pairs))
    n_test = int(round(TEST_FRACTION * len(pairs)))
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return [pairs[i] for i in sorted(chosen)]


def hidden_prompts(n: int, split: str = "train", seed: int = 0) -> list[str]:
    """The first ``n`` open prompts of ``split`` in the order drawn by ``seed`` (each task once)."""
    tasks = hidden_tasks(split)
    if not isinstance(n, int) or not 0 <= n <= len(tasks):
        raise ValueError(f"n: the hidden {split} split has {len(tasks)} prompts; expected 0..{len(tasks)}, got {n!r}")
    order = np.random.default_rng([seed, SPLITS.index(split), 1]).permutation(len(tasks))
    return [HIDDEN_TEMPLATES[tasks[i][0]].format(topic=tasks[i][1]) for i in order[:n]]


_TOPIC_ALTERNATION = "|".join(re.escape(t) for t in sorted(TOPICS, key=len, reverse=True))
_PATTERNS = tuple(
    re.compile(re.escape(t).replace(re.escape("{topic}"), f"(?P<topic>{_TOPIC_ALTERNATION})") + r"$")
    for t in HIDDEN_TEMPLATES
)


@lru_cache(maxsize=65536)
def hidden_topic(prompt: str) -> str | None:
    """The topic of an open prompt written by :func:`hidden_prompts`, or None for any other text."""
    for pattern in _PATTERNS:
        match = pattern.match(prompt)
        if match is not None:
            return match.group("topic")
    return None
