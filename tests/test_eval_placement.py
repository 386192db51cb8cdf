"""Where evaluations run and in what precision: ``auto`` picks the GPU in bfloat16 or the CPU in float32; explicit
values are checked before any model loads and applied."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_overrides
from sgpo.devices import resolve_placement
from sgpo.pipeline import load_config
from sgpo.responses import EvalSettings, _fingerprint

GPU = torch.cuda.is_available()


def test_auto_is_the_gpu_in_bfloat16_or_the_cpu_in_float32() -> None:
    expected = ("cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float16") if GPU else ("cpu", "float32")
    assert resolve_placement("auto", "auto") == expected
    assert resolve_placement("cpu", "auto") == ("cpu", "float32")
    assert resolve_placement("cpu", "bfloat16") == ("cpu", "bfloat16")
    settings = EvalSettings(device="cpu", dtype="float16").validate()
    assert (settings.device, settings.dtype) == ("cpu", "float16")


@pytest.mark.parametrize(
    ("device", "dtype", "message"),
    [
        ("tpu", "auto", r"^--device: unknown device 'tpu'; expected auto, cpu, cuda or cuda:N$"),
        ("cpu", "fp8", r"^--dtype: unknown dtype 'fp8'; expected auto or one of float32, bfloat16, float16$"),
        ("cuda:7", "auto", r"^--device: 'cuda:7' asks for CUDA device 7 and this machine has \d+; expected auto or"),
    ],
)
def test_bad_placements_name_the_option(device: str, dtype: str, message: str) -> None:
    if device == "cuda:7" and GPU and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    with pytest.raises(ValueError, match=message):
        EvalSettings(device=device, dtype=dtype).validate()


def test_sgpo_eval_refuses_a_bad_dtype_before_loading_a_model(capsys: pytest.CaptureFixture) -> None:
    from sgpo.cli import main

    assert main(["eval", "no-such-model", "--dtype", "half"]) == 2
    assert capsys.readouterr().err.strip() == (
        "sgpo eval: error: --dtype: unknown dtype 'half'; expected auto or one of float32, bfloat16, float16"
    )


def test_float32_keeps_the_response_cache_keys_other_precisions_do_not(tiny_model_dir: Path) -> None:
    cpu = EvalSettings(device="cpu", dtype="float32")
    assert _fingerprint(str(tiny_model_dir), ["p"], cpu) == _fingerprint(
        str(tiny_model_dir), ["p"], replace(cpu, device="cuda")
    )
    assert _fingerprint(str(tiny_model_dir), ["p"], cpu) != _fingerprint(
        str(tiny_model_dir), ["p"], replace(cpu, dtype="bfloat16")
    )


def test_the_evaluate_stage_answers_under_its_dtype_in_batches(
    tiny_model_dir: Path, preference_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sgpo.models import load_model, load_tokenizer
    from sgpo.pipeline.context import RunContext
    from sgpo.pipeline.stages import evaluate

    seen: list[dict[str, Any]] = []

    def recording(model: Any, tokenizer: Any, prompts: list[Any], **kwargs: Any) -> list[list[str]]:
        seen.append(
            {
                "autocast": torch.is_autocast_enabled("cpu"),
                "dtype": torch.get_autocast_dtype("cpu"),
                "batch_size": kwargs["batch_size"],
                "prompts": len(prompts),
            }
        )
        return [["answer"] for _ in prompts]

    monkeypatch.setattr("sgpo.generation.generate_responses", recording)
    extra = ("evaluate.dtype=bfloat16", "evaluate.batch_size=3")
    cfg = load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, tmp_path / "run", *extra))
    ctx = RunContext(cfg)
    ctx.tokenizer = load_tokenizer(tiny_model_dir)
    prompts = [f"prompt {i}" for i in range(5)]
    out = evaluate.answer(ctx, tmp_path / "run" / "answers.jsonl", load_model(tiny_model_dir), prompts)
    assert out == ["answer"] * 5
    assert seen == [
        {"autocast": True, "dtype": torch.bfloat16, "batch_size": 3, "prompts": 3},
        {"autocast": True, "dtype": torch.bfloat16, "batch_size": 3, "prompts": 2},
    ]
    with pytest.raises(ValueError, match=r"^evaluate.dtype: unknown value 'half'; expected one of auto, float32"):
        load_config("tiny", ["evaluate.dtype=half"])


@pytest.mark.parametrize("recipe", ["mistral-7b_ssapo", "llama-3-8b-instruct_ssapo", "mistral-7b_sppo"])
def test_the_7b_recipes_end_in_a_held_out_evaluation(recipe: str) -> None:
    from sgpo.pipeline.judges import JUDGES

    cfg = load_config(recipe).evaluate
    assert (cfg.prompts, cfg.split, cfg.dtype) == ("HuggingFaceH4/ultrafeedback_binarized", "test_prefs", "auto")
    assert cfg.judge.name in JUDGES
