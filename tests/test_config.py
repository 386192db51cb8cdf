"""Run configs: every bundled recipe loads, overrides parse as YAML, bad keys and values name themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
from sgpo.cli import main
from sgpo.pipeline.config import config_from_dict
from sgpo.pipeline.recipes import bundled_configs, load_config, parse_override


def test_every_bundled_recipe_loads_and_validates() -> None:
    names = bundled_configs()
    for required in ("default", "tiny", "mistral-7b_ssapo", "llama-3-8b-instruct_ssapo", "mistral-7b_sppo"):
        assert required in names
    for name in names:
        cfg = load_config(name)
        assert cfg.method in ("ssapo", "sppo", "dpo")


def test_recipes_carry_the_papers_hyperparameters() -> None:
    mistral = load_config("mistral-7b_ssapo")
    assert (mistral.round0.learning_rate, mistral.round0.beta, mistral.round0.epochs) == (5e-7, 0.1, 3)
    assert (mistral.train.learning_rate, mistral.train.scheduler, mistral.train.warmup_ratio) == (3e-7, "cosine", 0.1)
    assert (mistral.follower.pieces, mistral.follower.epsilon, mistral.generation.temperature) == (6, 0.01, 0.7)
    assert mistral.data.prompts_per_round == [8000, 20000, 30000] and mistral.rounds == 3
    llama = load_config("llama-3-8b-instruct_ssapo")
    assert (llama.round0.learning_rate, llama.round0.beta, llama.round0.epochs, llama.rounds) == (1e-6, 0.05, 1, 2)
    sppo = load_config("mistral-7b_sppo")
    assert (sppo.train.beta, sppo.train.learning_rate, sppo.generation.num_samples) == (1e-3, 5e-7, 5)


def test_overrides_parse_as_yaml_and_nest() -> None:
    cfg = load_config(
        "tiny",
        ["rounds=1", "train.learning_rate=2e-4", "follower.group_size=null", "model.lora_target_modules=[q_proj]"],
    )
    assert cfg.rounds == 1 and cfg.train.learning_rate == 2e-4
    assert cfg.follower.group_size is None and cfg.model.lora_target_modules == ["q_proj"]
    assert load_config("tiny", ["follower.epsilon=1"]).follower.epsilon == 1.0
    assert parse_override("judge.options.temperature=0.5") == (["judge", "options", "temperature"], 0.5)
    assert load_config("tiny", ["judge.options.temperature=0.5"]).judge.options == {"temperature": 0.5}


def test_a_mapping_override_replaces_the_recipes_mapping() -> None:
    # hidden's annotator options merge with a dotted key and are dropped by an explicit mapping
    assert load_config("hidden", ["judge.options.gate=on_task"]).judge.options == {"reward": "mean", "gate": "on_task"}
    assert load_config("hidden", ["judge.name=structure", "judge.options={}"]).judge.options == {}
    assert load_config("hidden", ["judge.options={gate: on_task}"]).judge.options == {"gate": "on_task"}
    # a nested section given in part keeps its own default: evaluate's judge stays the verifiable one
    assert load_config("tiny", ["evaluate.judge.options={temperature: 0.2}"]).evaluate.judge.name == "verifiable"
    assert load_config("tiny", ["evaluate.judge.options.temperature=0.2"]).evaluate.judge.name == "verifiable"
    # a section given whole keeps nothing of the recipe's section
    follower = load_config("hidden", ["follower={epsilon: 0.05}"]).follower
    assert follower.epsilon == 0.05 and follower.max_shift == 0.05  # the default cap follows epsilon


def test_unknown_keys_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"^learnig_rate: unknown config key; valid keys: method, rounds"):
        load_config("tiny", ["learnig_rate=1"])
    with pytest.raises(ValueError, match=r"train\.learnig_rate: unknown config key; valid keys in train: loss_type"):
        load_config("tiny", ["train.learnig_rate=1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rounds=two", r"rounds: expected an integer, got 'two'"),
        ("train.beta=0", r"train.beta: expected a finite number > 0, got 0.0"),
        ("round0.beta=0", r"round0.beta: expected a finite number > 0, got 0.0"),
        ("train.save_steps=0", r"train.save_steps: expected an integer >= 1 or null, got 0"),
        ("round0.learning_rate=-1e-6", r"round0.learning_rate: expected a finite number > 0"),
        ("train.loss_type=sigmoid", r"train.loss_type: method 'ssapo' trains the 'ssapo' loss"),
        ("method=ppo", r"method: unknown value 'ppo'; expected one of ssapo, sppo, dpo"),
        ("follower.space=logit", r"follower.space: unknown value 'logit'"),
        ("follower.backend=gpu", r"follower.backend: unknown value 'gpu'; expected one of auto, cpu, torch, paper"),
        ("follower.backend=paper follower.space=margin", r"follower.backend: 'paper' exists only for follower.space"),
        ("generation.num_samples=1", r"generation.num_samples: expected an integer >= 2"),
        ("data.prompts_per_round=[1,2,3]", r"data.prompts_per_round: expected 2 counts"),
        ("data.long_prompts=drop", r"data.long_prompts: unknown value 'drop'"),
        ("model.lora=maybe", r"model.lora: expected true or false, got 'maybe'"),
        ("train=3", r"train: expected a mapping of TrainConfig keys"),
        ("refinement.alpha=0.7", r"refinement.alpha: expected a number in \[0, 0.5\]"),
        ("rounds", r"override: expected key=value"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config("tiny", override.split(" "))


def test_method_consistency() -> None:
    with pytest.raises(ValueError, match="rounds: method 'dpo' trains offline"):
        config_from_dict({"method": "dpo", "train": {"loss_type": "sigmoid"}})
    with pytest.raises(ValueError, match="train.loss_type: 'ssapo' needs self-play rounds"):
        config_from_dict({"method": "dpo", "rounds": 0})
    with pytest.raises(ValueError, match="data.seed_pairs: method 'ssapo' needs labelled pairs"):
        config_from_dict({"data": {"seed_pairs": None}})
    cfg = config_from_dict({"method": "sppo", "train": {"loss_type": "sppo"}, "round0": {"enabled": False}})
    assert cfg.method == "sppo"


def test_config_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a YAML file nor a bundled config"):
        load_config("no-such-recipe")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [ssapo\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(listed)
    good = tmp_path / "mine.yaml"
    good.write_text("method: dpo\nrounds: 0\ntrain:\n  loss_type: ipo\n")
    assert load_config(good).train.loss_type == "ipo"


def test_cli_reports_config_errors_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "tiny", "train.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "sgpo run: error: train.nope: unknown config key" in err


def test_the_pipeline_refuses_length_normalised_losses_by_name_and_takes_the_rest() -> None:
    from sgpo.pipeline.config import PIPELINE_LOSS_TYPES

    assert {"nca_pair", "bco_pair", "apo_zero", "discopop", "exo_pair"} <= set(PIPELINE_LOSS_TYPES)
    # round 0 (and method dpo, which is round 0 alone) trains round0.loss_type
    cfg = load_config("tiny", ["method=dpo", "rounds=0", "train.loss_type=sigmoid", "round0.loss_type=nca_pair"])
    assert cfg.round0.loss_type == "nca_pair"
    for loss, why in (("simpo", "normalises by response length"), ("aot", "sorts the whole batch")):
        with pytest.raises(ValueError, match=f"round0.loss_type: '{loss}' {why}"):
            load_config("tiny", ["method=dpo", "rounds=0", "train.loss_type=sigmoid", f"round0.loss_type={loss}"])
    with pytest.raises(ValueError, match="train.label_smoothing: expected EXO's epsilon in"):
        load_config("tiny", ["method=dpo", "rounds=0", "train.loss_type=sigmoid", "round0.loss_type=exo_pair"])
    cfg = load_config(
        "tiny",
        ["method=dpo", "rounds=0", "train.loss_type=sigmoid", "round0.loss_type=exo_pair", "train.label_smoothing=0.1"],
    )
    assert cfg.round0.loss_type == "exo_pair"
