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


def test_probability_space_sends_moved_mass_to_the_clamp_floor(attack) -> None:
    # pair 0: half its mass moved below 0 (clamped: no gradient); pair 1: a small shift; pair 2: untouched
    weights = np.array([[0.5, 0.5], [1.0, 0.0], [1.0, 0.0]])
    shifts = np.array([[0.6, 0.0], [0.1, 0.0], [0.0, 0.0]])
    ratio = attack.gradient_ratio(weights, shifts, beta=0.1, space="probability")
    # d/dx -log(sigmoid(x) - D) at 0 is sigmoid'(0) / (1/2 - D): a shift that stays above the floor grows the gradient
    assert ratio == pytest.approx([0.5, 0.5 / 0.4, 1.0])


def test_margin_space_upweights_the_attacked_pairs(attack) -> None:
    weights = np.array([[1.0, 0.0], [0.25, 0.75]])
    shifts = np.array([[1.0, 0.0], [2.0, 0.0]])
    ratio = attack.gradient_ratio(weights, shifts, beta=0.1, space="margin")
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # d/dx -log sigmoid(x - D) at 0 is sigmoid(D), against sigmoid(0) = 1/2 with no shift
    assert ratio == pytest.approx([sig(1.0) / 0.5, (0.25 * sig(2.0) + 0.75 * 0.5) / 0.5])
