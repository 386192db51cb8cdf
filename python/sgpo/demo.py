"""``sgpo demo``: build info and every preference loss on a small synthetic batch, in a few seconds."""

from __future__ import annotations

import argparse

import torch

from sgpo.info import collect, format_info
from sgpo.ops import LOSS_TYPES, preference_losses


def loss_table(pairs: int = 8, seed: int = 0, beta: float = 0.1) -> list[tuple[str, float, float]]:
    """(loss_type, mean loss, gradient norm w.r.t. the policy log-probs) on synthetic log-probs."""
    gen = torch.Generator().manual_seed(seed)
    chosen = (-40 + 5 * torch.randn(pairs, generator=gen)).requires_grad_()
    rejected = (-45 + 5 * torch.randn(pairs, generator=gen)).requires_grad_()
    ref_chosen = chosen.detach() + torch.randn(pairs, generator=gen)
    ref_rejected = rejected.detach() + torch.randn(pairs, generator=gen)
    extras = {
        "robust": {"label_smoothing": 0.1},
        "exo_pair": {"label_smoothing": 1e-3},
        "sigmoid_norm": {"chosen_lengths": torch.full((pairs,), 40.0), "rejected_lengths": torch.full((pairs,), 45.0)},
        "sppo": {
            "chosen_win_prob": torch.full((pairs,), 0.7),
            "rejected_win_prob": torch.full((pairs,), 0.3),
        },
        # one piece of weight 1 and no shift: the follower's no-attack point, where ssapo (margin space) is DPO
        "ssapo": {"worst_case": (torch.ones(pairs, 1), torch.zeros(pairs, 1)), "space": "margin"},
    }
    rows = []
    for loss_type in LOSS_TYPES:
        out = preference_losses(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            loss_type=loss_type,
            beta=beta,
            **extras.get(loss_type, {}),
        )
        loss = out.losses.mean()
        # sft reads the chosen log-probs only: the rejected ones get a zero gradient
        grad_w, grad_l = torch.autograd.grad(loss, (chosen, rejected), allow_unused=True, materialize_grads=True)
        rows.append((loss_type, float(loss.detach()), float(torch.cat([grad_w, grad_l]).norm())))
    return rows


def _run(args: argparse.Namespace) -> int:
    print("== build ==")
    print(format_info(collect()))
    print(f"\n== preference losses (beta={args.beta}, {args.pairs} synthetic pairs) ==")
    print(f"{'loss_type':<12} {'loss':>12} {'|grad|':>12}")
    for loss_type, loss, grad in loss_table(args.pairs, args.seed, args.beta):
        print(f"{loss_type:<12} {loss:>12.5f} {grad:>12.5f}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="build info and every loss on a synthetic batch")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run)
