"""Packed, prefix-shared pairs (sgpo.packing) against the plain forward of each unpacked sequence.

For tiny random models of every family the packed forward must reproduce, for every response, the log-probs of its
own unpacked forward through the model's own logits, and the gradients of every parameter: rotary positions, grouped
heads, sliding windows shorter than a packed row (Mistral, Gemma 2 and 3), per-layer-type masks (Gemma 3, Qwen 3), an
MoE, eager and SDPA attention; odd lengths, an empty prompt and one-token responses.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from sgpo.lm_head import decoder_and_head
from sgpo.packing import CHOSEN, PADDING, PROMPT, REJECTED, pack_pairs, packed_sequence_logps

VOCAB = 61
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
# family: (config class, its extra settings, the attention backends it supports)
FAMILIES = {
    "llama": ("LlamaConfig", {}, ("eager", "sdpa")),
    "qwen2": ("Qwen2Config", {}, ("eager", "sdpa")),
    "qwen3": ("Qwen3Config", {"head_dim": 8}, ("eager", "sdpa")),
    "mistral": ("MistralConfig", {"sliding_window": 5}, ("eager", "sdpa")),
    "gemma2": ("Gemma2Config", {"head_dim": 8, "sliding_window": 4, "final_logit_softcapping": None}, ("eager",)),
    "gemma3": (
        "Gemma3TextConfig",
        {"head_dim": 8, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]},
        ("eager", "sdpa"),
    ),
    "phi3": ("Phi3Config", {"pad_token_id": 0}, ("eager", "sdpa")),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        {"head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16},
        ("eager", "sdpa"),
    ),
}
CASES = [(family, backend) for family, (_, _, backends) in FAMILIES.items() for backend in backends]


def tiny_model(family: str, backend: str, seed: int = 0) -> transformers.PreTrainedModel:
    name, extra, _ = FAMILIES[family]
    config = getattr(transformers, name)(**{**SMALL, **extra})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=backend)
    return model.float()


def random_pairs(seed: int = 1) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Odd lengths, one empty prompt, one-token responses on either side, one empty response."""
    g = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> list[int]:
        return torch.randint(1, VOCAB, (n,), generator=g).tolist()

    prompts = [tokens(5), [], tokens(3), tokens(7), tokens(1), tokens(4)]
    chosen = [tokens(4), tokens(6), tokens(1), tokens(3), tokens(9), tokens(3)]
    rejected = [tokens(2), tokens(3), tokens(5), tokens(1), tokens(1), []]
    return prompts, chosen, rejected


def unpacked_logps(model: torch.nn.Module, prompt: list[int], response: list[int]) -> torch.Tensor:
    """The plain forward of [prompt, response]: the summed log-probs of the response tokens the model predicts."""
    ids = torch.tensor([prompt + response])
    logprobs = model(input_ids=ids).logits.float().log_softmax(-1)[0]
    first = max(len(prompt), 1)  # with an empty prompt the first response token has nothing before it
    positions = torch.arange(first, ids.shape[1])
    return logprobs[positions - 1, ids[0, positions]].sum()


@pytest.mark.parametrize("family,backend", CASES)
def test_packed_logps_and_gradients_equal_the_unpacked_forward(family: str, backend: str) -> None:
    prompts, chosen, rejected = random_pairs()
    weights = torch.randn(2, len(prompts), generator=torch.Generator().manual_seed(2))

    model = tiny_model(family, backend)
    reference = torch.stack(
        [
            torch.stack([unpacked_logps(model, p, c) for p, c in zip(prompts, chosen, strict=True)]),
            torch.stack([unpacked_logps(model, p, r) for p, r in zip(prompts, rejected, strict=True)]),
        ]
    )
    (weights * reference).sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    packed_model = tiny_model(family, backend)
    # a budget that packs several pairs per row: rows longer than the sliding windows
    packed = pack_pairs(prompts, chosen, rejected, max_tokens=24)
    assert packed.input_ids.shape[0] >= 2 and packed.input_ids.shape[1] > 5
    got = torch.stack(packed_sequence_logps(*decoder_and_head(packed_model), packed))
    torch.testing.assert_close(got, reference.detach(), rtol=1e-5, atol=1e-5)
    (weights * got).sum().backward()
    for name, param in packed_model.named_parameters():
        if name in expected_grads:
            # rel 1e-5 of the parameter's gradient scale: fp32 sums in another order differ by a few 1e-6 there
            expected = expected_grads[name]
            scale = float(expected.abs().max())
            torch.testing.assert_close(param.grad, expected, rtol=1e-5, atol=1e-5 * scale, msg=name)
        else:
            assert param.grad is None or not param.grad.any(), name


def test_the_layout_shares_the_prompt_and_restarts_the_rejected_positions() -> None:
    packed = pack_pairs([[5, 6, 7], [8]], [[1, 2], [3]], [[4], [9, 9, 9]], max_tokens=None)
    assert packed.input_ids.tolist() == [[5, 6, 7, 1, 2, 4, 8, 3, 9, 9, 9]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 1, 2, 3]]
    assert packed.pair.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]]
    P, C, R = PROMPT, CHOSEN, REJECTED
    assert packed.segment.tolist() == [[P, P, P, C, C, R, P, C, R, R, R]]
    # chosen of pair 0 is predicted from positions 2 (the prompt's last) and 3; its rejected from 2 as well
    assert packed.sources[0, :2].tolist() == [2, 3] and packed.targets[0, :2].tolist() == [1, 2]
    assert packed.sources[2, 0].item() == 2 and packed.targets[2].tolist()[:1] == [4]
    seen = packed.visible()[0]
    assert not seen[5, 3] and not seen[5, 4] and seen[5, 0] and seen[5, 2]  # rejected sees its prompt, not chosen
    assert not seen[6, :6].any()  # nothing crosses pairs
    assert seen.tril().equal(seen)  # and nothing looks ahead


