"""Which pairs a run's follower attacked, and what that did to their gradient: one summary per self-annotating round.

Read from a finished run directory (its ``round_<t>/`` files and config), so the tables keep the summaries with their
results after the run directories are gone. The gold judge scores the round's chosen and rejected answers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import sgpo.ops
import torch
from safetensors.numpy import load_file
from sgpo.follower import ATTACKED, moved_mass
from sgpo.pipeline.files import read_jsonl
from sgpo.pipeline.stages.update import margin_drop_weights


def gradient_ratio(weights: np.ndarray, shifts: np.ndarray, beta: float, space: str) -> np.ndarray:
    """Per pair: d loss / d log pi(chosen) of the ``ssapo`` loss with the worst case ``(weights, shifts)``, over the
    same derivative with no worst case (epsilon = 0), at training margin 0 (the round's first step)."""
    n = weights.shape[0]

    def grad(w: np.ndarray, d: np.ndarray) -> np.ndarray:
        chosen = torch.zeros(n, dtype=torch.float64, requires_grad=True)
        zeros = torch.zeros(n, dtype=torch.float64)
        out = sgpo.ops.preference_losses(
            chosen,
            zeros,
            zeros,
            zeros,
            loss_type="ssapo",
            beta=beta,
            worst_case=(torch.as_tensor(w), torch.as_tensor(d)),
            space=space,
        )
        out.losses.sum().backward()
        return chosen.grad.numpy().copy()

    nominal_w = np.zeros_like(weights)
    nominal_w[:, 0] = 1.0
    return grad(weights, shifts) / grad(nominal_w, np.zeros_like(shifts))


def round_attack(run_dir: Path, t: int, judge: Any, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """Round ``t`` of ``run_dir`` (config ``cfg``): the attacked pairs' count, mass, margin rank, gold agreement and
    gradient, at the round's start and over its steps; None where the round solved no follower."""
    round_dir = run_dir / f"round_{t}"
    if not (round_dir / "worst_case.safetensors").is_file():
        return None
    tensors = load_file(str(round_dir / "worst_case.safetensors"))
    weights, shifts = tensors["weights"].astype(np.float64), tensors["shifts"].astype(np.float64)
    pairs = read_jsonl(round_dir / "annotations.jsonl")
    margins = np.array([p["margin"] for p in pairs], dtype=np.float64)
    moved = moved_mass(weights, shifts)
    attacked = moved > ATTACKED
    prompts = [p["prompt"] for p in pairs]
    chosen = np.asarray(judge.scores(prompts, [p["chosen"] for p in pairs]), dtype=np.float64)
    rejected = np.asarray(judge.scores(prompts, [p["rejected"] for p in pairs]), dtype=np.float64)
    decided = chosen != rejected
    correct = chosen > rejected
    follower = cfg["follower"]
    space, apply = follower["space"], follower.get("apply", "worst_case")
    if apply == "margin_drop":
        # the pairs the run dropped: as many as the worst case attacks, the lowest by margin
        ratio = margin_drop_weights(margins, int(attacked.sum()))
        attacked = ratio == 0.0
    elif apply == "soft_trim":
        # the soft trim trains each pair's loss times the mass it keeps: at margin 0 that is its gradient's factor
        ratio = 1.0 - moved
    else:
        ratio = gradient_ratio(weights, shifts, float(cfg["train"]["beta"]), space)
    # each pair's margin percentile among the round's pairs (0 = the lowest)
    percentile = np.argsort(np.argsort(margins)) / max(len(margins) - 1, 1)

    def share(mask: np.ndarray) -> float | None:
        m = mask & decided
        return float(correct[m].mean()) if m.any() else None

    steps = read_jsonl(round_dir / "train_log.jsonl") if (round_dir / "train_log.jsonl").is_file() else []
    # a step whose pairs all lost their whole weight (soft trim) has no gradient to share: left out
    grad_shares = [s["attacked_grad_share"] for s in steps if math.isfinite(s.get("attacked_grad_share", math.nan))]
    pair_shares = [s["attacked_pairs"] for s in steps if s.get("attacked_pairs") is not None]
    return {
        "run": str(run_dir),
        "round": t,
        "space": space,
        "epsilon": float(follower["epsilon"]),
        "max_shift": follower.get("max_shift"),
        "apply": follower.get("apply", "worst_case"),
        "pairs": len(pairs),
        "attacked": int(attacked.sum()),
        "mass_moved": float(moved.sum() / len(pairs)),
        "moved_per_pair": [float(moved.min()), float(np.median(moved)), float(moved.max())],
        "attacked_margin_percentile": float(percentile[attacked].mean()) if attacked.any() else None,
        "attacked_margin_percentile_max": float(percentile[attacked].max()) if attacked.any() else None,
        "gold_agrees_attacked": share(attacked),
        "gold_agrees_rest": share(~attacked),
        "gold_agrees_all": share(np.ones_like(attacked)),
        "decided_attacked": int((attacked & decided).sum()),
        "gold_disagrees_attacked": int((attacked & decided & ~correct).sum()),
        "gold_disagrees_all": int((decided & ~correct).sum()),
        "decided_all": int(decided.sum()),
        "gradient_ratio_attacked": float(ratio[attacked].mean()) if attacked.any() else None,
        "gradient_ratio_rest": float(ratio[~attacked].mean()) if (~attacked).any() else None,
        "zero_gradient_pairs": int((np.abs(ratio) < 1e-9).sum()),
        # over the round's optimizer steps: the attacked pairs' share of the pairs and of the loss's gradient
        "attacked_grad_share": float(np.mean(grad_shares)) if grad_shares else None,
        "attacked_pair_share": float(np.mean(pair_shares)) if pair_shares else None,
    }


def run_attack(run_dir: Path, judge: Any, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`round_attack` of every round of a run that solved a follower."""
    rows = [round_attack(run_dir, t, judge, cfg) for t in range(1, int(cfg["rounds"]) + 1)]
    return [r for r in rows if r is not None]
