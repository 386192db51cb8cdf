"""Packed, prefix-shared pairs on a CUDA device: the flex_attention block mask, forward and backward (the CPU has no
flex backward), and the SDPA mask, against the unpacked forward of each sequence (float32)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

from sgpo.lm_head import decoder_and_head  # noqa: E402
from sgpo.packing import pack_pairs, packed_sequence_logps  # noqa: E402
from test_packing import random_pairs, tiny_model, unpacked_logps  # noqa: E402


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("backend", ["flex_attention", "sdpa"])
def test_packed_pairs_on_the_device(family: str, backend: str) -> None:
    prompts, chosen, rejected = random_pairs()
    model = tiny_model(family, "sdpa").cuda()
    model.set_attn_implementation(backend)
    reference = torch.stack(
        [
            torch.stack([unpacked_logps(model, p, c) for p, c in zip(prompts, chosen, strict=True)]),
            torch.stack([unpacked_logps(model, p, r) for p, r in zip(prompts, rejected, strict=True)]),
        ]
    )
    reference.sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    packed = pack_pairs(prompts, chosen, rejected, max_tokens=24, device="cuda")
    got = torch.stack(packed_sequence_logps(*decoder_and_head(model), packed))
    torch.testing.assert_close(got, reference.detach(), rtol=1e-4, atol=1e-4)
    got.sum().backward()
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-3, atol=1e-4, msg=name)
