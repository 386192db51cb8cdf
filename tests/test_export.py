"""``sgpo export``: a merged model directory and AlpacaEval's ``model_outputs`` file; ``sgpo config-path``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from sgpo.cli import main


@pytest.fixture
def adapter_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A LoRA checkpoint as the pipeline saves one (adapter + tokenizer), and the weights its merge must give."""
    from peft import LoraConfig, get_peft_model
    from sgpo.models import load_tokenizer
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False))
    checkpoint = tmp_path / "run" / "round_1" / "checkpoint"
    model.save_pretrained(checkpoint)
    load_tokenizer(tiny_model_dir).save_pretrained(checkpoint)
    return checkpoint, copy.deepcopy(model).merge_and_unload().state_dict()


def test_export_writes_the_merged_model_and_alpaca_eval_outputs(
    adapter_checkpoint: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from transformers import AutoModelForCausalLM

    checkpoint, merged = adapter_checkpoint
    run_dir = checkpoint.parents[1]
    (run_dir / "config.yaml").write_text("method: ssapo\n")
    prompts = tmp_path / "alpaca.json"
    instructions = ["Name a colour.", "Say hello.", "Count to three."]
    prompts.write_text(json.dumps([{"instruction": i, "dataset": "helpful_base"} for i in instructions]))
    out = tmp_path / "export"
    argv = ["export", str(run_dir), str(out), "--prompts", str(prompts), "--max-new-tokens", "4", "--name", "ssapo-r1"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"merged model: {out / 'model'}",
        f"AlpacaEval outputs: {out / 'alpaca_eval.json'}",
    ]

    loaded = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).state_dict()
    assert set(loaded) == set(merged)
    for key, value in merged.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    assert (out / "model" / "tokenizer_config.json").is_file()

    records = json.loads((out / "alpaca_eval.json").read_text())
    assert [r["instruction"] for r in records] == instructions
    assert all(set(r) == {"instruction", "output", "generator"} and r["generator"] == "ssapo-r1" for r in records)
    assert all(isinstance(r["output"], str) for r in records)


def test_export_refuses_what_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "is neither a run directory of `sgpo run` nor a saved model" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("method: ssapo\n")
    assert main(["export", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "is a run directory without any round checkpoint yet" in capsys.readouterr().err
    assert main(["export", str(tmp_path), str(tmp_path / "out"), "--device", "npu"]) == 2
    assert "--device: unknown device 'npu'" in capsys.readouterr().err


def test_config_path_prints_the_packaged_configs(capsys: pytest.CaptureFixture) -> None:
    from sgpo.pipeline.recipes import config_path

    assert main(["config-path"]) == 0
    root = Path(capsys.readouterr().out.strip())
    assert (root / "accelerate" / "fsdp.yaml").is_file() and (root / "tiny.yaml").is_file()
    assert main(["config-path", "accelerate/deepspeed_zero3.yaml"]) == 0
    assert Path(capsys.readouterr().out.strip()) == root / "accelerate" / "deepspeed_zero3.yaml"
    assert main(["config-path", "mistral-7b_ssapo"]) == 0
    assert Path(capsys.readouterr().out.strip()) == config_path("mistral-7b_ssapo")
    assert main(["config-path", "../cli.py"]) == 2
    assert "'../cli.py' is not a packaged config; expected one of accelerate/ddp.yaml" in capsys.readouterr().err
