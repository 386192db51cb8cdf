"""The fused linear log-probs on their Triton path (sgpo.ops.fused_linear_triton and sgpo.kernels.fused_logps) under
the interpreter (TRITON_INTERPRET=1, CPU tensors; cuBLAS's part runs as torch.mm on the CPU), against sgpo.reference:
values, WPO's log sum p^2 and every gradient, float32 and the 2x rule in bfloat16 and float16, a vocabulary that no
block divides, labels on block edges, ignored rows, several token chunks, bad labels, torch.compile."""

from __future__ import annotations

import os

import pytest

# tests/test_fused_head.py runs this module in a process started with TRITON_INTERPRET=1
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "needs TRITON_INTERPRET=1 from process start; run through tests/test_fused_head.py", allow_module_level=True
    )

pytest.importorskip("triton")

import torch  # noqa: E402
from sgpo import ops  # noqa: E402
from sgpo.kernels import fused_logps  # noqa: E402
from sgpo.ops import dispatch  # noqa: E402
from sgpo.reference import sequence_logps_reference  # noqa: E402
from test_ops import grads, leaf, low_precision_ok  # noqa: E402

VOCAB, BLOCK = 100, 32  # blocks of 32, 32, 32 and a ragged 4
EDGES = (0, 31, 32, 63, 64, 95, 96, 99)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGPO_KERNELS", "triton")
    monkeypatch.setattr(dispatch, "TRITON_BLOCK", BLOCK)
    monkeypatch.setattr(dispatch, "TRITON_NUM_WARPS", 4)


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"fold_tile": 0, "grad_tile": 0}
    for name in counts:
        original = getattr(fused_logps, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(fused_logps, name, counted)
    return counts


def case(batch: int = 3, seq_len: int = 13, hidden: int = 24, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Hidden states, head, bias and labels with every block edge labelled, a masked prompt, an ignored position
    inside a response and one row ignored entirely."""
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, seq_len, hidden, generator=generator)
    w = torch.randn(VOCAB, hidden, generator=generator) / hidden**0.5 * 3
    b = torch.randn(VOCAB, generator=generator)
    labels = torch.randint(0, VOCAB, (batch, seq_len), generator=generator)
    labels[0, 2 : 2 + len(EDGES)] = torch.tensor(EDGES)
    labels[:, :2] = -100
    labels[1, 5] = -100
    labels[-1] = -100
    return h, w, b, labels


def reference(h, w, b, labels, average=False):
    return sequence_logps_reference(h @ w.t() + (0 if b is None else b), labels, average=average)


@pytest.mark.parametrize(("with_bias", "chunk_tokens"), [(False, None), (True, 7)])
def test_float32_matches_the_reference(launches: dict[str, int], with_bias: bool, chunk_tokens: int | None) -> None:
    h, w, b, labels = case()
    ours_in = [leaf(t, torch.float32) for t in (h, w, b)]
    exact_in = [leaf(t, torch.float64) for t in (h, w, b)]
    bias, exact_bias = (ours_in[2], exact_in[2]) if with_bias else (None, None)
    ours = ops.fused_linear_sequence_logps(ours_in[0], ours_in[1], labels, bias=bias, chunk_tokens=chunk_tokens)
    exact = reference(exact_in[0], exact_in[1], exact_bias, labels)
    torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-5)
    assert ours[-1].item() == 0.0
    n = 3 if with_bias else 2
    for got, want in zip(grads(ours, tuple(ours_in[:n])), grads(exact, tuple(exact_in[:n]))):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    # Both passes ran over every tile: 4 vocabulary blocks times the token chunks of the counted rows.
    counted = int((labels != -100).sum())
    chunks = 1 if chunk_tokens is None else -(-counted // chunk_tokens)
    assert launches == {"fold_tile": 4 * chunks, "grad_tile": 4 * chunks}


@pytest.mark.parametrize("low_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_at_most_twice_plain(low_dtype: torch.dtype) -> None:
    h, w, b, labels = case(seed=1)
    low = [t.to(low_dtype) for t in (h, w, b)]
    results = {}
    for name, dtype in (("ours", low_dtype), ("plain", low_dtype), ("exact", torch.float64)):
        x, y, z = (leaf(t, dtype) for t in low)
        if name == "ours":
            # 7 tokens a chunk: the head's gradient is summed over chunks in float32 and rounded once
            out = ops.fused_linear_sequence_logps(x, y, labels, bias=z, chunk_tokens=7)
        else:
            out = reference(x, y, z, labels)
        results[name] = (out, *grads(out, (x, y, z)))
    assert results["ours"][2].dtype == low_dtype
    for i in range(4):
        assert low_precision_ok(results["ours"][i], results["plain"][i], results["exact"][i]), i


def test_wpo_log_sum_sq_probs_from_the_same_pass() -> None:
    h, w, b, labels = case(seed=2)
    token, log_sum_sq = ops.fused_linear_token_logps(h, w, labels, bias=b, chunk_tokens=5, log_sum_sq_probs=True)
    log_probs = torch.log_softmax(h.double() @ w.double().t() + b.double(), -1)
    counted = labels != -100
    expected = torch.where(counted, torch.logsumexp(2 * log_probs, -1), 0.0)
    torch.testing.assert_close(log_sum_sq.double(), expected, rtol=1e-5, atol=1e-5)
    plain = ops.fused_linear_token_logps(h, w, labels, bias=b, chunk_tokens=5)
    torch.testing.assert_close(token, plain, rtol=0, atol=0)


def test_every_label_ignored_gives_zeros_and_zero_gradients(launches: dict[str, int]) -> None:
    h, w, _, labels = case()
    h, w = leaf(h, torch.float32), leaf(w, torch.float32)
    out = ops.fused_linear_sequence_logps(h, w, torch.full_like(labels, -100))
    assert bool((out == 0).all())
    grad_h, grad_w = grads(out, (h, w))
    assert bool((grad_h == 0).all()) and bool((grad_w == 0).all())
    assert launches == {"fold_tile": 0, "grad_tile": 0}


def test_a_label_outside_the_vocabulary_raises_by_value() -> None:
    h, w, _, labels = case()
    labels[0, 6] = VOCAB
    with pytest.raises(ValueError, match=rf"labels: value {VOCAB} is outside the vocabulary \[0, {VOCAB}\)"):
        ops.fused_linear_sequence_logps(h, w, labels)


def test_a_block_of_banned_logits_stays_finite() -> None:
    h, w, b, labels = case(seed=3)
    b[BLOCK : 2 * BLOCK] = -torch.inf  # the whole second block
    labels[labels // BLOCK == 1] = 0
    x, y = leaf(h, torch.float32), leaf(w, torch.float32)
    out = ops.fused_linear_sequence_logps(x, y, labels, bias=b)
    torch.testing.assert_close(out, reference(h, w, b, labels), rtol=1e-5, atol=1e-4)
    grad_h, grad_w = grads(out, (x, y))
    assert bool(torch.isfinite(grad_h).all()) and bool((grad_w[BLOCK : 2 * BLOCK] == 0).all())


def test_torch_compile_traces_the_triton_path(launches: dict[str, int]) -> None:
    h, w, _, labels = case(batch=4, seed=4)
    ref = torch.randn(4)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logps = ops.fused_linear_sequence_logps(x, y, labels)
        return ops.preference_loss(logps[:2], logps[2:], ref[:2], ref[2:], beta=0.5)

    eager_in = [leaf(t, torch.float32) for t in (h, w)]
    compiled_in = [leaf(t, torch.float32) for t in (h, w)]
    eager = step(*eager_in)
    eager.backward()
    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(*compiled_in)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(compiled_in, eager_in):
        torch.testing.assert_close(a.grad, b.grad)
    # eager and compiled, one token chunk by four vocabulary blocks each
    assert launches == {"fold_tile": 2 * 4, "grad_tile": 2 * 4}
