"""sgpo.nn.FusedLinearPreferenceLoss against the composition of the unfused reference ops, and against Liger-Kernel's
LigerFusedLinearDPOLoss for the loss types both have."""

from __future__ import annotations

import pytest
import torch
from sgpo.nn import FusedLinearPreferenceLoss
from sgpo.reference import LOSS_TYPES, preference_losses_reference, sequence_logps_reference
from test_ops import leaf, loss_kwargs, make_labels, preference_inputs

N_PAIRS, SEQ_LEN, WIDTH, VOCAB = 3, 31, 16, 123


@pytest.fixture(autouse=True)
def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGPO_KERNELS", "torch")


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = make_labels(2 * N_PAIRS, SEQ_LEN, VOCAB, seed=seed)
    target[-1, -3:] = 7  # every row keeps a response token, so length normalisation is defined
    return {
        "weight": torch.randn(VOCAB, WIDTH, generator=generator) / 2,
        "bias": torch.randn(VOCAB, generator=generator),
        "input": torch.randn(2 * N_PAIRS, SEQ_LEN, WIDTH, generator=generator),
        "ref_input": torch.randn(2 * N_PAIRS, SEQ_LEN, WIDTH, generator=generator),
        "ref_weight": torch.randn(VOCAB, WIDTH, generator=generator) / 2,
        "target": target,
    }


def extras_for(loss_type: str, space: str = "probability") -> tuple[dict, dict]:
    """(constructor kwargs, forward kwargs) for a loss type, and the matching reference kwargs inside the second."""
    _, extras = preference_inputs(N_PAIRS, seed=3)
    reference = loss_kwargs(loss_type, extras, space)
    keys = ("loss_type", "beta", "label_smoothing", "discopop_tau", "simpo_gamma")
    init = {k: reference[k] for k in keys if k in reference}
    if loss_type == "ssapo":
        init["space"] = space
    if loss_type == "ipo":
        init["ipo_length_normalized"] = True
    call = {
        k: reference[k] for k in ("chosen_win_prob", "rejected_win_prob", "worst_case", "weights") if k in reference
    }
    return init, call


