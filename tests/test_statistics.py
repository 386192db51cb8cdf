"""Paired statistics: the bootstrap interval on known cases, win rates, annotator agreement, length debiasing."""

from __future__ import annotations

import numpy as np
import pytest
from sgpo.evaluation.statistics import agreement, bootstrap_mean, paired_comparison
from sgpo.pipeline.annotator import implicit_reward_agreement, round_agreement
from sgpo.pipeline.judges import ImplicitRewardJudge, JudgeContext, length_debias_alpha


def test_bootstrap_interval_of_a_known_mean() -> None:
    # +-1 with equal counts: mean 0, standard error 1/sqrt(n) = 0.05; the 95% interval is about +-1.96 se
    values = np.array([1.0, -1.0] * 200)
    interval = bootstrap_mean(values)
    assert interval.mean == 0.0
    assert interval.low == pytest.approx(-0.098, abs=0.012) and interval.high == pytest.approx(0.098, abs=0.012)
    assert not interval.excludes_zero()
    shifted = bootstrap_mean(values + 0.3)
    assert shifted.excludes_zero() and shifted.low == pytest.approx(interval.low + 0.3)
    constant = bootstrap_mean(np.full(10, 0.25))
    assert (constant.low, constant.mean, constant.high) == (0.25, 0.25, 0.25)
    assert bootstrap_mean(values, seed=1) != bootstrap_mean(values, seed=2)
    assert bootstrap_mean(values) == bootstrap_mean(values)


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="values: expected a non-empty 1-D"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="values: expected finite"):
        bootstrap_mean([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean([1.0], level=1.0)


def test_paired_comparison_counts_wins_ties_and_losses() -> None:
    model = np.array([0.9, 0.5, 0.1, 0.7])
    base = np.array([0.1, 0.5, 0.3, 0.2])
    c = paired_comparison(model, base)
    assert c.n == 4 and c.mean_score == pytest.approx(0.55) and c.baseline_mean_score == pytest.approx(0.275)
    assert c.win_rate.mean == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert c.difference.mean == pytest.approx(0.275)
    assert c.difference.low <= c.difference.mean <= c.difference.high
    with pytest.raises(ValueError, match="candidate, baseline"):
        paired_comparison(model, base[:3])


def test_agreement_with_gold_labels_and_gold_scores() -> None:
    a = agreement([2.0, 1.0, 0.0, 1.0], [1.0, 2.0, 0.0, 0.0])
    # agrees, disagrees, ties (1/2), agrees
    assert a.agreement == pytest.approx(2.5 / 4) and a.pairs == 4 and a.ties == 0
    g = agreement([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], gold_chosen=[1.0, 0.0, 0.5], gold_rejected=[0.0, 1.0, 0.5])
    assert g.agreement == 0.5 and g.pairs == 2 and g.ties == 1
    assert agreement([1.0], [0.0], [0.3], [0.3]).agreement is None


def test_round_agreement_asks_the_gold_judge_only_about_prompts_it_can_score() -> None:
    from sgpo.evaluation import PromptSpec, VerifiableJudge

    prompt = PromptSpec(1, "honeybees", ()).text
    on, off = "Honeybees make honey in the hive.", "The roman empire built roads."
    pairs = [
        {"prompt": prompt, "chosen": on, "rejected": off},
        {"prompt": prompt, "chosen": off, "rejected": on},
        {"prompt": prompt, "chosen": on, "rejected": on + " Yes."},
        # a prompt the verifiable judge cannot read: left out, not an error
        {"prompt": "Describe apples in the style of gardens.", "chosen": "Apples.", "rejected": "no"},
    ]
    judge = VerifiableJudge()
    measured = round_agreement(judge, pairs)
    assert measured is not None
    assert measured.agreement == 0.5 and measured.pairs == 2 and measured.ties == 1
    assert round_agreement(judge, pairs[3:]) is None
    with pytest.raises(ValueError, match="no task template matches"):
        judge.scores([pairs[3]["prompt"]], ["Apples."])


def test_length_debias_alpha_balances_chosen_and_rejected_lengths() -> None:
    rng = np.random.default_rng(0)
    dl = rng.integers(-30, 30, size=400).astype(float)
    # an annotator that mostly prefers length: dr = 0.2 * dl + noise
    dr = 0.2 * dl + rng.normal(scale=1.0, size=400)
    assert np.mean(np.sign(dr) * dl) > 5
    alpha = length_debias_alpha(dr, dl)
    gap = np.mean(np.sign(dr - alpha * dl) * dl)
    # balanced up to one breakpoint's pair: every other alpha leaves a larger imbalance
    assert abs(gap) <= np.abs(dl).max() / len(dl)
    assert alpha == pytest.approx(0.2, abs=0.03)
    assert length_debias_alpha(np.array([1.0, -1.0]), np.zeros(2)) == 0.0


def test_length_debiased_annotator_on_a_constructed_case() -> None:
    # the true preference is the token "good", half the time on the shorter response and half on the longer; the
    # trained policy also likes length, so the summed log-ratio picks the longer response of every pair (50%
    # agreement); fitting alpha so that chosen and rejected lengths balance recovers the preference
    responses = []
    for i in range(40):
        good, bad = ("good " * 2, "bad " * 10) if i % 4 < 2 else ("good " * 10, "bad " * 2)
        responses.append((good, bad) if i % 2 else (bad, good))
    flat = [r for pair in responses for r in pair]
    lengths = np.array([len(r.split()) for r in flat], dtype=float)
    ratio = np.array([0.5 * len(r.split()) + (2.0 if "good" in r else 0.0) for r in flat])
    context = JudgeContext(
        policy_logps=lambda p, r: ratio[list(p)], sft_logps=lambda p, r: np.zeros(len(p)), beta=0.1,
        lengths=lambda p, r: lengths[list(p)],
    )  # fmt: skip
    summed = ImplicitRewardJudge(context, "sum")
    debiased = ImplicitRewardJudge(context, "length_debiased")
    indices = list(range(len(flat)))
    raw = summed.scores(indices, flat)
    groups = [raw[2 * i : 2 * i + 2] for i in range(40)]
    sizes = [lengths[2 * i : 2 * i + 2] for i in range(40)]
    picks_summed = [int(np.argmax(g)) for g in groups]
    picks_debiased = [int(np.argmax(g)) for g in debiased.calibrate(groups, sizes)]
    good = [0 if "good" in pair[0] else 1 for pair in responses]
    assert np.mean(np.array(picks_summed) == good) == 0.5
    assert np.mean(np.array(picks_debiased) == good) == 1.0
    # any alpha strictly between the two kinds of pairs' breakpoints (0.25 and 0.75) separates them
    assert 0.25 < debiased.alpha < 0.75
    # the same fit from precomputed gold-pair log-probs (chosen = "good")
    chosen = np.array([flat[2 * i + g] for i, g in enumerate(good)])
    rejected = np.array([flat[2 * i + 1 - g] for i, g in enumerate(good)])
    logp = np.array([[0.5 * len(r.split()) + 2.0 * ("good" in r) for r in side] for side in (chosen, rejected)])
    size = np.array([[len(r.split()) for r in side] for side in (chosen, rejected)], dtype=float)
    found = implicit_reward_agreement(logp, np.zeros_like(logp), size)
    assert found["sum"]["agreement"] == 0.5 and found["length_debiased"]["agreement"] == 1.0
    # per-token mean: 0.5 + 2 / length for "good ..." against 0.5 for "bad ...": the mean agrees too
    assert found["mean"]["agreement"] == 1.0


def test_implicit_reward_options_are_checked() -> None:
    context = JudgeContext(policy_logps=lambda p, r: np.zeros(len(p)), sft_logps=lambda p, r: np.zeros(len(p)), beta=1)
    with pytest.raises(ValueError, match="judge.options.reward: expected one of sum, mean, length_debiased"):
        ImplicitRewardJudge(context, "median")
    with pytest.raises(ValueError, match="judge.options.reward: 'mean' needs response lengths"):
        ImplicitRewardJudge(context, "mean")


def test_on_task_gate_ranks_failing_answers_last() -> None:
    from sgpo.pipeline.annotator import heldout_agreement
    from sgpo.pipeline.judges import choose_pair

    # without flags: the highest and the lowest value, ties keeping the earlier sample
    assert choose_pair(np.array([1.0, 3.0, 3.0, -2.0])) == (1, 3)
    # the best admissible sample against the worst inadmissible one, whatever their values
    assert choose_pair(np.array([5.0, 1.0, 2.0, -1.0]), np.array([False, True, True, True])) == (2, 0)
    assert choose_pair(np.array([5.0, 1.0, 2.0]), np.array([True, True, True])) == (0, 1)
    with pytest.raises(ValueError, match="admissible: expected one flag per value"):
        choose_pair(np.zeros(3), np.ones(2, dtype=bool))

    prompt = "Tell me about coffee."
    on = "Coffee is brewed from roasted beans, and many people drink a cup of coffee every morning."
    off = "\n\nBicycles have two wheels.\n\n- pedals\n- chains\n- brakes"
    # a policy that learned to like layout scores the off-topic list above the on-topic answer
    logps = {on: -30.0, off: -10.0}
    context = JudgeContext(
        policy_logps=lambda p, r: np.array([logps[x] for x in r]), sft_logps=lambda p, r: np.full(len(r), -20.0),
        beta=0.1,
    )  # fmt: skip
    pairs = [{"prompt": prompt, "chosen": on, "rejected": off}]
    assert heldout_agreement(ImplicitRewardJudge(context), pairs).agreement == 0.0
    gated = ImplicitRewardJudge(context, gate="on_task")
    assert gated.admissible([prompt, prompt], [on, off]).tolist() == [True, False]
    assert ImplicitRewardJudge(context).admissible([prompt], [on]) is None
    assert heldout_agreement(gated, pairs).agreement == 1.0
    # where the gate does not separate the two, the reward decides
    other = "Coffee beans grow in warm places; coffee farmers pick the cherries by hand in the hills."
    logps[other] = -5.0
    assert heldout_agreement(gated, [{"prompt": prompt, "chosen": on, "rejected": other}]).agreement == 0.0
    with pytest.raises(ValueError, match="judge.options.gate: expected one of none, on_task, got 'strict'"):
        ImplicitRewardJudge(context, gate="strict")
    # the same from precomputed log-probs: every variant, ungated and gated
    found = implicit_reward_agreement(
        np.array([[-30.0, -30.0], [-10.0, -5.0]]), np.full((2, 2), -20.0), np.full((2, 2), 20.0),
        np.array([[True, True], [False, True]]),
    )  # fmt: skip
    assert found["sum"]["agreement"] == 0.0 and found["mean"]["agreement"] == 0.0
    assert found["sum+gate"]["agreement"] == 0.5 and found["length_debiased+gate"]["pairs"] == 2
    with pytest.raises(ValueError, match="admissible: expected shape"):
        implicit_reward_agreement(np.zeros((2, 2)), np.zeros((2, 2)), np.ones((2, 2)), np.ones((2, 3), dtype=bool))


def simulate(rng: np.random.Generator, seeds: int, prompts: int, sd_seed: float, sd_prompt: float, sd_noise: float):
    """Paired differences from the crossed seed x prompt model with true mean 0."""
    return (
        sd_seed * rng.standard_normal((seeds, 1))
        + sd_prompt * rng.standard_normal((1, prompts))
        + sd_noise * rng.standard_normal((seeds, prompts))
    )


def test_seed_level_interval_covers_where_the_pooled_bootstrap_does_not() -> None:
    from sgpo.evaluation.statistics import seed_prompt_interval

    rng = np.random.default_rng(1)
    trials = 300
    # the hidden track's scale: seed spread 0.04 against a prompt-level standard error near 0.01
    pooled = seed_level = 0
    for trial in range(trials):
        d = simulate(rng, 3, 128, 0.04, 0.1, 0.15)
        b = bootstrap_mean(d.ravel(), samples=200, seed=trial)
        r = seed_prompt_interval(d)
        pooled += b.low <= 0 <= b.high
        seed_level += r.low <= 0 <= r.high
    assert pooled / trials < 0.6
    assert 0.91 <= seed_level / trials <= 0.99


def test_seed_level_interval_keeps_coverage_when_prompts_dominate() -> None:
    from sgpo.evaluation.statistics import seed_prompt_interval

    rng = np.random.default_rng(2)
    covered = [seed_prompt_interval(simulate(rng, 5, 64, 0.0, 0.3, 0.1)) for _ in range(300)]
    assert 0.91 <= np.mean([r.low <= 0 <= r.high for r in covered]) <= 0.99
    # the shared prompts' effect is in the interval: without it, the seeds' means alone would nearly agree
    assert np.median([r.df for r in covered]) > 4


def test_seed_level_interval_is_the_t_interval_over_seed_means_without_a_prompt_effect() -> None:
    from scipy import stats
    from sgpo.evaluation.statistics import seed_prompt_interval

    # each seed a constant difference: no prompt variance, so the interval is the t interval over the seed means
    d = np.repeat(np.array([[0.1], [0.2], [0.6]]), 10, axis=1)
    r = seed_prompt_interval(d)
    means = d.mean(axis=1)
    half = stats.t.ppf(0.975, 2) * means.std(ddof=1) / np.sqrt(3)
    assert (r.mean, r.df, r.seeds, r.prompts) == (pytest.approx(0.3), pytest.approx(2.0), 3, 10)
    assert (r.low, r.high) == (pytest.approx(0.3 - half), pytest.approx(0.3 + half))
    assert r.p_value == pytest.approx(2 * stats.t.sf(0.3 / (means.std(ddof=1) / np.sqrt(3)), 2))
    # identical differences everywhere: a point, not an error
    flat = seed_prompt_interval(np.full((3, 4), 0.25))
    assert (flat.low, flat.high, flat.stderr) == (0.25, 0.25, 0.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((1, 5)), "at least 2 seeds"),
        (np.zeros(5), "shape \\(5,\\)"),
        (np.array([[0.0, np.nan], [0.0, 1.0]]), "finite"),
    ],
)
def test_seed_level_interval_rejects_bad_input(value: np.ndarray, message: str) -> None:
    from sgpo.evaluation.statistics import seed_prompt_interval

    with pytest.raises(ValueError, match=f"differences: .*{message}"):
        seed_prompt_interval(value)
    with pytest.raises(ValueError, match="level: expected a number in \\(0, 1\\), got 1.5"):
        seed_prompt_interval(np.zeros((2, 2)), level=1.5)


