"""Row 12's table: each follower setting against iterative DPO at epsilon 0 and against the soft trim, and the
follower as a detector of wrong self-labels.

Differences are over seeds and prompts (:mod:`.versus`); the family of settings against epsilon 0 gets Holm's
adjustment and an equivalence verdict against :data:`versus.EQUIVALENCE_MARGIN`. The detector's test is exact and
conditional within each seed x round (:func:`sgpo.evaluation.statistics.stratified_exact_test`): a round's base rate
of wrong labels is its own, not a known constant. Round 1's pairs and margins come from the seed's round-0 policy,
which no follower has shaped; round 2's come from a policy the follower trained.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sgpo.evaluation.statistics import equivalence, holm, stratified_exact_test

from experiments import versus
from experiments.rows import Variant
from experiments.store import Results

EPSILON_0 = "iter_dpo"


def attack_rounds(results: Results, name: str, seeds: list[int], round_: int | None = None) -> list[dict[str, Any]]:
    """The attack summaries of row ``name`` on ``seeds`` (of round ``round_`` only, if given), rounds with pairs."""
    entries = [e for s in seeds if (e := results.entry(name, s)) is not None]
    rounds = [r for e in entries for r in e.get("attack", []) if r["pairs"]]
    return [r for r in rounds if round_ is None or r["round"] == round_]


def detector_test(rounds: list[dict[str, Any]]) -> tuple[int, int, int, int, float] | None:
    """Gold-reversed and decided attacked pairs, the same over all pairs, and the exact conditional p-value within
    each seed x round that the attacked pairs are wrong more often; None without decided pairs."""
    strata = [
        (r["gold_disagrees_attacked"], r["decided_attacked"], r["gold_disagrees_all"], r["decided_all"])
        for r in rounds
        if r["decided_all"]
    ]
    wrong, decided = sum(s[0] for s in strata), sum(s[1] for s in strata)
    wrong_all, decided_all = sum(s[2] for s in strata), sum(s[3] for s in strata)
    if not decided or not decided_all:
        return None
    return wrong, decided, wrong_all, decided_all, stratified_exact_test(strata)


def detector(rounds: list[dict[str, Any]]) -> str:
    """How often gold reverses the attacked pairs' self-labels against all the rounds' pairs, in %, with
    :func:`detector_test`'s p-value."""
    test = detector_test(rounds)
    if test is None:
        return "-"
    wrong, decided, wrong_all, decided_all, p = test
    return f"{100 * wrong / decided:.0f} ({wrong}/{decided}) / {100 * wrong_all / decided_all:.0f}, p = {p:.2g}"


def lowest_margins(rounds: list[dict[str, Any]]) -> str:
    """In how many rounds the attacked pairs are exactly the k lowest by the annotator's margin (their highest margin
    percentile is the k-th lowest rank): then the follower's choice is the margin rank's."""
    attacked = [r for r in rounds if 0 < r["attacked"] < r["pairs"]]
    if not attacked:
        return "-"
    same = sum(round(r["attacked_margin_percentile_max"] * (r["pairs"] - 1)) == r["attacked"] - 1 for r in attacked)
    return f"{same} of {len(attacked)}"


def follower_sweep_table(results: Results, chosen: list[Variant], seeds: list[int]) -> str:
    """Row 12: each setting against epsilon 0 (Holm over the settings, equivalence verdict) and the soft trim, where
    the follower's budget went, and the attacked pairs' gold labels over all rounds, round 1 and round 2."""
    lines = [
        "| setting | difference vs eps = 0 [95% CI over seeds and prompts] (per seed) | p, Holm over the settings "
        f"| equivalent to eps = 0 (TOST, ±{versus.EQUIVALENCE_MARGIN}) | difference vs soft trim [95% CI] | KL "
        "| mass moved % | attacked pairs % | attacked pairs' share of the gradient % "
        "| attacked margin percentile (mean / max) | attacked = the k lowest margins (rounds) "
        "| gold reverses the label: attacked / all %, exact p within seed x round: all rounds | round 1 | round 2 "
        "| gradient at the round's start vs eps = 0: attacked / rest | seeds |",
        "|---" * 16 + "|",
    ]
    control = next((v.name for v in chosen if v.name.startswith("soft_trim")), None)
    present = [v for v in chosen if any(results.entry(v.name, s) is not None for s in seeds)]
    intervals = {v.name: versus.seed_interval(results, v.name, EPSILON_0, seeds) for v in present}
    family = [name for name, r in intervals.items() if r is not None]
    adjusted = dict(zip(family, holm([intervals[n].p_value for n in family]), strict=True))
    for v in present:
        found = [e for s in seeds if (e := results.entry(v.name, s)) is not None]
        rounds = attack_rounds(results, v.name, seeds)

        def mean(key: str, scale: float = 100.0, spec: str = ".1f", rounds: list = rounds) -> str:
            values = [r[key] for r in rounds if r.get(key) is not None]
            return format(scale * float(np.mean(values)), spec) if values else "-"

        gap = intervals[v.name]
        share = [100 * r["attacked"] / r["pairs"] for r in rounds]
        cells = [
            v.label,
            versus.cell(results, v.name, EPSILON_0, seeds),
            f"{adjusted[v.name]:.2g}" if v.name in adjusted else "-",
            equivalence(gap, versus.EQUIVALENCE_MARGIN) if gap is not None else "-",
            "-" if control in (None, v.name) else versus.cell(results, v.name, control, seeds, per_seed=False),
            f"{np.mean([e['kl'] for e in found]):.2f}",
            mean("mass_moved"),
            f"{np.mean(share):.1f}" if share else "-",
            mean("attacked_grad_share"),
            f"{mean('attacked_margin_percentile', spec='.0f')} / {mean('attacked_margin_percentile_max', spec='.0f')}",
            lowest_margins(rounds),
            detector(rounds),
            detector(attack_rounds(results, v.name, seeds, 1)),
            detector(attack_rounds(results, v.name, seeds, 2)),
            f"{mean('gradient_ratio_attacked', 1.0, '.2f')} / {mean('gradient_ratio_rest', 1.0, '.2f')}",
            str(len(found)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
