"""The Triton kernels on a CUDA device against the pure-PyTorch references, at real vocabulary sizes.

float32: the kernels match the reference to float32 rounding. bfloat16 and float16: a fused kernel's error against a
float32 computation on the same rounded inputs is at most twice the error of the plain PyTorch computation in that
precision (TRL-style ``log_softmax`` + ``gather``, ``x @ W.T`` in the low precision). Runs only where a GPU exists
(``make gpu-check``); tests/test_gpu_compile.py compiles the same launches for sm_80 and sm_90 everywhere.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

from sgpo import ops  # noqa: E402
from sgpo.reference import LOSS_TYPES, preference_losses_reference, sequence_logps_reference  # noqa: E402
from test_ops import grads, leaf, loss_kwargs, make_labels, preference_inputs  # noqa: E402

IGNORE = -100
LOW = [torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def triton_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGPO_KERNELS", "triton")


def on_cuda(value: object) -> object:
    if isinstance(value, tuple):
        return tuple(on_cuda(v) for v in value)
    return value.cuda() if isinstance(value, torch.Tensor) else value


def max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().double() - want.detach().double()).abs().max())


def at_most_twice_plain(ours: torch.Tensor, plain: torch.Tensor, fp32: torch.Tensor, what: str) -> None:
    """The fused kernel's error against float32 is at most 2x plain PyTorch's in the same low precision."""
    ours_err, plain_err = max_err(ours, fp32), max_err(plain, fp32)
    # a floor at float32 rounding of the result, for outputs that plain PyTorch happens to get exactly right
    floor = 1e-6 * max(1.0, float(fp32.detach().abs().max()))
    assert ours_err <= 2 * plain_err + floor, f"{what}: fused error {ours_err:.3g} > 2 x plain error {plain_err:.3g}"


def trl_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TRL's per-sequence log-probs, in the logits' own dtype."""
    mask = labels != IGNORE
    token = logits.log_softmax(-1).gather(-1, torch.where(mask, labels, 0).unsqueeze(-1)).squeeze(-1)
    return (token * mask).sum(-1)


@pytest.mark.parametrize("vocab", [32_000, 151_936])
def test_sequence_logps_float32_matches_the_reference(vocab: int) -> None:
    shape = (3, 47, vocab)
    logits = (torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 4).cuda()
    labels = make_labels(*shape).cuda()
    ours_in, ref_in = leaf(logits, torch.float32), leaf(logits, torch.float32)
    ours = ops.sequence_logps(ours_in, labels)
    ref = sequence_logps_reference(ref_in, labels)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grads(ours, (ours_in,))[0], grads(ref, (ref_in,))[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("vocab", [49_152, 128_256])
def test_sequence_logps_low_precision_error_at_most_twice_plain(dtype: torch.dtype, vocab: int) -> None:
    shape = (2, 129, vocab)
    logits = (torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 4).to(dtype).cuda()
    labels = make_labels(*shape).cuda()
    results = {}
    for name, work, fn in (
        ("ours", dtype, ops.sequence_logps),
        ("plain", dtype, trl_logps),
        ("fp32", torch.float32, trl_logps),
    ):
        x = leaf(logits, work)
        out = fn(x, labels)
        results[name] = (out, grads(out, (x,))[0])
    assert results["ours"][1].dtype == dtype
    for i, what in enumerate(("log-probs", "gradient")):
        at_most_twice_plain(results["ours"][i], results["plain"][i], results["fp32"][i], what)


@pytest.mark.parametrize(("loss_type", "space"), [(t, "probability") for t in LOSS_TYPES] + [("ssapo", "margin")])
def test_preference_kernel_float32_matches_the_reference(loss_type: str, space: str) -> None:
    logps, extras = preference_inputs(1500)
    kwargs = loss_kwargs(loss_type, on_cuda(extras), space)
    ours_in = [leaf(t.cuda(), torch.float32) for t in logps]
    ref_in = [leaf(t.cuda(), torch.float32) for t in logps]
    ours = ops.preference_losses(*ours_in, **kwargs)
    ref = preference_losses_reference(*ref_in, **kwargs)
    scale = ref.losses.abs().max().item()
    torch.testing.assert_close(ours.losses, ref.losses, rtol=1e-5, atol=1e-6 * max(scale, 1.0))
    for got, want in zip(grads(ours.losses, tuple(ours_in)), grads(ref.losses, tuple(ref_in))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * max(want.abs().max().item(), 1.0))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_preference_kernel_bfloat16_error_at_most_twice_plain(loss_type: str) -> None:
    logps, extras = preference_inputs(256, seed=7)
    kwargs = loss_kwargs(loss_type, on_cuda(extras))
    low = [t.to(torch.bfloat16).cuda() for t in logps]

    def plain(*inputs: torch.Tensor, **kw: object) -> torch.Tensor:
        return preference_losses_reference(*inputs, **kw).losses.mean()

    results = {}
    for name, work, fn in (
        ("ours", torch.bfloat16, ops.preference_loss),
        ("plain", torch.bfloat16, plain),
        ("fp32", torch.float32, plain),
    ):
        inputs = [leaf(t, work) for t in low]
        out = fn(*inputs, **kwargs)
        results[name] = (out, *grads(out, tuple(inputs)))
    for i in range(5):
        at_most_twice_plain(results["ours"][i], results["plain"][i], results["fp32"][i], f"{loss_type} output {i}")


def trl_linear_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return trl_logps(hidden @ weight.T, labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_logps_against_trl_style(dtype: torch.dtype) -> None:
    batch, seq_len, width, vocab = 4, 200, 576, 49_152
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(batch, seq_len, width, generator=generator).to(dtype).cuda()
    weight = (torch.randn(vocab, width, generator=generator) * width**-0.5).to(dtype).cuda()
    labels = make_labels(batch, seq_len, vocab).cuda()
    results = {}
    for name, work, fn in (
        ("ours", dtype, ops.fused_linear_sequence_logps),
        ("plain", dtype, trl_linear_logps),
        ("fp32", torch.float32, trl_linear_logps),
    ):
        h, w = leaf(hidden, work), leaf(weight, work)
        out = fn(h, w, labels)
        results[name] = (out, *grads(out, (h, w)))
    if dtype == torch.float32:
        for got, want in zip(results["ours"], results["fp32"]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(want.detach().abs().max())))
    else:
        for i, what in enumerate(("log-probs", "hidden gradient", "weight gradient")):
            at_most_twice_plain(results["ours"][i], results["plain"][i], results["fp32"][i], what)
