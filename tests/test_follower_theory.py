"""Two facts about the follower under the paper's settings (docs/follower.md, "What the cap does"), checked here:

1. With ``max_shift = epsilon`` the budget buys exactly n slices of ``epsilon`` transport, the n of highest gain; on
   recipe-like margins that is one slice per pair in probability space (every pair moves exactly ``epsilon`` and
   loses ``epsilon / xi`` of its mass); in margin space two slices for the lowest margins, one for the next, none
   for the highest.
2. A uniform reweighting of every pair's loss does not change an AdamW (or RMSprop) run, with or without clipping by
   norm, to float rounding; a reweighting with a spread does.
"""

from __future__ import annotations

import numpy as np
import pytest
import sgpo
import torch
from sgpo.follower import tangent_pieces


def clustered(n: int, space: str, seed: int) -> np.ndarray:
    """Margins as the recipe's follower sees them: sigmoid(0.1 h) in probability space, beta h = 0.1 h in margin
    space, for annotated margins h of a few units."""
    h = np.random.default_rng(seed).normal(0.0, 2.0, size=n)
    return 1 / (1 + np.exp(-0.1 * h)) if space == "probability" else 0.1 * h


def slice_gains(xi: np.ndarray, space: str, pieces: int) -> tuple[np.ndarray, float]:
    """(n, K) gains per unit of budget g_ik = (l_k(lo) - L(xi_i)) / (xi_i - lo) of moving pair i's mass on piece k
    down to lo, and lo."""
    lo = 0.0 if space == "probability" else xi.min() - 1.0
    hi = 1.0 if space == "probability" else xi.max() + 1.0
    a, b = (t[0].numpy() for t in tangent_pieces(space, pieces, torch.tensor([lo]), torch.tensor([hi])))
    envelope = np.max(a[None, :] * xi[:, None] + b[None, :], axis=1)
    return ((a * lo + b)[None, :] - envelope[:, None]) / (xi - lo)[:, None], lo


@pytest.mark.parametrize("space", ["probability", "margin"])
@pytest.mark.parametrize("epsilon", [0.01, 0.05, 0.1])
@pytest.mark.parametrize("seed", range(4))
def test_the_capped_optimum_spends_epsilon_on_each_of_the_n_best_slices(space: str, epsilon: float, seed: int) -> None:
    xi = clustered(128, space, seed)
    gains, lo = slice_gains(xi, space, 6)
    wc = sgpo.worst_case(xi, epsilon, pieces=6, space=space, max_shift=epsilon)
    transport = np.abs(wc.weights * wc.shifts)  # |q_ik| = W_ik |D_ik|
    # the budget n * epsilon buys exactly n slices of epsilon: the n slices of highest gain, each spent in full
    best = np.zeros_like(gains, dtype=bool)
    best.flat[np.argsort(-gains, axis=None)[: xi.size]] = True
    np.testing.assert_allclose(transport[best], epsilon, rtol=1e-9)
    np.testing.assert_allclose(transport[~best], 0.0, atol=1e-12)
    per_pair = transport.sum(axis=1)
    lost = (wc.weights * (np.abs(wc.shifts) > 1e-12)).sum(axis=1)  # transport = moved mass * (xi - lo)
    np.testing.assert_allclose(lost, per_pair / (xi - lo), rtol=1e-9)
    if space == "probability":
        # the first piece (the tangent at 1/K, highest at 0) outbids every second piece: each pair gets one slice,
        # so every pair moves exactly epsilon and loses epsilon / xi_i of its mass, nearly the same for all
        assert gains[:, 0].min() > np.delete(gains, 0, axis=1).max()
        np.testing.assert_allclose(per_pair, epsilon, rtol=1e-9)
    else:
        # the two pieces whose knots lie nearest lo bid almost the same, and a lower margin bids more on both: the
        # lowest margins get two slices (2 epsilon), the next ones one, the highest none
        by_margin = per_pair[np.argsort(xi)] / epsilon
        np.testing.assert_allclose(by_margin, np.round(by_margin), atol=1e-9)
        assert set(np.round(by_margin)) == {0.0, 1.0, 2.0}
        assert np.all(np.diff(by_margin) <= 1e-9)


def test_without_the_cap_the_budget_takes_whole_pairs_of_lowest_margin() -> None:
    xi = clustered(128, "probability", 0)
    wc = sgpo.worst_case(xi, 0.01, pieces=6, space="probability")
    moved = (wc.weights * (np.abs(wc.shifts) > 0)).sum(axis=1)
    attacked = np.flatnonzero(moved > 1e-12)
    # every attacked pair but the last (which the budget only partly covers) loses its whole mass, and they are the
    # lowest margins: a few pairs, not all of them
    assert 1 <= attacked.size <= 10
    assert set(attacked) == set(np.argsort(xi)[: attacked.size])
    assert (np.sort(moved[attacked])[1:] > 1 - 1e-9).all()


def train(
    weights: torch.Tensor, optimizer: str, clip: float | None, steps: int = 6, eps: float = 1e-8
) -> list[torch.Tensor]:
    """A tiny causal LM trained on fixed pairs with the per-pair-weighted DPO loss of sgpo.ops."""
    from sgpo.ops import preference_loss, sequence_logps
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    model = LlamaForCausalLM(config).float()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (2 * weights.numel(), 12), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100
    reference = torch.randn(2 * weights.numel(), generator=g)
    if optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, eps=eps)
    else:
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, eps=eps)
    n = weights.numel()
    for _ in range(steps):
        logits = model(input_ids=ids).logits[:, :-1]
        logps = sequence_logps(logits, labels[:, 1:])
        loss = preference_loss(logps[:n], logps[n:], reference[:n], reference[n:], beta=0.1, weights=weights)
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(torch.cat([(x - y).flatten() for x, y in zip(a, b, strict=True)]).norm())


@pytest.mark.parametrize("optimizer,clip", [("adamw", None), ("adamw", 1e-3), ("rmsprop", None)])
def test_a_uniform_reweighting_does_not_change_the_run(optimizer: str, clip: float | None) -> None:
    # The update divides the gradient by its own running scale, so a constant factor on the loss cancels, and clipping
    # by norm clips both runs alike. Only the optimizer's epsilon, added to that scale, breaks the tie: with it at
    # 1e-16 the runs agree to float rounding; at the default 1e-8 they differ where a gradient is as small as 1e-8.
    start = train(torch.ones(8), optimizer, clip, steps=0)
    full = train(torch.ones(8), optimizer, clip, eps=1e-16)
    shrunk = train(torch.full((8,), 0.8), optimizer, clip, eps=1e-16)
    spread = train(torch.linspace(0.6, 1.0, 8), optimizer, clip, eps=1e-16)
    moved = distance(full, start)
    assert moved > 1e-2  # the run trains
    assert distance(full, shrunk) < 1e-5 * moved  # 0.8 on every pair: the same weights
    assert distance(full, spread) > 1e-2 * moved  # a spread of weights changes the run


def test_with_the_default_epsilon_a_uniform_reweighting_changes_the_run_far_less_than_a_spread() -> None:
    start = train(torch.ones(8), "adamw", None, steps=0)
    full = train(torch.ones(8), "adamw", None)
    shrunk = train(torch.full((8,), 0.8), "adamw", None)
    spread = train(torch.linspace(0.6, 1.0, 8), "adamw", None)
    assert distance(full, shrunk) < 0.1 * distance(full, spread) < 0.1 * distance(full, start)
