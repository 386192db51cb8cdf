"""The follower's cap defaults to epsilon (the paper's code) in the trainer and the pipeline; uncapped is asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sgpo
from sgpo.pipeline import load_config

MARGINS = np.random.default_rng(0).uniform(0.3, 0.7, 40)


def test_worst_case_takes_epsilon_as_the_cap_by_name() -> None:
    named = sgpo.worst_case(MARGINS, 0.05, max_shift="epsilon")
    number = sgpo.worst_case(MARGINS, 0.05, max_shift=0.05)
    uncapped = sgpo.worst_case(MARGINS, 0.05)
    np.testing.assert_array_equal(named.weights, number.weights)
    np.testing.assert_array_equal(named.shifts, number.shifts)
    # the default is the uncapped program, which moves whole points: it differs from the capped one
    assert np.abs(uncapped.weights - named.weights).max() > 0.1
    with pytest.raises(ValueError, match=r"^max_shift: expected None, 'epsilon' or a number >= 0, got 'eps'$"):
        sgpo.worst_case(MARGINS, 0.05, max_shift="eps")


def test_trainer_config_caps_at_epsilon_unless_told_otherwise(tmp_path: Path) -> None:
    from sgpo.integrations.trl_config import SGPODPOConfig

    common = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, loss_type="ssapo")
    assert SGPODPOConfig(**common).ssapo_max_shift == "epsilon"
    assert SGPODPOConfig(**common, ssapo_max_shift=None).ssapo_max_shift is None
    # TRL's command line hands values over as text
    assert SGPODPOConfig(**common, ssapo_max_shift="0.02").ssapo_max_shift == 0.02
    assert SGPODPOConfig(**common, ssapo_max_shift="none").ssapo_max_shift is None
    with pytest.raises(ValueError, match=r"^ssapo_max_shift: expected 'epsilon' .* got -1"):
        SGPODPOConfig(**common, ssapo_max_shift=-1)


@pytest.mark.parametrize("recipe", ["default", "hidden", "mistral-7b_ssapo", "llama-3-8b-instruct_ssapo", "tiny"])
def test_recipes_cap_follows_epsilon_from_the_command_line(recipe: str, capsys: pytest.CaptureFixture) -> None:
    assert load_config(recipe, ["follower.epsilon=0.03"]).follower.max_shift == 0.03
    assert capsys.readouterr().out == ""


def test_a_cap_that_no_longer_equals_epsilon_is_said_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert load_config("default", ["follower.max_shift=0.01", "follower.epsilon=0.05"]).follower.max_shift == 0.01
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "[sgpo] follower.max_shift 0.01 differs from follower.epsilon 0.05 (the paper's code caps at epsilon; "
        "follower.max_shift=epsilon follows it)"
    ]
    assert load_config("default", ["follower.max_shift=null"]).follower.max_shift is None
    assert "the follower is uncapped" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"^follower.max_shift: expected 'epsilon' \(the cap follows"):
        load_config("default", ["follower.max_shift=eps"])


def test_the_experiments_say_their_cap_explicitly() -> None:
    """Every SSAPO row of the results table names its cap, so a change of default changes no committed result."""
    from experiments.rows import variants

    ssapo = [v for v in variants() if "method=ssapo" in v.overrides]
    assert ssapo
    for variant in ssapo:
        assert any(o.startswith("follower.max_shift=") for o in variant.overrides), variant.name