@pytest.mark.parametrize(("loss_type", "space"), [(t, "probability") for t in LOSS_TYPES] + [("ssapo", "margin")])
def test_module_matches_composed_reference_ops(loss_type: str, space: str) -> None:
    data = batch()
    init, call = extras_for(loss_type, space)
    weight, hidden, bias = (leaf(data[k], torch.float32) for k in ("weight", "input", "bias"))
    loss_fn = FusedLinearPreferenceLoss(**init)
    loss, aux = loss_fn(weight, hidden, data["target"], bias, data["ref_input"], data["ref_weight"], **call)
    got = torch.autograd.grad(loss, (weight, hidden, bias))

    ref_w, ref_h, ref_b = (leaf(data[k], torch.float32) for k in ("weight", "input", "bias"))
    logps = sequence_logps_reference(ref_h @ ref_w.t() + ref_b, data["target"])
    ref_logps = sequence_logps_reference(data["ref_input"] @ data["ref_weight"].t(), data["target"])
    counts = (data["target"] != -100).sum(-1)
    kwargs = {k: v for k, v in init.items() if k != "ipo_length_normalized"}
    if loss_type in ("ipo", "sigmoid_norm"):
        kwargs.update(chosen_lengths=counts[:N_PAIRS], rejected_lengths=counts[N_PAIRS:])
    if loss_type == "sft":
        # TRL's sft: the NLL per chosen token of the batch
        mean = (counts[:N_PAIRS].sum() / N_PAIRS).expand(N_PAIRS)
        kwargs.update(chosen_lengths=mean, rejected_lengths=mean)
    expected = preference_losses_reference(
        logps[:N_PAIRS], logps[N_PAIRS:], ref_logps[:N_PAIRS], ref_logps[N_PAIRS:], **kwargs, **call
    )
    expected_loss = expected.losses.mean()
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    for g, e in zip(got, torch.autograd.grad(expected_loss, (ref_w, ref_h, ref_b))):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    assert len(aux) == 7
    torch.testing.assert_close(aux[0], logps[:N_PAIRS].detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(aux[1], logps[N_PAIRS:].detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(aux[5], expected.chosen_rewards, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aux[6], expected.rejected_rewards, rtol=1e-5, atol=1e-5)
    assert aux[4].item() == 0.0


def test_logits_means_nll_and_averaging() -> None:
    data = batch(1)
    weight, hidden, bias = (leaf(data[k], torch.float32) for k in ("weight", "input", "bias"))
    loss_fn = FusedLinearPreferenceLoss(beta=0.3, average_log_prob=True, compute_nll_loss=True, alpha=0.7)
    zeros = torch.zeros(N_PAIRS)
    loss, aux = loss_fn(weight, hidden, data["target"], bias, ref_chosen_logps=zeros, ref_rejected_logps=zeros)
    logits = hidden @ weight.t() + bias
    mean_logps = sequence_logps_reference(logits, data["target"], average=True)
    sum_logps = sequence_logps_reference(logits, data["target"])
    chosen_tokens = (data["target"][:N_PAIRS] != -100).sum()
    nll = -sum_logps[:N_PAIRS].sum() / chosen_tokens
    dpo = -torch.nn.functional.logsigmoid(0.3 * (mean_logps[:N_PAIRS] - mean_logps[N_PAIRS:])).mean()
    torch.testing.assert_close(loss, dpo + 0.7 * nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aux[4], nll.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aux[2], logits[:N_PAIRS].mean().detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(aux[3], logits[N_PAIRS:].mean().detach(), rtol=1e-4, atol=1e-5)


def test_reference_sources() -> None:
    data = batch(2)
    target = data["target"]
    shared = FusedLinearPreferenceLoss()(data["weight"], data["input"], target, ref_input=data["ref_input"])[1]
    ref = sequence_logps_reference(data["ref_input"] @ data["weight"].t(), target)
    torch.testing.assert_close(shared[5], 0.1 * (shared[0] - ref[:N_PAIRS]), rtol=1e-5, atol=1e-5)
    free = FusedLinearPreferenceLoss(use_ref_model=False)(data["weight"], data["input"], target)[1]
    torch.testing.assert_close(free[5], 0.1 * free[0])
    with pytest.raises(ValueError, match="ref_input: use_ref_model=True needs ref_input"):
        FusedLinearPreferenceLoss()(data["weight"], data["input"], target)
    with pytest.raises(ValueError, match="ref_chosen_logps: pass both"):
        FusedLinearPreferenceLoss()(data["weight"], data["input"], target, ref_chosen_logps=torch.zeros(N_PAIRS))


def test_module_argument_errors() -> None:
    data = batch()
    with pytest.raises(ValueError, match="Unsupported loss_type: 'dpo'"):
        FusedLinearPreferenceLoss(loss_type="dpo")
    with pytest.raises(ValueError, match=r"ignore_index: expected an integer, got 'ipo'; pass loss_type by keyword"):
        FusedLinearPreferenceLoss("ipo")
    with pytest.raises(ValueError, match="ipo_length_normalized: only loss_type='ipo'"):
        FusedLinearPreferenceLoss(loss_type="sigmoid", ipo_length_normalized=True)
    with pytest.raises(ValueError, match=r"_input: expected shape \(2 \* n_pairs, T, H\)"):
        FusedLinearPreferenceLoss(use_ref_model=False)(data["weight"], data["input"][:5], data["target"][:5])
    with pytest.raises(ValueError, match="chosen_win_prob: loss_type='sppo' needs"):
        FusedLinearPreferenceLoss(loss_type="sppo", use_ref_model=False)(data["weight"], data["input"], data["target"])


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing"), [("sigmoid", 0.0), ("hinge", 0.0), ("robust", 0.1), ("sppo_hard", 0.0)]
)
@pytest.mark.parametrize("average_log_prob", [False, True])
def test_matches_liger_fused_linear_dpo(loss_type: str, label_smoothing: float, average_log_prob: bool) -> None:
    liger = pytest.importorskip("liger_kernel.chunked_loss", reason="Liger-Kernel is not installed")
    data = batch(4)
    data["target"][-1, -3:] = 5  # Liger's averaging divides by the token count: no empty rows here
    settings = dict(
        loss_type=loss_type,
        beta=0.2,
        label_smoothing=label_smoothing,
        average_log_prob=average_log_prob,
        compute_nll_loss=True,
        alpha=0.5,
    )
    results = []
    for module in (liger.LigerFusedLinearDPOLoss(compiled=False, **settings), FusedLinearPreferenceLoss(**settings)):
        weight, hidden, bias = (leaf(data[k], torch.float32) for k in ("weight", "input", "bias"))
        loss, aux = module(weight, hidden, data["target"], bias, data["ref_input"], data["ref_weight"])
        loss.backward()
        results.append((loss, aux, weight.grad, hidden.grad, bias.grad))
    (loss_l, aux_l, *grads_l), (loss_s, aux_s, *grads_s) = results
    torch.testing.assert_close(loss_s, loss_l, rtol=1e-5, atol=1e-5)
    assert len(aux_s) == len(aux_l)
    for ours, theirs in zip(aux_s, aux_l):
        torch.testing.assert_close(ours, theirs.detach().float(), rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(grads_s, grads_l):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


DROP_INS = [
    ("LigerFusedLinearDPOLoss", "FusedLinearPreferenceLoss"),
    ("LigerFusedLinearSimPOLoss", "FusedLinearSimPOLoss"),
    ("LigerFusedLinearCPOLoss", "FusedLinearCPOLoss"),
    ("LigerFusedLinearORPOLoss", "FusedLinearORPOLoss"),
]


@pytest.mark.parametrize(("liger_name", "ours_name"), DROP_INS)
@pytest.mark.parametrize("method", ["__init__", "forward"])
def test_drop_in_signature_is_ligers(liger_name: str, ours_name: str, method: str) -> None:
    """Liger's parameters, parameter by parameter (name, kind, default), lead ours in its order, so a positional or
    keyword call written for Liger binds the same way; whatever sgpo adds is keyword-only."""
    import inspect

    import sgpo.nn

    liger = pytest.importorskip("liger_kernel.chunked_loss", reason="Liger-Kernel is not installed")
    theirs = list(inspect.signature(getattr(getattr(liger, liger_name), method)).parameters.values())[1:]
    ours = list(inspect.signature(getattr(getattr(sgpo.nn, ours_name), method)).parameters.values())[1:]
    described = [(p.name, p.kind, p.default) for p in ours[: len(theirs)]]
    assert described == [(p.name, p.kind, p.default) for p in theirs]
    extra = [p for p in ours[len(theirs) :] if p.kind not in (p.KEYWORD_ONLY, p.VAR_KEYWORD)]
    assert not extra, f"{ours_name}.{method}: sgpo's own parameters must be keyword-only, got {extra}"
