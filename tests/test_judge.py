"""VerifiableJudge: scores, gaming resistance, preference probabilities, win rate and length-controlled win rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sgpo.evaluation import Constraint, PromptSpec, VerifiableJudge, generate_prompts, win_rate_from_outcomes
from sgpo.evaluation.comparison import fit_length_logistic

PROMPT = PromptSpec(1, "honeybees", (Constraint("include_word", (("word", "simple"),)), Constraint("lowercase"))).text
GOOD = "keeping honeybees is simple: give the hive shelter, water and flowers nearby."
HALF = "Keeping honeybees is simple: give the hive shelter, water and flowers nearby."


def test_score_is_the_fraction_of_constraints_met() -> None:
    judge = VerifiableJudge()
    assert judge.score(PROMPT, GOOD) == 1.0
    assert judge.score(PROMPT, HALF) == 0.5
    assert judge.score(PROMPT, "honeybees make honey in the hive all summer long.") == 0.5
    assert judge.score(PROMPT, "Honeybees make honey in the hive all summer long.") == 0.0


@pytest.mark.parametrize(
    "gamed",
    [
        "",
        PROMPT,
        PROMPT.lower(),
        "i'm sorry, but i cannot write about honeybees. it is not simple.",
        " ".join([GOOD] * 20),
        "the simple roman empire built roads and aqueducts across europe.",
    ],
    ids=["empty", "prompt", "prompt-lowercased", "refusal", "repetition", "off-topic"],
)
def test_gaming_answers_score_below_a_plain_on_task_answer(gamed: str) -> None:
    judge = VerifiableJudge()
    assert judge.score(PROMPT, gamed) < judge.score(PROMPT, GOOD)
    assert judge.score(PROMPT, gamed) == 0.0


def test_copies_refusals_and_empty_answers_score_zero_on_every_generated_prompt() -> None:
    judge = VerifiableJudge()
    for spec in generate_prompts(150, "test", seed=7):
        for gamed in ("", spec.text, "I'm sorry, I can't help with " + spec.topic + ".", spec.text * 3):
            assert judge.score(spec.text, gamed) == 0.0, (spec.text, gamed)


def test_preference_probabilities() -> None:
    judge = VerifiableJudge(temperature=0.1)
    p = judge.preference(PROMPT, GOOD, HALF)
    assert p == pytest.approx(1 / (1 + math.exp(-0.5 / 0.1)))
    assert judge.preference(PROMPT, HALF, GOOD) == pytest.approx(1 - p)
    assert judge.preference(PROMPT, GOOD, GOOD) == 0.5
    hard = VerifiableJudge(temperature=0)
    probs = hard.preference_probs([PROMPT] * 3, [GOOD, HALF, GOOD], [HALF, GOOD, GOOD])
    np.testing.assert_array_equal(probs, [1.0, 0.0, 0.5])


def test_sppo_win_probabilities_average_one_half() -> None:
    judge = VerifiableJudge()
    responses = [GOOD, HALF, "", GOOD, "honeybees make honey in the hive all summer."]
    win = judge.win_probabilities(PROMPT, responses)
    assert win.sum() == pytest.approx(len(responses) / 2)
    assert win[0] == win[3] and win[0] > win[1] > win[2]
    single = judge.win_probabilities(PROMPT, [GOOD])
    assert single.tolist() == [0.5]


def test_win_rate_counts_ties_as_half() -> None:
    judge = VerifiableJudge()
    result, cand, base = judge.compare([PROMPT] * 4, [GOOD, GOOD, HALF, ""], [HALF, GOOD, GOOD, ""])
    assert (result.wins, result.ties, result.losses) == (1, 2, 1)
    assert result.win_rate == 0.5
    np.testing.assert_array_equal(cand, [1.0, 1.0, 0.5, 0.0])
    np.testing.assert_array_equal(base, [0.5, 1.0, 1.0, 0.0])


def test_lc_equals_win_rate_when_lengths_do_not_differ() -> None:
    rng = np.random.default_rng(0)
    outcomes = rng.choice([0.0, 0.5, 1.0], size=300, p=[0.2, 0.3, 0.5])
    lengths = np.full(300, 120)
    result = win_rate_from_outcomes(outcomes, lengths, lengths)
    assert result.lc_win_rate == pytest.approx(outcomes.mean(), abs=1e-9)
    # a constant length offset carries no information either
    shifted = win_rate_from_outcomes(outcomes, lengths + 40, lengths)
    assert shifted.lc_win_rate == pytest.approx(outcomes.mean(), abs=1e-9)


def test_lc_is_antisymmetric() -> None:
    rng = np.random.default_rng(1)
    outcomes = rng.choice([0.0, 0.5, 1.0], size=200)
    cand, base = rng.integers(50, 500, size=200), rng.integers(50, 500, size=200)
    forward = win_rate_from_outcomes(outcomes, cand, base)
    backward = win_rate_from_outcomes(1 - outcomes, base, cand)
    assert forward.lc_win_rate == pytest.approx(1 - backward.lc_win_rate, abs=1e-9)
    assert forward.win_rate == pytest.approx(1 - backward.win_rate)


@pytest.mark.parametrize("intercept", [0.0, 1.0, -0.7])
def test_lc_recovers_the_length_free_win_rate_of_a_known_model(intercept: float) -> None:
    # outcomes drawn from logit P(win) = intercept + 3 z with candidates mostly longer: the raw win rate is inflated
    # by length, the LC win rate must come back to sigmoid(intercept)
    rng = np.random.default_rng(2)
    n = 6000
    d = rng.normal(150.0, 150.0, size=n)
    z = np.tanh(d / d.std())
    wins = rng.random(n) < 1 / (1 + np.exp(-(intercept + 3.0 * z)))
    base = np.full(n, 400)
    result = win_rate_from_outcomes(wins.astype(float), base + d, base)
    truth = 1 / (1 + math.exp(-intercept))
    assert result.win_rate > truth + 0.1
    assert result.lc_win_rate == pytest.approx(truth, abs=0.03)
    assert result.length_slope == pytest.approx(3.0, rel=0.15)


def test_lc_of_all_wins_is_one() -> None:
    result = win_rate_from_outcomes([1.0] * 5, [10, 20, 30, 40, 50], [5] * 5)
    assert result.win_rate == 1.0 and result.lc_win_rate == 1.0


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="temperature"):
        VerifiableJudge(temperature=-1)
    judge = VerifiableJudge()
    with pytest.raises(ValueError, match="same length"):
        judge.scores([PROMPT, PROMPT], [GOOD])
    with pytest.raises(ValueError, match="not a prompt"):
        judge.score("What is 2 + 2?", "4")
    with pytest.raises(ValueError, match="response"):
        judge.score(PROMPT, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outcomes"):
        win_rate_from_outcomes([], [], [])
    with pytest.raises(ValueError, match="outcomes"):
        fit_length_logistic(np.array([0.0, 2.0]), np.array([1.0, 2.0]))


def test_bundled_gold_labels_agree_with_the_judge() -> None:
    import json
    from importlib import resources

    from sgpo.evaluation.prompts import parse_prompt, split_tasks

    data = resources.files("sgpo") / "data"

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (data / name).read_text().splitlines() if line.strip()]

    judge = VerifiableJudge()
    pool = rows("gold_pool.jsonl")
    seed = rows("default_seed_pairs.jsonl")
    # the seed is drawn from the round-0 pool; rounds 1.. label prompts the self-annotating runs see unlabelled
    assert seed and all(pair in pool and pair["round"] == 0 for pair in seed)
    round_prompts = rows("default_prompts.jsonl")
    for pair in pool:
        if pair["round"] > 0:
            assert {"round": pair["round"], "prompt": pair["prompt"]} in round_prompts
    for pair in pool:
        assert judge.score(pair["prompt"], pair["chosen"]) == pair["chosen_score"]
        assert judge.score(pair["prompt"], pair["rejected"]) == pair["rejected_score"]
        assert pair["chosen_score"] > pair["rejected_score"]
    test = [r["prompt"] for r in rows("prompts_test.jsonl")]
    assert test == [s.text for s in generate_prompts(len(test), "test", seed=0)]
    train_tasks = set(split_tasks("train"))
    for prompt in [p["prompt"] for p in pool] + [r["prompt"] for r in rows("default_prompts.jsonl")]:
        spec = parse_prompt(prompt)
        assert (spec.template, spec.topic) in train_tasks
