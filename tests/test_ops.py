"""sgpo.ops on the lean PyTorch path, checked against sgpo.reference: values and every gradient, float32 and bfloat16,
odd shapes, ignored labels, rows with every label ignored, bad labels, and tracing under torch.compile."""

from __future__ import annotations

import pytest
import torch
from sgpo import ops
from sgpo.ops import dispatch, fused_linear
from sgpo.reference import (
    BATCH_COUPLED,
    LENGTH_NORMALISED,
    LOSS_TYPES,
    preference_losses_reference,
    sequence_logps_reference,
)

IGNORE = -100


@pytest.fixture(autouse=True)
def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGPO_KERNELS", "torch")


def make_labels(batch: int, seq_len: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Random labels with a masked prompt, sprinkled ignored positions and one row ignored entirely."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    labels[:, : seq_len // 4] = IGNORE
    labels[torch.rand(batch, seq_len, generator=generator) < 0.1] = IGNORE
    labels[-1] = IGNORE
    return labels


def low_precision_ok(ours: torch.Tensor, plain: torch.Tensor, exact: torch.Tensor, slack: float = 1e-5) -> bool:
    """Our low-precision error against the float64 result is at most twice plain PyTorch's, plus a tiny slack."""
    ours, plain, exact = ours.detach().double(), plain.detach().double(), exact.detach()
    ours_err = (ours - exact).abs().max()
    plain_err = (plain - exact).abs().max()
    return bool(ours_err <= 2 * plain_err + slack * max(1.0, float(exact.abs().max())))


def grads(output: torch.Tensor, inputs: tuple[torch.Tensor, ...], seed: int = 1) -> tuple[torch.Tensor, ...]:
    weight = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    # a loss that ignores an input (sft and the rejected log-probs, reference-free losses) gives it zeros
    weight = weight.to(device=output.device, dtype=output.dtype)
    return torch.autograd.grad(output, inputs, weight, allow_unused=True, materialize_grads=True)


def leaf(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.detach().to(dtype).requires_grad_()


SHAPES = [(3, 47, 123), (2, 5, 1000), (1, 1, 7)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_float32(shape: tuple[int, int, int], average: bool) -> None:
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 4
    labels = make_labels(*shape)
    ours_in, ref_in = leaf(logits, torch.float32), leaf(logits, torch.float32)
    ours = ops.sequence_logps(ours_in, labels, average=average)
    ref = sequence_logps_reference(ref_in, labels, average=average)
    assert ours.dtype == torch.float32 and ours.shape == (shape[0],)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert ours[-1].item() == 0.0  # every label ignored
    torch.testing.assert_close(grads(ours, (ours_in,))[0], grads(ref, (ref_in,))[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_bfloat16_error_at_most_twice_plain(average: bool) -> None:
    shape = (3, 47, 123)
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 4
    labels = make_labels(*shape)
    results = {}
    for name, dtype, fn in (
        ("ours", torch.bfloat16, ops.sequence_logps),
        ("plain", torch.bfloat16, sequence_logps_reference),
        ("exact", torch.float64, sequence_logps_reference),
    ):
        x = leaf(logits.to(torch.bfloat16), dtype)
        out = fn(x, labels, average=average)
        results[name] = (out, grads(out, (x,))[0])
    assert results["ours"][1].dtype == torch.bfloat16
    for i in range(2):
        assert low_precision_ok(results["ours"][i], results["plain"][i], results["exact"][i])


def test_sequence_logps_float64_follows_the_reference_in_float64() -> None:
    logits = torch.randn(2, 9, 31, dtype=torch.float64, requires_grad=True)
    labels = make_labels(2, 9, 31)
    ours = ops.sequence_logps(logits, labels)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, sequence_logps_reference(logits, labels), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: ops.sequence_logps(x, labels, average=True), (logits,))


def test_sequence_logps_inplace_backward_writes_the_gradient_over_the_logits() -> None:
    shape = (3, 17, 40)
    base = torch.randn(shape)
    labels = make_labels(*shape)
    source = leaf(base, torch.float32)
    logits = source * 1.0  # a non-leaf buffer that the backward may overwrite
    out = ops.sequence_logps(logits, labels, inplace_backward=True)
    (grad_source,) = grads(out, (source,))
    ref_in = leaf(base, torch.float32)
    (expected,) = grads(sequence_logps_reference(ref_in, labels), (ref_in,))
    torch.testing.assert_close(grad_source, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-5, atol=1e-6)


def test_sequence_logps_accepts_sliced_logits() -> None:
    full = torch.randn(2, 12, 30, requires_grad=True)
    labels = make_labels(2, 11, 30)
    ours = ops.sequence_logps(full[:, :-1], labels)
    ref = sequence_logps_reference(full[:, :-1], labels)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grads(ours, (full,))[0], grads(ref, (full,))[0])


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.tensor([[0, 5, 30]]), r"labels: value 30 is outside the vocabulary \[0, 30\)"),
        (torch.tensor([[0, -1, 2]]), r"labels: value -1 is outside the vocabulary"),
        (torch.tensor([[0.0, 1.0, 2.0]]), r"labels: expected an integer tensor"),
        (torch.tensor([[0, 1]]), r"labels: expected shape \(1, 3\)"),
    ],
)
def test_bad_labels_raise_a_clear_error(labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ops.sequence_logps(torch.randn(1, 3, 30), labels)
    with pytest.raises(ValueError, match=match):
        ops.fused_linear_sequence_logps(torch.randn(1, 3, 8), torch.randn(30, 8), labels)


def test_fused_linear_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"weight: expected shape \(V, 8\)"):
        ops.fused_linear_sequence_logps(torch.randn(1, 3, 8), torch.randn(30, 9), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"bias: expected shape \(30,\)"):
        ops.fused_linear_sequence_logps(
            torch.randn(1, 3, 8), torch.randn(30, 8), torch.zeros(1, 3, dtype=torch.long), bias=torch.randn(29)
        )
    with pytest.raises(ValueError, match="chunk_tokens: expected an integer >= 1, got 0"):
        ops.fused_linear_sequence_logps(
            torch.randn(1, 3, 8), torch.randn(30, 8), torch.zeros(1, 3, dtype=torch.long), chunk_tokens=0
        )