def test_equivalence_verdicts() -> None:
    from sgpo.evaluation.statistics import SeedPromptInterval, equivalence

    def cell(mean: float, stderr: float) -> SeedPromptInterval:
        return SeedPromptInterval(mean, mean - 2 * stderr, mean + 2 * stderr, stderr=stderr, df=1e9)

    assert equivalence(cell(0.001, 0.005), 0.02) == "equivalent"
    assert equivalence(cell(0.05, 0.005), 0.02) == "not equivalent"
    assert equivalence(cell(-0.05, 0.005), 0.02) == "not equivalent"
    # a zero difference measured too loosely to rule out the margin
    assert equivalence(cell(0.0, 0.02), 0.02) == "inconclusive"
    with pytest.raises(ValueError, match="margin: expected a number > 0, got -0.02"):
        equivalence(cell(0.0, 0.01), -0.02)


def test_holm_matches_the_step_down_by_hand() -> None:
    from sgpo.evaluation.statistics import holm

    # sorted 0.01, 0.02, 0.04, 0.5: x4, x3, x2, x1, then running maxima
    assert holm([0.04, 0.01, 0.5, 0.02]) == pytest.approx([0.08, 0.04, 0.5, 0.06])
    assert holm([0.3, 0.9]) == pytest.approx([0.6, 0.9])
    assert holm([]) == []
    with pytest.raises(ValueError, match="p_values: expected a 1-D sequence of numbers in \\[0, 1\\]"):
        holm([0.1, 1.2])


