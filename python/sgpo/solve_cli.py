"""``sgpo solve``: margins on disk -> the follower's worst case (DESIGN 1.2) in an .npz file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "solve",
        help="solve SSAPO's follower exactly: margins -> worst-case weights and shifts (.npz)",
        description="Exact worst case of the margins in an epsilon-Wasserstein ball (SSAPO's follower). "
        "MARGINS is a .npy file, a .pt file holding a 1-D tensor, or a JSONL file with a column "
        "(path.jsonl:column or --column).",
    )
    p.add_argument("margins", metavar="MARGINS", help="margins.npy | margins.pt | pairs.jsonl:column")
    p.add_argument("--column", default=None, help="the JSONL column holding the margins")
    p.add_argument("--epsilon", type=float, required=True, help="Wasserstein radius (paper: 0.005..0.05)")
    p.add_argument("--pieces", type=int, default=6, help="tangent pieces K (default 6)")
    p.add_argument("--space", choices=("probability", "margin"), default="probability")
    p.add_argument("--support", type=float, nargs=2, metavar=("LO", "HI"), default=None)
    p.add_argument("--group-size", type=int, default=None, help="solve consecutive groups of this size")
    p.add_argument("--max-shift", type=float, default=None, help="cap on every |q_ik| (paper's code: epsilon)")
    p.add_argument("--backend", choices=("auto", "cpu", "torch", "paper"), default="auto")
    p.add_argument("--out", default="worst_case.npz", help="output .npz (default worst_case.npz)")
    p.set_defaults(func=run)


def load_margins(path: str, column: str | None = None) -> np.ndarray:
    """Reads margins from .npy, .pt (a 1-D tensor, loaded with weights_only=True) or a JSONL column."""
    if column is None and ".jsonl:" in path:
        path, column = path.rsplit(":", 1)
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"margins file not found: {path}")
    suffix = file.suffix.lower()
    if suffix == ".npy":
        return np.load(file, allow_pickle=False)
    if suffix == ".pt":
        import torch

        obj = torch.load(file, map_location="cpu", weights_only=True)
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{path} must hold a tensor of margins, got {type(obj).__name__}")
        return obj.detach().to(torch.float64).numpy()
    if suffix == ".jsonl":
        if column is None:
            raise ValueError(f"{path} is JSONL: name the column as {path}:COLUMN or with --column")
        values = []
        with file.open() as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if column not in row:
                    raise ValueError(f"{path}:{line_no} has no column {column!r} (columns: {sorted(row)})")
                values.append(row[column])
        return np.asarray(values, dtype=np.float64)
    raise ValueError(f"margins file must be .npy, .pt or .jsonl, got {path!r}")


def run(args: argparse.Namespace) -> int:
    from sgpo.follower import worst_case

    margins = load_margins(args.margins, args.column)
    result = worst_case(
        margins, args.epsilon, pieces=args.pieces, space=args.space,
        support=None if args.support is None else tuple(args.support),
        group_size=args.group_size, max_shift=args.max_shift, backend=args.backend,
    )  # fmt: skip
    w, d = np.asarray(result.weights, dtype=np.float64), np.asarray(result.shifts, dtype=np.float64)
    n = w.shape[0]
    moved = (w * (d != 0)).sum() / n
    transport = (w * np.abs(d)).sum() / n
    attacked = int(((w > 0) & (d != 0)).any(axis=1).sum())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out, weights=result.weights, shifts=result.shifts, value=result.value, dual=result.dual,
        epsilon=args.epsilon, pieces=args.pieces, space=args.space,
        group_size=n if args.group_size is None else args.group_size,
        max_shift=np.nan if args.max_shift is None else args.max_shift,
    )  # fmt: skip
    value, dual = np.asarray(result.value), np.asarray(result.dual)
    groups = value.shape[0]
    print(f"sgpo solve: {n} margins, {groups} group(s), space={args.space}, K={args.pieces}, epsilon={args.epsilon}")
    print(f"  value (worst-case loss): mean {value.mean():.6g}  [min {value.min():.6g}, max {value.max():.6g}]")
    print(f"  dual lambda*:            mean {dual.mean():.6g}  [min {dual.min():.6g}, max {dual.max():.6g}]")
    print(f"  mass moved: {moved:.4%}  transport used: {transport:.6g}  margins attacked: {attacked}/{n}")
    print(f"  wrote {out}")
    return 0
