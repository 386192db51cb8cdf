"""benchmarks/follower_attack.py: the gradient the worst case leaves each pair, against epsilon = 0."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "follower_attack.py"


@pytest.fixture(scope="module")
def attack():
    spec = importlib.util.spec_from_file_location("sgpo_follower_attack", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_probability_space_sends_moved_mass_to_the_clamp_floor() -> None:
    from experiments.attack import gradient_ratio

    # pair 0: half its mass moved below 0 (clamped: no gradient); pair 1: a small shift; pair 2: untouched
    weights = np.array([[0.5, 0.5], [1.0, 0.0], [1.0, 0.0]])
    shifts = np.array([[0.6, 0.0], [0.1, 0.0], [0.0, 0.0]])
    ratio = gradient_ratio(weights, shifts, beta=0.1, space="probability")
    # d/dx -log(sigmoid(x) - D) at 0 is sigmoid'(0) / (1/2 - D): a shift that stays above the floor grows the gradient
    assert ratio == pytest.approx([0.5, 0.5 / 0.4, 1.0])


def test_margin_space_upweights_the_attacked_pairs() -> None:
    from experiments.attack import gradient_ratio

    weights = np.array([[1.0, 0.0], [0.25, 0.75]])
    shifts = np.array([[1.0, 0.0], [2.0, 0.0]])
    ratio = gradient_ratio(weights, shifts, beta=0.1, space="margin")
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # d/dx -log sigmoid(x - D) at 0 is sigmoid(D), against sigmoid(0) = 1/2 with no shift
    assert ratio == pytest.approx([sig(1.0) / 0.5, (0.25 * sig(2.0) + 0.75 * 0.5) / 0.5])


def test_chance_of_as_many_flipped_pairs_is_the_hypergeometric_tail(attack) -> None:
    from scipy.stats import hypergeom

    for total, marked, drawn in [(16, 4, 1), (16, 4, 5), (16, 4, 16), (20, 7, 9), (5, 0, 3)]:
        for hits in range(0, min(marked, drawn) + 1):
            expected = hypergeom.sf(hits - 1, total, marked, drawn)
            assert attack.chance_at_least(hits, drawn, marked, total) == pytest.approx(expected, rel=1e-12)


def test_seed_attack_finds_the_flipped_pairs_the_policy_disbelieves(attack, monkeypatch: pytest.MonkeyPatch) -> None:
    import sgpo.responses as responses

    n = 8
    # pairs 0 and 1 are flipped (gold prefers the rejected) and the policy's implicit reward disagrees with them
    pairs = [
        {"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "chosen_score": 0.0 if i < 2 else 1.0,
         "rejected_score": 1.0 if i < 2 else 0.0}
        for i in range(n)
    ]  # fmt: skip
    margin = np.array([-3.0, -2.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
    policy = np.concatenate([margin / 2, -margin / 2])

    def fake_logps(model: str, items: list, cache_dir: object) -> list[np.ndarray]:
        return [policy.copy() if model == "policy/ckpt" else np.zeros(2 * n)]

    monkeypatch.setattr(responses, "cached_logps", fake_logps)
    monkeypatch.setattr(responses, "response_lengths", lambda model, p, r: np.ones(len(r)))
    monkeypatch.setattr(attack, "read_jsonl", lambda path: pairs)
    follower = {"space": "probability", "gamma": 0.1, "epsilon": 0.01, "pieces": 6, "max_shift": 0.01}
    capped, uncapped = attack.seed_attack("policy/ckpt", "base", Path("seed.jsonl"), follower, 0.1, None)
    assert capped["max_shift"] == 0.01 and uncapped["max_shift"] is None
    assert capped["flipped"] == uncapped["flipped"] == 2
    assert capped["negative_margin_flipped"] == 2 and capped["negative_margin_clean"] == 0
    assert capped["flipped_margin_mean"] == pytest.approx(-2.5)
    # uncapped, the budget goes where the loss is steepest, the lowest margins: the flipped pairs, beyond chance
    assert uncapped["flipped_pairs"] == [0, 1] and 0 < uncapped["attacked"] < n
    assert set(uncapped["attacked_pairs"]) <= {0, 1} and uncapped["flipped_attacked"] == uncapped["attacked"]
    assert uncapped["p_at_least"] == pytest.approx(
        attack.chance_at_least(uncapped["attacked"], uncapped["attacked"], 2, n), rel=1e-12
    )
    # capped at max_shift = epsilon, every pair gives up the same mass whatever its margin: no better than chance
    assert capped["attacked_pairs"] == list(range(n)) and capped["p_at_least"] == pytest.approx(1.0)
    assert uncapped["p_at_least"] < capped["p_at_least"]


def test_follower_inputs_and_moved_mass_are_the_pipelines() -> None:
    from sgpo.follower import follower_inputs, moved_mass

    h = np.array([-2.0, 0.0, 3.0])
    assert follower_inputs(h, "probability", 0.1, 0.5) == pytest.approx(1 / (1 + np.exp(-0.1 * h)))
    assert follower_inputs(h, "margin", 0.1, 0.5) == pytest.approx(0.5 * h)
    weights = np.array([[0.7, 0.3], [1.0, 0.0], [0.5, 0.5]])
    shifts = np.array([[0.0, 0.2], [0.0, 0.0], [1e-13, 0.4]])
    # a shift below the solver's zero moves nothing
    assert moved_mass(weights, shifts) == pytest.approx([0.3, 0.0, 0.5])