def fused_case(shape: tuple[int, int, int], width: int, seed: int = 4) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    batch, seq_len, vocab = shape
    hidden = torch.randn(batch, seq_len, width, generator=generator)
    weight = torch.randn(vocab, width, generator=generator) / width**0.5 * 3
    bias = torch.randn(vocab, generator=generator)
    return hidden, weight, bias, make_labels(*shape, seed=seed)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("average", [False, True])
def test_fused_linear_matches_the_unfused_reference(
    monkeypatch: pytest.MonkeyPatch, with_bias: bool, average: bool
) -> None:
    # Small tiles and chunks, so several token chunks and vocabulary blocks (and a ragged last block) are exercised.
    monkeypatch.setattr(fused_linear, "_TILE_ELEMENTS", 256 * 16)
    hidden, weight, bias, labels = fused_case((3, 47, 1000), 31)
    ours_in = [leaf(t, torch.float32) for t in (hidden, weight, bias)]
    ref_in = [leaf(t, torch.float32) for t in (hidden, weight, bias)]
    ours = ops.fused_linear_sequence_logps(
        ours_in[0], ours_in[1], labels, bias=ours_in[2] if with_bias else None, average=average, chunk_tokens=13
    )
    logits = ref_in[0] @ ref_in[1].t() + (ref_in[2] if with_bias else 0)
    ref = sequence_logps_reference(logits, labels, average=average)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    n = 3 if with_bias else 2
    for got, want in zip(grads(ours, tuple(ours_in[:n])), grads(ref, tuple(ref_in[:n]))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("low_dtype", [torch.bfloat16, torch.float16])
def test_fused_linear_low_precision_error_at_most_twice_plain(
    monkeypatch: pytest.MonkeyPatch, low_dtype: torch.dtype
) -> None:
    monkeypatch.setattr(fused_linear, "_TILE_ELEMENTS", 256 * 64)
    hidden, weight, bias, labels = fused_case((3, 47, 1000), 64, seed=5)
    low = [t.to(low_dtype) for t in (hidden, weight, bias)]
    results = {}
    for name, dtype in (("ours", low_dtype), ("plain", low_dtype), ("exact", torch.float64)):
        h, w, b = (leaf(t, dtype) for t in low)
        if name == "ours":
            out = ops.fused_linear_sequence_logps(h, w, labels, bias=b, chunk_tokens=50)
        else:
            out = sequence_logps_reference(h @ w.t() + b, labels)
        results[name] = (out, *grads(out, (h, w, b)))
    for i in range(4):
        assert low_precision_ok(results["ours"][i], results["plain"][i], results["exact"][i]), i


@pytest.mark.parametrize("head_dtype", [torch.float16, torch.bfloat16])
def test_fused_linear_float32_hidden_before_a_low_precision_head(head_dtype: torch.dtype) -> None:
    """A mixed-precision model's last norm can hand a float32 hidden state to a float16 head: the op multiplies in
    the head's dtype, as the head's own forward would after casting, and gives the hidden state a float32 gradient."""
    hidden, weight, _, labels = fused_case((2, 9, 50), 8)
    hidden = hidden.requires_grad_()
    weight = weight.to(head_dtype).requires_grad_()
    out = ops.fused_linear_sequence_logps(hidden, weight, labels)
    ref_hidden, ref_weight = leaf(hidden, head_dtype), leaf(weight, head_dtype)
    ref = sequence_logps_reference(ref_hidden @ ref_weight.t(), labels)
    assert out.dtype == torch.float32 and ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    got_hidden, got_weight = grads(out, (hidden, weight))
    want_hidden, want_weight = grads(ref, (ref_hidden, ref_weight))
    assert got_hidden.dtype == torch.float32 and got_weight.dtype == head_dtype
    torch.testing.assert_close(got_hidden, want_hidden.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got_weight.float(), want_weight.float(), rtol=2e-2, atol=2e-2)


def test_fused_linear_follows_autocast_like_a_linear_layer() -> None:
    """Under autocast a float32 head multiplies in autocast's dtype, as F.linear does there."""
    hidden, weight, _, labels = fused_case((2, 9, 50), 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.fused_linear_sequence_logps(hidden, weight, labels)
        ref = sequence_logps_reference(torch.nn.functional.linear(hidden, weight), labels)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    exact = sequence_logps_reference(hidden @ weight.t(), labels)
    assert (out - exact).abs().max() > 1e-4  # it did multiply in bfloat16


def test_fused_linear_frozen_head_gets_no_gradient() -> None:
    hidden, weight, _, labels = fused_case((2, 9, 50), 8)
    hidden.requires_grad_()
    out = ops.fused_linear_sequence_logps(hidden, weight, labels)
    (grad,) = grads(out, (hidden,))
    ref_in = leaf(hidden, torch.float32)
    (expected,) = grads(sequence_logps_reference(ref_in @ weight.t(), labels), (ref_in,))
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
    assert weight.grad is None


def preference_inputs(n: int, seed: int = 6) -> tuple[list[torch.Tensor], dict]:
    generator = torch.Generator().manual_seed(seed)
    logps = [-20 + 5 * torch.randn(n, generator=generator) for _ in range(4)]
    extras = {
        "chosen_win_prob": torch.rand(n, generator=generator),
        "rejected_win_prob": torch.rand(n, generator=generator),
        "worst_case": (torch.rand(n, 6, generator=generator), 0.4 * torch.rand(n, 6, generator=generator) - 0.2),
        "weights": torch.rand(n, generator=generator) * 2,
        "lengths": (torch.randint(1, 30, (n,), generator=generator), torch.randint(1, 30, (n,), generator=generator)),
    }
    return logps, extras


def loss_kwargs(loss_type: str, extras: dict, space: str = "probability") -> dict:
    """Arguments that exercise every option ``loss_type`` reads (lengths, smoothing, its own settings)."""
    kwargs: dict = {"loss_type": loss_type, "beta": 0.2, "weights": extras["weights"]}
    if loss_type in ("sigmoid", "robust", "aot", "aot_unpaired", "simpo", "cpo"):
        kwargs["label_smoothing"] = 0.15
    if loss_type == "exo_pair":
        kwargs["label_smoothing"] = 0.05
    if loss_type == "sppo":
        kwargs.update(chosen_win_prob=extras["chosen_win_prob"], rejected_win_prob=extras["rejected_win_prob"])
    if loss_type == "ssapo":
        kwargs.update(worst_case=extras["worst_case"], space=space)
    if loss_type in LENGTH_NORMALISED:
        kwargs.update(chosen_lengths=extras["lengths"][0], rejected_lengths=extras["lengths"][1])
    if loss_type in BATCH_COUPLED:
        del kwargs["weights"]
    if loss_type == "discopop":
        kwargs["discopop_tau"] = 0.5
    if loss_type == "simpo":
        kwargs["simpo_gamma"] = 0.3
    return kwargs


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_preference_loss_cpu_path_is_the_reference(loss_type: str) -> None:
    logps, extras = preference_inputs(47)
    kwargs = loss_kwargs(loss_type, extras)
    ours_in = [leaf(t, torch.float32) for t in logps]
    ref_in = [leaf(t, torch.float32) for t in logps]
    ours = ops.preference_losses(*ours_in, **kwargs)
    ref = preference_losses_reference(*ref_in, **kwargs)
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want)
    loss = ops.preference_loss(*ours_in, **kwargs)
    torch.testing.assert_close(loss, ref.losses.mean())
    for got, want in zip(grads(loss, tuple(ours_in)), grads(ref.losses.mean(), tuple(ref_in))):
        torch.testing.assert_close(got, want)


def test_sgpo_kernels_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGPO_KERNELS", "fast")
    with pytest.raises(ValueError, match="SGPO_KERNELS: unknown value 'fast'"):
        ops.sequence_logps(torch.randn(1, 2, 5), torch.zeros(1, 2, dtype=torch.long))
    monkeypatch.setenv("SGPO_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ops.sequence_logps(torch.randn(1, 2, 5), torch.zeros(1, 2, dtype=torch.long))


def test_dispatch_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("SGPO_KERNELS")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    assert dispatch.choose_backend(cpu, torch.float32) == "torch"
    assert dispatch.choose_backend(cuda, torch.bfloat16) == "triton"
    assert dispatch.choose_backend(cuda, torch.float64) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.choose_backend(cpu, torch.float32) == "triton"
    monkeypatch.setenv("SGPO_KERNELS", "torch")
    assert dispatch.choose_backend(cuda, torch.float32) == "torch"
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    monkeypatch.delenv("SGPO_KERNELS")
    assert dispatch.choose_backend(cuda, torch.float32) == "torch"


def compiled_step_matches_eager(step, *inputs: torch.Tensor, fullgraph: bool) -> None:
    eager_in = [leaf(t, torch.float32) for t in inputs]
    compiled_in = [leaf(t, torch.float32) for t in inputs]
    eager = step(*eager_in)
    eager.backward()
    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=fullgraph)(*compiled_in)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(compiled_in, eager_in):
        torch.testing.assert_close(a.grad, b.grad)


def test_torch_compile_traces_a_fused_linear_training_step() -> None:
    hidden, weight, _, labels = fused_case((4, 11, 60), 16)
    ref = torch.randn(4)

    def step(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logps = ops.fused_linear_sequence_logps(h, w, labels)
        return ops.preference_loss(logps[:2], logps[2:], ref[:2], ref[2:], beta=0.5)

    compiled_step_matches_eager(step, hidden, weight, fullgraph=True)


def test_torch_compile_traces_a_step_from_logits() -> None:
    logits = torch.randn(4, 11, 60)
    labels = make_labels(4, 11, 60)
    weights = torch.tensor([1.0, 0.5])

    def step(x: torch.Tensor) -> torch.Tensor:
        logps = ops.sequence_logps(x * 2.0, labels, average=True)
        zeros = torch.zeros(2)
        return ops.preference_loss(
            logps[:2], logps[2:], zeros, zeros, loss_type="robust", label_smoothing=0.1, weights=weights
        )

    compiled_step_matches_eager(step, logits, fullgraph=False)
