"""The constraint kinds, the on-task check and the prompt generator of sgpo.evaluation."""

from __future__ import annotations

import json

import pytest
from sgpo.evaluation import CONSTRAINT_KINDS, TASK_TEMPLATES, TOPICS, Constraint, PromptSpec, generate_prompts
from sgpo.evaluation.prompts import SPLITS, parse_prompt, split_tasks

BEES = "Honeybees live in a hive and turn the nectar of flowers into honey for the winter."
LONG = (
    "Honeybees live together in a hive where thousands of workers share the labour. Some of them gather nectar "
    "and pollen from flowers while others guard the entrance or feed the young larvae. The queen lays eggs all "
    "summer long and the drones wait for their chance to mate. In winter the colony clusters around the queen "
    "and eats the honey it stored during the warm months."
)

# kind -> (params, an on-task answer that satisfies it, an on-task answer that violates it)
EXAMPLES: dict[str, tuple[dict, str, str]] = {
    "max_words": ({"n": 30}, BEES, LONG),
    "min_words": ({"n": 40}, LONG, BEES),
    "max_chars": ({"n": 200}, BEES, LONG),
    "max_sentences": ({"n": 2}, BEES, LONG),
    "min_sentences": ({"n": 3}, LONG, BEES),
    "include_word": ({"word": "simple"}, "Keeping honeybees is simple once you understand the hive.", BEES),
    "word_frequency": (
        {"word": "simple", "n": 2},
        "A simple hive and a simple routine keep honeybees healthy.",
        "A simple hive keeps honeybees healthy and calm all year.",
    ),
    "exclude_word": ({"word": "very"}, BEES, "Honeybees are very busy insects that make honey."),
    "bullets": (
        {"n": 3},
        "- Honeybees make honey.\n- They live in a hive.\n- They pollinate flowers.",
        "- Honeybees make honey.\n- They live in a hive.",
    ),
    "numbered": (
        {"n": 2},
        "1. Honeybees make honey in the hive.\n2. They pollinate flowers.",
        "1. Honeybees make honey in the hive.\n2. They pollinate flowers.\n3. They sting.",
    ),
    "paragraphs": ({"n": 2}, "Honeybees make honey.\n\nThey live in a hive with a queen.", BEES),
    "lowercase": ({}, BEES.lower(), BEES),
    "uppercase": ({}, BEES.upper(), BEES),
    "capital_words": ({"n": 2}, "Honeybees are VERY busy and make honey ALL summer.", BEES),
    "starts_with": ({"phrase": "In short"}, "In short, " + BEES, BEES),
    "ends_with": ({"phrase": "That is all"}, BEES + " That is all.", "That is all I know: " + BEES),
    "ends_with_question": ({}, BEES + " Have you ever tasted fresh honey?", BEES),
    "postscript": ({"marker": "P.S."}, BEES + "\n\nP.S. Bees also dance.", "P.S. " + BEES),
    "json": ({}, json.dumps({"answer": BEES}), "answer: " + BEES),
    "no_commas": ({}, BEES, "Honeybees, like wasps, live in a hive and make honey."),
    "no_digits": ({}, BEES, "A hive of honeybees holds up to 60000 bees in summer."),
    "title": ({}, "<<Life in the hive>>\n" + BEES, "Life in the hive\n" + BEES),
    "quoted": ({}, '"' + BEES + '"', BEES),
    "placeholders": ({"n": 2}, "Dear [name], the honeybees at [place] made honey.", BEES),
    "highlights": ({"n": 1}, "Honeybees make *honey* in the hive from nectar.", BEES),
    "letter_frequency": ({"letter": "z", "n": 3}, "Honeybees buzz and buzz and buzz around the hive.", BEES),
}


def _spec(kind: str, params: dict, topic: str = "honeybees") -> PromptSpec:
    fields = CONSTRAINT_KINDS[kind].fields
    return PromptSpec(0, topic, (Constraint(kind, tuple((name, params[name]) for name in fields)),))


def test_there_are_at_least_twenty_kinds_and_fifty_tasks() -> None:
    assert len(CONSTRAINT_KINDS) >= 20
    assert len(TASK_TEMPLATES) * len(TOPICS) >= 50 and len(TOPICS) >= 50 and len(TASK_TEMPLATES) >= 20
    assert set(EXAMPLES) == set(CONSTRAINT_KINDS)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_each_kind_has_a_satisfying_and_a_violating_answer(kind: str) -> None:
    params, good, bad = EXAMPLES[kind]
    spec = _spec(kind, params)
    assert spec.addresses_task(good) and spec.addresses_task(bad)
    assert spec.satisfied(good) == [True]
    assert spec.satisfied(bad) == [False]


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_an_off_task_answer_satisfies_no_kind(kind: str) -> None:
    params, good, _ = EXAMPLES[kind]
    # the same satisfying answer, judged for a prompt on another topic, is off task
    spec = _spec(kind, params, topic="the Roman Empire")
    assert spec.constraints[0].satisfied(good)
    assert spec.satisfied(good) == [False]


def test_gaming_answers_are_off_task() -> None:
    spec = _spec("include_word", {"word": "simple"})
    good = "Keeping honeybees is simple once you understand the hive."
    assert spec.addresses_task(good)
    for gamed in [
        "",
        "   \n ",
        "simple honeybees",
        spec.text,
        "I'm sorry, but I cannot help with honeybees. It is not simple.",
        "As an AI language model I will not write about simple honeybees.",
        " ".join([good] * 12),
        "Rome was a simple empire with many roads and legions across Europe.",
    ]:
        assert not spec.addresses_task(gamed), gamed
        assert spec.satisfied(gamed) == [False]


def test_every_generated_prompt_parses_back_and_keeps_groups_disjoint() -> None:
    seen: set[str] = set()
    for split in SPLITS:
        for spec in generate_prompts(600, split, seed=3):
            assert parse_prompt(spec.text) == spec
            assert 1 <= len(spec.constraints) <= 3
            groups = [CONSTRAINT_KINDS[c.kind].groups for c in spec.constraints]
            assert sum(len(g) for g in groups) == len(set().union(*groups))
            seen.update(c.kind for c in spec.constraints)
    assert seen == set(CONSTRAINT_KINDS)


def test_generation_is_deterministic_and_the_splits_are_disjoint() -> None:
    a = generate_prompts(50, "train", seed=1)
    assert a == generate_prompts(50, "train", seed=1)
    assert a[:20] == generate_prompts(20, "train", seed=1)
    assert [s.text for s in a] != [s.text for s in generate_prompts(50, "train", seed=2)]
    train, test = set(split_tasks("train")), set(split_tasks("test"))
    assert not train & test
    assert len(train) + len(test) == len(TASK_TEMPLATES) * len(TOPICS)
    assert {(s.template, s.topic) for s in generate_prompts(300, "test", seed=0)} <= test
    # small sets visit distinct tasks before any repeats
    assert len({(s.template, s.topic) for s in generate_prompts(len(test), "test", seed=5)}) == len(test)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="split"):
        generate_prompts(3, "validation")
    with pytest.raises(ValueError, match="n"):
        generate_prompts(-1)
    with pytest.raises(ValueError, match="not a prompt"):
        parse_prompt("Tell me a joke.")
