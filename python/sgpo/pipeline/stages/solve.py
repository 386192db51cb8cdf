"""Solve (SSAPO Alg. 1 step 3): the follower's worst case in the epsilon-Wasserstein ball over the round's margins.

Reads the margins of the round's pairs (``round_<t>/annotations.jsonl``, through :mod:`annotate
<sgpo.pipeline.stages.annotate>`). Writes, in ``round_<t>/``:

    worst_case.json            epsilon, backend, pairs, each group's value and dual, the mass moved, the transport
                               spent and the seconds the solve took
    worst_case.safetensors     the follower's inputs xi and the worst case's weights W and shifts D (n, K): the stage's
                               output, which the leader's ssapo loss reads

The follower's inputs are ``sigmoid(gamma * margin)`` in probability space and ``beta * margin`` in margin space
(DESIGN 1.2); the main process solves, the others read its answer.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sgpo.pipeline import files
from sgpo.pipeline.context import RunContext


def solve(ctx: RunContext, t: int, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The worst case of round ``t``: the summary of ``worst_case.json`` with the arrays ``xi``, ``weights``,
    ``shifts``."""
    from safetensors.numpy import load_file, save_file

    import sgpo
    from sgpo.follower import follower_inputs, moved_mass

    f = ctx.cfg.follower
    path = ctx.round_dir(t) / "worst_case.safetensors"
    if not ctx.done(path):
        margins = np.asarray([p["margin"] for p in pairs], dtype=np.float64)
        xi = follower_inputs(margins, f.space, f.gamma, ctx.cfg.train.beta)
        if ctx.main:
            start = time.perf_counter()
            result = sgpo.worst_case(
                xi,
                f.epsilon,
                pieces=f.pieces,
                space=f.space,
                group_size=f.group_size,
                max_shift=f.max_shift,
                backend=f.backend,
            )
            seconds = time.perf_counter() - start
            weights, shifts = np.asarray(result.weights), np.asarray(result.shifts)
            moved = moved_mass(weights, shifts)
            summary = {
                "epsilon": f.epsilon,
                "backend": f.backend,
                "pairs": len(xi),
                "value": np.atleast_1d(np.asarray(result.value, dtype=np.float64)).tolist(),
                "dual": np.atleast_1d(np.asarray(result.dual, dtype=np.float64)).tolist(),
                "mass_moved": float(moved.sum() / len(xi)),
                "transport": float((weights * np.abs(shifts)).sum() / len(xi)),
                "seconds": seconds,
            }
            files.write_json(ctx.round_dir(t) / "worst_case.json", summary)
            with files.atomic_path(path) as tmp:
                save_file({"xi": xi, "weights": weights, "shifts": shifts}, str(tmp))
        ctx.barrier()
    tensors = load_file(str(path))
    return {**files.read_json(ctx.round_dir(t) / "worst_case.json"), **tensors}
