"""The Triton kernels of sgpo.kernels under the interpreter (TRITON_INTERPRET=1, CPU tensors), against sgpo.reference:
values and every gradient, float32 and bfloat16, odd shapes, several vocabulary blocks, ignored labels."""

from __future__ import annotations

import os

import pytest

# Triton picks the interpreter when it is imported and when each kernel is decorated, so these tests need a process
# that starts with TRITON_INTERPRET=1; tests/test_kernels.py runs this module in one.
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "needs TRITON_INTERPRET=1 from process start; run through tests/test_kernels.py", allow_module_level=True
    )

pytest.importorskip("triton")

import torch  # noqa: E402
from sgpo import ops  # noqa: E402
from sgpo.kernels import logps as logps_kernels  # noqa: E402
from sgpo.kernels import preference as preference_kernels  # noqa: E402
from sgpo.reference import LOSS_TYPES, preference_losses_reference, sequence_logps_reference  # noqa: E402
from test_ops import grads, leaf, loss_kwargs, low_precision_ok, make_labels, preference_inputs  # noqa: E402


@pytest.fixture(autouse=True)
def triton_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGPO_KERNELS", "triton")


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the kernel launches, to prove the ops took the Triton path."""
    counts = {"forward": 0, "backward": 0, "preference": 0}
    for module, name, key in (
        (logps_kernels, "token_logps_forward", "forward"),
        (logps_kernels, "token_logps_backward", "backward"),
        (preference_kernels, "preference_pair_losses", "preference"),
    ):
        original = getattr(module, name)

        def counted(*args, _original=original, _key=key, **kwargs):
            counts[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return counts


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_v", [32, None])
def test_row_kernels_against_log_softmax(dtype: torch.dtype, block_v: int | None) -> None:
    shape = (3, 47, 123)
    logits = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    labels = make_labels(*shape)
    token, lse = logps_kernels.token_logps_forward(logits, labels, -100, block_v=block_v)
    mask = labels != -100
    exact = torch.log_softmax(logits.double(), -1)
    expected = exact.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    torch.testing.assert_close(token.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double()[mask], torch.logsumexp(logits.double(), -1)[mask], rtol=1e-6, atol=1e-5)
    assert bool((lse[~mask] == 0).all()) and bool((token[~mask] == 0).all())
    grad_token = torch.randn(labels.shape)
    out = torch.full_like(logits, float("nan"))
    logps_kernels.token_logps_backward(grad_token, logits, labels, lse, -100, out, block_v=block_v)
    onehot = torch.nn.functional.one_hot(labels.clamp(min=0), shape[-1]).double()
    expected_grad = (grad_token.double() * mask).unsqueeze(-1) * (onehot - exact.exp())
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.double(), expected_grad, rtol=tolerance, atol=tolerance)


def test_a_block_of_banned_tokens_stays_finite() -> None:
    logits = torch.randn(2, 3, 100)
    logits[..., :32] = -torch.inf  # the whole first block of 32
    labels = torch.tensor([[40, 99, -100], [50, 60, 70]])
    token, lse = logps_kernels.token_logps_forward(logits, labels, -100, block_v=32)
    expected = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token, torch.where(labels != -100, expected, 0.0))
    out = torch.empty_like(logits)
    logps_kernels.token_logps_backward(torch.ones(2, 3), logits, labels, lse, -100, out, block_v=32)
    assert bool(torch.isfinite(out).all()) and bool((out[..., :32] == 0).all())


def test_vocabulary_larger_than_one_default_block(launches: dict[str, int]) -> None:
    shape = (2, 5, 5000)  # the default block is 4096 wide
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3
    labels = make_labels(*shape)
    labels[0, 3] = 4999  # a label in the second, ragged block
    ours_in, ref_in = leaf(logits, torch.float32), leaf(logits, torch.float32)
    ours = ops.sequence_logps(ours_in, labels)
    ref = sequence_logps_reference(ref_in, labels)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads(ours, (ours_in,))[0], grads(ref, (ref_in,))[0], rtol=1e-5, atol=1e-6)
    assert launches["forward"] == 1 and launches["backward"] == 1


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_triton_float32(average: bool, launches: dict[str, int]) -> None:
    shape = (3, 47, 123)
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 4
    labels = make_labels(*shape)
    ours_in, ref_in = leaf(logits, torch.float32), leaf(logits, torch.float32)
    ours = ops.sequence_logps(ours_in, labels, average=average)
    ref = sequence_logps_reference(ref_in, labels, average=average)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert ours[-1].item() == 0.0
    torch.testing.assert_close(grads(ours, (ours_in,))[0], grads(ref, (ref_in,))[0], rtol=1e-5, atol=1e-6)
    assert launches["forward"] == 1 and launches["backward"] == 1


def test_sequence_logps_triton_bfloat16_error_at_most_twice_plain() -> None:
    shape = (3, 47, 123)
    logits = (torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 4).to(torch.bfloat16)
    labels = make_labels(*shape)
    results = {}
    for name, dtype, fn in (
        ("ours", torch.bfloat16, ops.sequence_logps),
        ("plain", torch.bfloat16, sequence_logps_reference),
        ("exact", torch.float64, sequence_logps_reference),
    ):
        x = leaf(logits, dtype)
        out = fn(x, labels)
        results[name] = (out, grads(out, (x,))[0])
    for i in range(2):
        assert low_precision_ok(results["ours"][i], results["plain"][i], results["exact"][i])


def test_sequence_logps_triton_inplace_backward_and_sliced_logits() -> None:
    base = torch.randn(2, 12, 30)
    labels = make_labels(2, 11, 30)
    source = leaf(base, torch.float32)
    logits = (source * 1.0)[:, :-1]
    (grad_source,) = grads(ops.sequence_logps(logits, labels, inplace_backward=True), (source,))
    ref_in = leaf(base, torch.float32)
    (expected,) = grads(sequence_logps_reference(ref_in[:, :-1], labels), (ref_in,))
    torch.testing.assert_close(grad_source, expected, rtol=1e-5, atol=1e-6)


def test_triton_path_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match=r"labels: value 9 is outside the vocabulary \[0, 9\)"):
        ops.sequence_logps(torch.randn(1, 2, 9), torch.tensor([[0, 9]]))


@pytest.mark.parametrize(("loss_type", "space"), [(t, "probability") for t in LOSS_TYPES] + [("ssapo", "margin")])
@pytest.mark.parametrize("weighted", [False, True])
def test_preference_kernel_matches_the_reference(
    loss_type: str, space: str, weighted: bool, launches: dict[str, int]
) -> None:
    logps, extras = preference_inputs(1500)  # more pairs than one program's block
    kwargs = loss_kwargs(loss_type, extras, space)
    if not weighted:
        kwargs.pop("weights", None)
    ours_in = [leaf(t, torch.float32) for t in logps]
    ref_in = [leaf(t, torch.float32) for t in logps]
    ours = ops.preference_losses(*ours_in, **kwargs)
    ref = preference_losses_reference(*ref_in, **kwargs)
    assert launches["preference"] == 1
    scale = ref.losses.abs().max().item()
    torch.testing.assert_close(ours.losses, ref.losses, rtol=1e-5, atol=1e-6 * max(scale, 1.0))
    torch.testing.assert_close(ours.chosen_rewards, ref.chosen_rewards)
    torch.testing.assert_close(ours.rejected_rewards, ref.rejected_rewards)
    # ssapo's probability space divides by sigmoid(z) - D, which amplifies float32 rounding near the floor.
    for got, want in zip(grads(ours.losses, tuple(ours_in)), grads(ref.losses, tuple(ref_in))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * max(want.abs().max().item(), 1.0))


@pytest.mark.parametrize("loss_type", ["sigmoid", "ssapo", "sppo"])
def test_preference_kernel_bfloat16_inputs(loss_type: str) -> None:
    logps, extras = preference_inputs(64, seed=7)
    kwargs = loss_kwargs(loss_type, extras)
    low = [t.to(torch.bfloat16) for t in logps]
    results = {}
    for name, dtype, fn in (
        ("ours", torch.bfloat16, ops.preference_loss),
        ("plain", torch.bfloat16, lambda *a, **k: preference_losses_reference(*a, **k).losses.mean()),
        ("exact", torch.float64, lambda *a, **k: preference_losses_reference(*a, **k).losses.mean()),
    ):
        inputs = [leaf(t, dtype) for t in low]
        out = fn(*inputs, **kwargs)
        results[name] = (out, *grads(out, tuple(inputs)))
    assert results["ours"][1].dtype == torch.bfloat16
    for i in range(5):
        assert low_precision_ok(results["ours"][i], results["plain"][i], results["exact"][i]), i


def test_preference_kernel_checks_values_and_gradient_needs() -> None:
    logps, extras = preference_inputs(5)
    with pytest.raises(ValueError, match=r"chosen_win_prob: win probabilities must lie in \[0, 1\]"):
        ops.preference_loss(
            *logps,
            loss_type="sppo",
            chosen_win_prob=extras["chosen_win_prob"] + 1,
            rejected_win_prob=extras["rejected_win_prob"],
        )
    with pytest.raises(ValueError, match="weights: per-pair weights must be finite and >= 0"):
        ops.preference_loss(*logps, weights=-extras["weights"])
    with pytest.raises(ValueError, match="weights: got a tensor that requires grad"):
        ops.preference_loss(*logps, weights=extras["weights"].requires_grad_())


def test_torch_compile_traces_the_triton_ops() -> None:
    logits = torch.randn(4, 9, 40)
    labels = make_labels(4, 9, 40)
    ref = torch.randn(4)

    def step(x: torch.Tensor) -> torch.Tensor:
        logps = ops.sequence_logps(x, labels)
        return ops.preference_loss(logps[:2], logps[2:], ref[:2], ref[2:], loss_type="ipo")

    eager_in, compiled_in = leaf(logits, torch.float32), leaf(logits, torch.float32)
    eager = step(eager_in)
    eager.backward()
    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(compiled_in)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_in.grad, eager_in.grad)


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "exo_pair", "robust", "discopop", "sigmoid_norm"])
def test_preference_kernel_f_divergences(loss_type: str, divergence: str, launches: dict[str, int]) -> None:
    logps, extras = preference_inputs(300, seed=8)
    logps = [t / 10 for t in logps]  # log-ratios of a few nats, where the scores are far from linear
    kwargs = {**loss_kwargs(loss_type, extras), "f_divergence_type": divergence, "f_alpha_divergence_coef": 0.3}
    ours_in = [leaf(t, torch.float32) for t in logps]
    ref_in = [leaf(t, torch.float32) for t in logps]
    ours = ops.preference_losses(*ours_in, **kwargs)
    ref = preference_losses_reference(*ref_in, **kwargs)
    assert launches["preference"] == 1
    torch.testing.assert_close(ours.losses, ref.losses, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads(ours.losses, tuple(ours_in)), grads(ref.losses, tuple(ref_in))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_preference_kernel_extreme_margins_stay_finite(loss_type: str, dtype: torch.dtype) -> None:
    _, extras = preference_inputs(4, seed=2)
    kwargs = loss_kwargs(loss_type, extras)
    for sign in (1.0, -1.0):
        chosen, rejected = torch.full((4,), -1.0 - 5e3 * (1 - sign)), torch.full((4,), -1.0 - 5e3 * (1 + sign))
        inputs = [t.to(dtype).requires_grad_() for t in (chosen, rejected, torch.zeros(4), torch.zeros(4))]
        out = ops.preference_losses(*inputs, **kwargs)
        assert bool(torch.isfinite(out.losses).all()), (sign, out.losses)
        assert all(bool(torch.isfinite(g).all()) for g in grads(out.losses, tuple(inputs)))