def test_stratified_exact_test_is_fishers_test_on_one_stratum_and_exact_on_several() -> None:
    from itertools import combinations

    from scipy.stats import fisher_exact
    from sgpo.evaluation.statistics import stratified_exact_test

    # one stratum: 7 of 10 flagged are bad, 20 bad of 50
    p = stratified_exact_test([(7, 10, 20, 50)])
    assert p == pytest.approx(fisher_exact([[7, 3], [13, 27]], alternative="greater")[1])
    # two small strata, by enumerating every flagged set
    strata = [(2, 2, 2, 5), (1, 2, 1, 4)]
    totals = []
    for a in combinations(range(5), 2):
        for b in combinations(range(4), 2):
            totals.append(sum(i < 2 for i in a) + sum(i < 1 for i in b))
    assert stratified_exact_test(strata) == pytest.approx(np.mean(np.array(totals) >= 3))
    # a stratum without flagged items adds nothing
    assert stratified_exact_test([*strata, (0, 0, 3, 9)]) == pytest.approx(stratified_exact_test(strata))
    with pytest.raises(ValueError, match="strata: expected \\(bad_flagged, flagged, bad, total\\).*\\(5, 3, 4, 9\\)"):
        stratified_exact_test([(5, 3, 4, 9)])
    with pytest.raises(ValueError, match="strata: expected at least one"):
        stratified_exact_test([])
