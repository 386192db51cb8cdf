"""Benchmark of SSAPO's follower: sgpo's exact solve against HiGHS, the paper's SLSQP and np.sort.

    python benchmarks/bench_follower.py [--sizes 2000 60000 1000000 10000000] [--out follower.md]

Every row is one problem (K pieces, epsilon, one group of n margins unless stated) timed in this run; the
ratios in a row are against sgpo's C++ backend in the same run. HiGHS solves the explicit LP of DESIGN 1.2
(sizes up to --highs-max-n). The paper's method (SLSQP, 50 iterations, groups of 100, penalty formulation)
takes tens of seconds per group, so a sample of groups is timed and the total extrapolated to n / 100 groups;
the table says so. np.sort of n float64 is the floor any sort-based exact method pays.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import sgpo
import torch
from scipy.optimize import linprog
from scipy.sparse import coo_matrix
from sgpo.follower import cuda_available, tangent_pieces


def timeit(fn: Callable[[], object], min_time: float = 0.5, max_reps: int = 15) -> float:
    """Median wall time in seconds over repetitions filling about min_time (at least 1, after a warm-up)."""
    fn()
    times: list[float] = []
    while len(times) < max_reps and (sum(times) < min_time or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if times[-1] > min_time:
            break
    return statistics.median(times)


def margins(n: int, space: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.normal(1.0, 8.0, n)  # implicit-reward margins of a DPO-trained policy, roughly
    return 1.0 / (1.0 + np.exp(-0.1 * h)) if space == "probability" else 0.1 * h


def highs_solve(x: np.ndarray, eps: float, K: int, space: str, max_shift: float | None) -> float:
    """The explicit LP of DESIGN 1.2 (variables s, q+ and q-), solved by HiGHS; returns the optimum."""
    n = len(x)
    lo, hi = (0.0, 1.0) if space == "probability" else (x.min() - 1.0, x.max() + 1.0)
    a, b = (t[0].numpy() for t in tangent_pieces(space, K, torch.tensor([lo]), torch.tensor([hi])))
    N = n * K
    c = -np.concatenate([(np.outer(x, a) + b).ravel(), -np.tile(a, n), np.tile(a, n)]) / n
    j = np.arange(N)
    xi = np.repeat(x, K)
    rows = np.concatenate([2 * j] * 3 + [2 * j + 1] * 3 + [np.full(2 * N, 2 * N)])
    cols = np.concatenate([j, N + j, 2 * N + j, j, N + j, 2 * N + j, np.arange(N, 3 * N)])
    ones = np.ones(N)
    vals = np.concatenate([lo - xi, ones, -ones, xi - hi, -ones, ones, np.full(2 * N, 1.0 / n)])
    a_ub = coo_matrix((vals, (rows, cols)), shape=(2 * N + 1, 3 * N)).tocsr()
    a_eq = coo_matrix((ones, (np.repeat(np.arange(n), K), j)), shape=(n, 3 * N)).tocsr()
    b_ub = np.concatenate([np.zeros(2 * N), [eps]])
    bounds = [(0, None)] * N + [(0, max_shift)] * (2 * N)
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.ones(n), bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(res.message)
    return -res.fun


def fmt(seconds: float | None, base: float | None, note: str = "") -> str:
    if seconds is None:
        return "n/a"
    t = f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"
    ratio = f" ({seconds / base:.3g}x)" if base else ""
    return f"{t}{ratio}{note}"


def paper_sample(eps: float, K: int, groups: int) -> tuple[float, list[tuple[float, float, float]]]:
    """Seconds per group of 100 for the paper's SLSQP and, per sampled group, (SLSQP, exact, no-attack) values."""
    x = margins(100 * groups, "probability", seed=1)
    times, values = [], []
    for g in range(groups):
        xs = x[100 * g : 100 * (g + 1)]
        t0 = time.perf_counter()
        slsqp = sgpo.worst_case(xs, eps, pieces=K, backend="paper").value[0]
        times.append(time.perf_counter() - t0)
        exact = sgpo.worst_case(xs, eps, pieces=K, max_shift=eps).value[0]
        clean = sgpo.worst_case(xs, 0.0, pieces=K).value[0]
        values.append((slsqp, exact, clean))
    return statistics.mean(times), values


