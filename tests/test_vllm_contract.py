"""The generate stage's vLLM path against a stand-in ``vllm`` module: what vLLM is given, and a policy left untouched.

vLLM itself never runs here; the stand-in records the engine's arguments, reads the exported directory while it
exists, and answers every request with a text naming its prompt and sample.
"""

from __future__ import annotations

import copy
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file
from sgpo.generation import format_prompt, row_seed
from sgpo.pipeline import files, load_config

PROMPTS = ["Describe rivers.", "Name a colour.", "Say hello."]


class StandInVllm:
    """Records what the stage hands to ``vllm.LLM`` and ``vllm.SamplingParams``."""

    def __init__(self) -> None:
        self.engine: dict[str, Any] = {}
        self.exported: dict[str, torch.Tensor] = {}
        self.exported_files: list[str] = []
        self.texts: list[str] = []
        self.params: list[dict[str, Any]] = []

    def module(self) -> types.ModuleType:
        recorder = self
        vllm = types.ModuleType("vllm")
        vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)

        class SamplingParams:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs: Any) -> None:
                recorder.engine = kwargs
                path = Path(kwargs["model"])
                recorder.exported_files = sorted(p.name for p in path.iterdir())
                recorder.exported = {
                    k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()
                }

            def generate(self, texts: list[str], params: list[SamplingParams]) -> list[Any]:
                recorder.texts = list(texts)
                recorder.params = [p.kwargs for p in params]
                return [
                    types.SimpleNamespace(
                        outputs=[types.SimpleNamespace(text=f"answer {i}.{j}") for j in range(p.kwargs["n"])]
                    )
                    for i, p in enumerate(params)
                ]

        vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
        return vllm


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> StandInVllm:
    recorder = StandInVllm()
    monkeypatch.setitem(sys.modules, "vllm", recorder.module())
    # the stage's availability check (vLLM importable and a GPU present) answers as on a GPU machine
    monkeypatch.setattr("sgpo.generation.vllm_available", lambda: True)
    return recorder


def lora_policy(model_dir: Path) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # random B: a fresh adapter is zero and its merge would equal the base, which would prove nothing
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(base, config)


def test_vllm_samples_a_merged_copy_and_leaves_the_policy_untouched(
    stand_in: StandInVllm, tiny_model_dir: Path, preference_files: dict[str, Path], tmp_path: Path
) -> None:
    from peft import PeftModel
    from sgpo.models import load_tokenizer
    from sgpo.pipeline.context import RunContext
    from sgpo.pipeline.stages import generate

    overrides = [
        "generation.backend=auto",
        "generation.num_samples=3",
        "generation.temperature=0.9",
        "generation.top_p=0.8",
        "generation.max_new_tokens=12",
        "generation.vllm.gpu_memory_utilization=0.7",
        "generation.vllm.tensor_parallel_size=2",
        "generation.vllm.max_model_len=512",
    ]
    cfg = load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, tmp_path / "run", *overrides))
    ctx = RunContext(cfg)
    ctx.tokenizer = load_tokenizer(tiny_model_dir)
    policy = lora_policy(tiny_model_dir)
    reference = copy.deepcopy(policy).merge_and_unload().state_dict()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    ids = torch.tensor([[5, 9, 13, 17]])
    with torch.no_grad():
        logits = policy(ids).logits
        with policy.disable_adapter():
            base_logits = policy(ids).logits

    assert generate.use_vllm(ctx)
    responses = generate.generate(ctx, 1, policy, PROMPTS)

    # what vLLM was given: the merged copy (base + adapter, under the base model's names), with its tokenizer
    assert stand_in.engine["model"] == str(ctx.round_dir(1) / "vllm_model")
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(stand_in.exported_files)
    assert set(stand_in.exported) == set(reference)
    for key, value in reference.items():
        torch.testing.assert_close(stand_in.exported[key], value, rtol=0, atol=0, msg=key)
    layer = policy.base_model.model.model.layers[0].self_attn.q_proj
    by_hand = layer.base_layer.weight + (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * 2.0
    torch.testing.assert_close(stand_in.exported["model.layers.0.self_attn.q_proj.weight"], by_hand)
    assert not torch.equal(by_hand, layer.base_layer.weight)
    assert stand_in.engine == {
        "model": stand_in.engine["model"],
        "seed": cfg.seed * 1000 + 1,
        "gpu_memory_utilization": 0.7,
        "tensor_parallel_size": 2,
        "max_model_len": 512,
    }
    assert stand_in.texts == [format_prompt(ctx.tokenizer, p) for p in PROMPTS]
    seed = cfg.seed * 1000 + 1
    assert stand_in.params == [
        {"n": 3, "temperature": 0.9, "top_p": 0.8, "max_tokens": 12, "seed": row_seed(seed, i, 0)}
        for i in range(len(PROMPTS))
    ]
    assert responses == [[f"answer {i}.{j}" for j in range(3)] for i in range(len(PROMPTS))]
    assert [r["responses"] for r in files.read_jsonl(ctx.round_dir(1) / "generations.jsonl")] == responses
    assert not (ctx.round_dir(1) / "vllm_model").exists()

    # the policy: the same PEFT model, its adapter present and active, every tensor bit-identical
    assert isinstance(policy, PeftModel) and policy.active_adapter == "default"
    assert not any(getattr(m, "merged", False) for m in policy.modules())
    after = policy.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    with torch.no_grad():
        assert torch.equal(policy(ids).logits, logits)
        with policy.disable_adapter():
            assert torch.equal(policy(ids).logits, base_logits)
    assert not torch.allclose(logits, base_logits)


def test_transformers_is_used_when_vllm_is_not_asked_for(stand_in: StandInVllm, tmp_path: Path) -> None:
    from sgpo.pipeline.stages.generate import use_vllm

    ctx = types.SimpleNamespace(cfg=load_config("tiny", ["generation.backend=transformers"]))
    assert not use_vllm(ctx)
