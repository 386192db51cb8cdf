"""sgpo.nn's SimPO, CPO and ORPO modules against Liger-Kernel's own classes (uncompiled, on CPU): the loss, every
auxiliary output and the gradients of the input, the weight and the bias, at an odd shape with ignored targets, in
float32 (to rel 1e-4) and bfloat16 (an error against float64 at most twice Liger's own, as in Liger's tests)."""

from __future__ import annotations

import pytest
import torch
from sgpo.nn import FusedLinearCPOLoss, FusedLinearORPOLoss, FusedLinearSimPOLoss
from test_ops import leaf, low_precision_ok, make_labels

liger = pytest.importorskip("liger_kernel.chunked_loss", reason="Liger-Kernel is not installed")

N_PAIRS, SEQ_LEN, WIDTH, VOCAB = 3, 47, 31, 123
# (sgpo class, Liger class name, constructor keyword arguments beyond the defaults)
CASES = {
    "simpo": (FusedLinearSimPOLoss, "LigerFusedLinearSimPOLoss", {"beta": 2.0, "gamma": 0.7, "label_smoothing": 0.1}),
    "simpo-no-nll": (FusedLinearSimPOLoss, "LigerFusedLinearSimPOLoss", {"compute_nll_loss": False, "alpha": 0.3}),
    "cpo": (FusedLinearCPOLoss, "LigerFusedLinearCPOLoss", {"beta": 0.2, "alpha": 0.5, "label_smoothing": 0.1}),
    "cpo-average": (FusedLinearCPOLoss, "LigerFusedLinearCPOLoss", {"average_log_prob": True, "beta": 1.5}),
    "orpo": (FusedLinearORPOLoss, "LigerFusedLinearORPOLoss", {"beta": 0.3}),
    "orpo-no-nll": (FusedLinearORPOLoss, "LigerFusedLinearORPOLoss", {"beta": 0.3, "compute_nll_loss": False}),
}


@pytest.fixture(autouse=True)
def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGPO_KERNELS", "torch")


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = make_labels(2 * N_PAIRS, SEQ_LEN, VOCAB, seed=seed)
    target[-1, -5:] = 11  # Liger's per-token means divide by the count: every row keeps a target
    return {
        "weight": torch.randn(VOCAB, WIDTH, generator=generator) / 4,
        "bias": torch.randn(VOCAB, generator=generator) / 2,
        "input": torch.randn(2 * N_PAIRS, SEQ_LEN, WIDTH, generator=generator),
        "target": target,
    }


def run(module: torch.nn.Module, data: dict, dtype: torch.dtype, **call) -> tuple:
    weight, hidden, bias = (leaf(data[k], dtype) for k in ("weight", "input", "bias"))
    loss, aux = module(weight, hidden, data["target"], bias, **call)
    loss.backward()
    return loss, aux, (hidden.grad, weight.grad, bias.grad)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_liger_in_float32(case: str) -> None:
    ours_cls, theirs_name, kwargs = CASES[case]
    data = batch()
    theirs = run(getattr(liger, theirs_name)(compiled=False, **kwargs), data, torch.float32)
    ours = run(ours_cls(**kwargs), data, torch.float32)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    assert len(ours[1]) == len(theirs[1])
    for i, (a, b) in enumerate(zip(ours[1], theirs[1])):
        torch.testing.assert_close(a, b.detach().float(), rtol=1e-4, atol=1e-5, msg=f"aux[{i}]")
    for name, a, b in zip(("input", "weight", "bias"), ours[2], theirs[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("case", ["simpo", "cpo", "orpo"])
def test_bfloat16_error_at_most_twice_liger(case: str) -> None:
    ours_cls, theirs_name, kwargs = CASES[case]
    data = batch(1)
    exact = run(ours_cls(**kwargs), data, torch.float64)
    theirs = run(getattr(liger, theirs_name)(compiled=False, **kwargs), data, torch.bfloat16)
    ours = run(ours_cls(**kwargs), data, torch.bfloat16)
    assert ours[2][1].dtype == torch.bfloat16
    # sums over many tokens: whose signed rounding errors cancel more is luck, so they also get one bfloat16 rounding
    # of the result (our per-token log-probs are the closer ones: sgpo.ops adds the bias inside the bfloat16 matmul)
    rounding = 2.0**-8
    assert low_precision_ok(ours[0], theirs[0], exact[0], slack=rounding), "loss"
    for i in (0, 1, 5, 6):
        assert low_precision_ok(ours[1][i], theirs[1][i], exact[1][i], slack=rounding), f"aux[{i}]"
    for name, a, b, e in zip(("input", "weight", "bias"), ours[2], theirs[2], exact[2]):
        assert low_precision_ok(a, b, e), name


def test_orpo_nll_target_and_constructor_order() -> None:
    data = batch(2)
    nll_target = make_labels(2 * N_PAIRS, SEQ_LEN, VOCAB, seed=9)
    # positional arguments in Liger's order: ignore_index, beta, compute_nll_loss, compiled, chunk_size
    theirs = run(liger.LigerFusedLinearORPOLoss(-100, 0.2, True, False, 1), data, torch.float32, nll_target=nll_target)
    ours = run(FusedLinearORPOLoss(-100, 0.2, True, False, 1), data, torch.float32, nll_target=nll_target)
    plain = run(FusedLinearORPOLoss(-100, 0.2, True, False, 1), data, torch.float32)
    assert abs(ours[1][4].item() - plain[1][4].item()) > 1e-3, "nll_target changed nothing"
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(ours[2], theirs[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bad_label_smoothing_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0.0, 0.5\] for loss_type='simpo' .*, got 0.7"):
        FusedLinearSimPOLoss(label_smoothing=0.7)
    with pytest.raises(ValueError, match=r"_input: expected shape \(2 \* n_pairs, T, H\)"):
        FusedLinearCPOLoss()(torch.randn(VOCAB, WIDTH), torch.randn(3, SEQ_LEN, WIDTH), torch.zeros(3, SEQ_LEN).long())