def test_rows_respect_the_token_budget_and_pad_only_at_the_end() -> None:
    prompts, chosen, rejected = random_pairs()
    lengths = [len(p) + len(c) + len(r) for p, c, r in zip(prompts, chosen, rejected, strict=True)]
    packed = pack_pairs(prompts, chosen, rejected, max_tokens=16)
    used = (packed.segment != PADDING).sum(dim=1)
    assert used.sum().item() == sum(lengths)
    assert all(u <= max(16, max(lengths)) for u in used.tolist())
    for row in packed.segment:
        padding = (row == PADDING).nonzero().flatten()
        assert padding.numel() == 0 or padding.tolist() == list(range(padding[0].item(), row.numel()))
    # the padding's query rows see their own key only, so no softmax row is empty
    assert packed.visible().any(dim=2).all()


def test_the_sliding_window_is_counted_in_the_unpacked_positions() -> None:
    packed = pack_pairs([[1, 2, 3, 4]], [[5, 6]], [[7, 8]])
    seen = packed.visible(sliding_window=2)[0]
    # the rejected response's first token (position 4, packed index 6) sees position 3, the prompt's last: one back
    assert seen[6, 3] and not seen[6, 2]
    assert not seen[6, 5]  # and never the chosen response, whatever the window


@pytest.mark.parametrize(
    "args,message",
    [
        (([], [], []), "must be non-empty and of one length"),
        (([[1]], [[2]], []), "must be non-empty and of one length"),
        (([[1]], [[]], [[]]), "pair 0 has an empty chosen and an empty rejected response"),
        (([[1.5]], [[2]], [[3]]), "prompts[0] must hold integer token ids"),
    ],
)
def test_bad_pairs_are_refused_by_name(args: tuple, message: str) -> None:
    with pytest.raises((ValueError, TypeError)) as err:
        pack_pairs(*args)
    assert message in str(err.value)


def test_a_bad_budget_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="max_tokens must be a positive token budget or None, got 0"):
        pack_pairs([[1]], [[2]], [[3]], max_tokens=0)


def test_the_flex_attention_block_mask_gives_the_same_logps() -> None:
    # flex_attention has no backward on the CPU: the forward (a reference pass) is what runs here; the GPU check runs
    # forward and backward (tests/test_gpu_packing.py)
    prompts, chosen, rejected = random_pairs()
    packed = pack_pairs(prompts, chosen, rejected, max_tokens=24)
    sdpa = tiny_model("gemma3", "sdpa")
    flex = tiny_model("gemma3", "sdpa")
    flex.set_attn_implementation("flex_attention")
    assert flex.config._attn_implementation == "flex_attention" and sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        want = torch.stack(packed_sequence_logps(*decoder_and_head(sdpa), packed))
        got = torch.stack(packed_sequence_logps(*decoder_and_head(flex), packed))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_backends_and_layers_that_take_no_mask_are_named() -> None:
    from sgpo.packing import model_attention_mask, unsupported

    model = tiny_model("llama", "sdpa")
    packed = pack_pairs([[1, 2]], [[3]], [[4]])
    assert unsupported(model) is None
    model.config._attn_implementation = "flash_attention_2"
    assert "attention backend 'flash_attention_2' takes no prefix-sharing mask" in unsupported(model)
    with pytest.raises(ValueError, match="model: attention backend 'flash_attention_2'"):
        model_attention_mask(model, packed)
    model.config._attn_implementation = "sdpa"
    model.config.layer_types = ["full_attention", "linear_attention"]
    assert "layer types ['linear_attention'] take no causal mask" in unsupported(model)


def test_the_tested_model_types_are_the_parity_families() -> None:
    from sgpo.architectures import TESTED_MODEL_TYPES

    types = {getattr(transformers, name)().model_type for name, _, _ in FAMILIES.values()}
    assert types == TESTED_MODEL_TYPES


# TRL's test suite trains these: a short convolution (LFM2) and Mamba-2 mixers (NemotronH) beside attention
STATEFUL = {
    "lfm2": ("Lfm2Config", {"layer_types": ["conv", "full_attention"]}, "Lfm2ShortConv"),
    "nemotron_h": (
        "NemotronHConfig",
        {
            "head_dim": 8,
            "mamba_num_heads": 4,
            "mamba_head_dim": 8,
            "ssm_state_size": 8,
            "n_groups": 1,
            "hybrid_override_pattern": "M*-",
            "num_hidden_layers": 3,
        },
        "NemotronHMamba2Mixer",
    ),
}


def stateful_model(family: str) -> transformers.PreTrainedModel:
    name, extra, _ = STATEFUL[family]
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(getattr(transformers, name)(**{**SMALL, **extra})).float()


@pytest.mark.parametrize("family", list(STATEFUL))
def test_stateful_layers_and_untested_model_types_are_named(family: str) -> None:
    from sgpo.architectures import prompt_sharing_blocker
    from sgpo.packing import unsupported

    layer = STATEFUL[family][2]
    model = stateful_model(family)
    assert f"layer type {layer} carries state along the sequence" in prompt_sharing_blocker(model)
    assert unsupported(model) == prompt_sharing_blocker(model)
    attention_only = transformers.AutoModelForCausalLM.from_config(transformers.CohereConfig(**SMALL))
    assert "model type 'cohere' is not among those whose prompt-once forward is tested" in unsupported(attention_only)
    assert prompt_sharing_blocker(tiny_model("gemma3", "sdpa")) is None
