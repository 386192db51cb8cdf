"""One method against another over the table's seeds and prompts: the cells, p-values and verdicts of the tables.

A cell with two or more seeds gives the seed x prompt random-effects interval
(:func:`sgpo.evaluation.statistics.seed_prompt_interval`): an interval for the method, whose width counts the
training seeds' spread. A cell with one seed can only give the prompt-level bootstrap of that one trained model, and
says so. "No effect" is a claim of its own: an equivalence test (TOST) against :data:`EQUIVALENCE_MARGIN`, fixed
before the five-seed runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sgpo.evaluation.statistics import SeedPromptInterval, bootstrap_mean, equivalence, seed_prompt_interval

from experiments.store import Results, eval_scores

# the equivalence margin on the structure score: a difference inside +-0.02 counts as no effect
EQUIVALENCE_MARGIN = 0.02
SIGNIFICANCE = 0.05


def scores(results: Results, name: str, seed: int) -> np.ndarray | None:
    """Per-prompt gold scores of row ``name`` on ``seed``; ``"initial"`` is the initial model (one for every seed)."""
    if name != "initial":
        return results.scores(name, seed)
    return None if results.evaluations is None else eval_scores(results.evaluations / "initial" / "eval.json")


def differences(results: Results, name: str, reference: str, seeds: list[int]) -> dict[int, np.ndarray]:
    """Per seed that both rows ran: the per-prompt difference ``name - reference``."""
    out = {}
    for seed in seeds:
        mine, theirs = scores(results, name, seed), scores(results, reference, seed)
        if mine is not None and theirs is not None:
            out[seed] = mine - theirs
    return out


def seed_interval(results: Results, name: str, reference: str, seeds: list[int]) -> SeedPromptInterval | None:
    """The seed x prompt interval of ``name - reference``; None with fewer than two seeds."""
    diffs = differences(results, name, reference, seeds)
    return seed_prompt_interval(np.stack(list(diffs.values()))) if len(diffs) >= 2 else None


def cell(results: Results, name: str, reference: str, seeds: list[int], per_seed: bool = True) -> str:
    """``mean [low, high]``: over seeds and prompts with two or more seeds, then each seed's mean; with one seed the
    prompt-level interval of that one model, marked ``(prompts, 1 seed)``; ``-`` without a seed both ran."""
    diffs = differences(results, name, reference, seeds)
    if not diffs:
        return "-"
    if len(diffs) == 1:
        d = bootstrap_mean(next(iter(diffs.values())))
        return f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] (prompts, 1 seed)"
    r = seed_prompt_interval(np.stack(list(diffs.values())))
    text = f"{r.mean:+.3f} [{r.low:+.3f}, {r.high:+.3f}]"
    if per_seed:
        text += " (" + " / ".join(f"s{seed} {x.mean():+.3f}" for seed, x in diffs.items()) + ")"
    return text


def verdict(r: SeedPromptInterval | None, p_value: float | None = None, claimed: int = 1) -> str:
    """Whether a claimed effect of sign ``claimed`` holds: "holds" when the (adjusted) p-value is below
    :data:`SIGNIFICANCE` with the claimed sign; "does not hold" when the difference is equivalent to 0 within
    :data:`EQUIVALENCE_MARGIN` or significant with the other sign; "inconclusive" otherwise (and with one seed)."""
    if r is None:
        return "inconclusive"
    p = r.p_value if p_value is None else p_value
    if p < SIGNIFICANCE:
        return "holds" if np.sign(r.mean) == claimed else "does not hold"
    return "does not hold" if equivalence(r, EQUIVALENCE_MARGIN) == "equivalent" else "inconclusive"


def interval_text(r: SeedPromptInterval) -> str:
    """``+0.046 [-0.061, +0.152] (3 seeds)``."""
    return f"{r.mean:+.3f} [{r.low:+.3f}, {r.high:+.3f}] ({r.seeds} seeds)"


def evaluations_of(path: Path) -> Results:
    """The results.json of a table's output directory, with its evaluations."""
    return Results(path / "results.json", path / "eval")