def cuda_agreement(x: np.ndarray, xc: torch.Tensor, eps: float, K: int, space: str, cap: float | None) -> str:
    """The CUDA solve against the C++ CPU solve of the same margins: both are exact, so they must agree to float64
    rounding (the value to 1e-9 relative, each weight and shift to 1e-9 absolute); raises where they do not."""
    cpu = sgpo.worst_case(x, eps, pieces=K, space=space, max_shift=cap, backend="cpu")
    gpu = sgpo.worst_case(xc, eps, pieces=K, space=space, max_shift=cap)
    gpu_value, cpu_value = (float(torch.as_tensor(r.value).reshape(-1)[0]) for r in (gpu, cpu))
    gaps = [abs(gpu_value - cpu_value) / max(1.0, abs(cpu_value))]
    for field in ("weights", "shifts"):
        a, b = (torch.as_tensor(getattr(r, field)).cpu().double() for r in (gpu, cpu))
        gaps.append(float((a - b).abs().max()))
    gap = max(gaps)
    assert gap <= 1e-9, f"CUDA and CPU disagree at n={x.size} ({space}, max_shift={cap}): {gap:.3g}"
    return f"= cpu to {gap:.0e}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2_000, 60_000, 1_000_000, 10_000_000])
    p.add_argument("--pieces", type=int, default=6)
    p.add_argument("--epsilon", type=float, default=0.01)
    p.add_argument("--highs-max-n", type=int, default=2_000, help="largest n for HiGHS (60,000: over 6 min)")
    p.add_argument("--torch-max-n", type=int, default=10_000_000)
    p.add_argument("--paper-groups", type=int, default=2, help="groups of 100 timed for the SLSQP column (0: skip)")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    args = p.parse_args()
    K, eps = args.pieces, args.epsilon

    paper_per_group, paper_values = (None, [])
    if args.paper_groups > 0:
        paper_per_group, paper_values = paper_sample(eps, K, args.paper_groups)

    settings = [("probability", None), ("probability", eps), ("margin", None)]
    header = "| space | max_shift | n | np.sort (floor) | sgpo cpu | sgpo torch | HiGHS (explicit LP) | paper SLSQP |"
    if cuda_available():
        header += " sgpo cuda |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for space, cap in settings:
        for n in args.sizes:
            x = margins(n, space)
            t_cpu = timeit(lambda x=x, space=space, cap=cap: sgpo.worst_case(x, eps, pieces=K, space=space,
                                                                             max_shift=cap, backend="cpu"))  # fmt: skip
            t_sort = timeit(lambda x=x: np.sort(x))
            t_torch = None
            if n <= args.torch_max_n:
                xt = torch.from_numpy(x)
                t_torch = timeit(
                    lambda xt=xt, space=space, cap=cap: sgpo.worst_case(
                        xt, eps, pieces=K, space=space, max_shift=cap, backend="torch"
                    ),
                    min_time=0.2,
                )
            t_highs = None
            if n <= args.highs_max_n:
                t0 = time.perf_counter()
                opt = highs_solve(x, eps, K, space, cap)
                t_highs = time.perf_counter() - t0
                exact = sgpo.worst_case(x, eps, pieces=K, space=space, max_shift=cap).value[0]
                assert abs(opt - exact) <= 1e-6 * abs(opt), (opt, exact)
            paper = "n/a (probability space only)" if space != "probability" else "not run"
            if space == "probability" and paper_per_group is not None:
                paper = fmt(paper_per_group * math.ceil(n / 100), t_cpu, ", extrapolated")
            row = [space, "none" if cap is None else f"{cap:g}", f"{n:,}", fmt(t_sort, t_cpu), fmt(t_cpu, None),
                   fmt(t_torch, t_cpu), fmt(t_highs, t_cpu), paper]  # fmt: skip
            if cuda_available():
                xc = torch.from_numpy(x).cuda()

                def run_cuda(xc=xc, space=space, cap=cap):
                    sgpo.worst_case(xc, eps, pieces=K, space=space, max_shift=cap)
                    torch.cuda.synchronize()

                row.append(fmt(timeit(run_cuda), t_cpu) + "; " + cuda_agreement(x, xc, eps, K, space, cap))
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)

    notes = [
        "",
        f"K = {K}, epsilon = {eps}, one group of n margins (SSAPO's program of DESIGN 1.2); ratios are against "
        "sgpo cpu in the same row (time / sgpo cpu time). Machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}.",
    ]
    if paper_per_group is not None:
        gaps = [(e - s) / e for s, e, _ in paper_values]
        below_clean = sum(s < c for s, _, c in paper_values)
        notes.append(
            f"paper SLSQP: {paper_per_group:.1f} s per group of 100 (mean of {len(paper_values)} timed groups), "
            f"times n/100 groups. Its objective is {100 * min(gaps):.1f}% to {100 * max(gaps):.1f}% below the exact "
            f"optimum of the same groups (max_shift = epsilon, as in the paper's code); "
            f"{below_clean}/{len(paper_values)} sampled groups end below the no-attack value."
        )
    table = "\n".join(lines + notes)
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
