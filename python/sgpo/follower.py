"""The SSAPO follower: the exact worst case of the margins in an epsilon-Wasserstein ball (DESIGN 1.2).

The program (paper Thm 3.3) is an LP with one coupling constraint, the transport budget. For a multiplier
lambda on it every margin's problem separates: margin xi can move slices of its unit mass down to the support's
lower end ``lo`` along a tangent piece k, each slice gaining ``(l_k(lo) - L(xi)) / (xi - lo)`` per unit of budget
(L = the pieces' maximum), with at most ``max_shift`` of budget per piece. The group is then a fractional
knapsack: take slices by decreasing gain until the budget is spent. lambda* (``dual``) is the gain of the slice
that is only partly taken; all slices with exactly that gain share what is left, so the budget binds.

Backends: ``cpu`` (C++/OpenMP), ``cuda`` (CUDA kernels, same math), ``torch`` (this file: the readable,
vectorised reference, any device) and ``paper`` (the paper's SLSQP solve, for reproduction studies only).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SPACES = ("probability", "margin")
BACKENDS = ("auto", "cpu", "cuda", "torch", "paper")

# The paper's code: SLSQP with 50 iterations on groups of 100, simplex and support as a 1e5 penalty.
PAPER_GROUP_SIZE = 100
PAPER_ITERATIONS = 50
PAPER_PENALTY = 1e5


@dataclass(frozen=True)
class WorstCase:
    """The follower's answer: the worst case is (1/n) sum_ik weights[i,k] * delta(margin_i - shifts[i,k]).

    ``weights`` and ``shifts`` are (n, K) of the input's kind and device; ``value`` (the worst-case expected
    loss of each group) and ``dual`` (the budget's multiplier lambda* of each group) have one float64 per group.
    """

    weights: Any
    shifts: Any
    value: Any
    dual: Any


def follower_inputs(margins: np.ndarray, space: str, gamma: float, beta: float) -> np.ndarray:
    """The follower's inputs xi of annotated margins h (DESIGN 1.2): ``sigmoid(gamma * h)`` in probability space,
    ``beta * h`` in margin space (float64)."""
    h = np.asarray(margins, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-gamma * h)) if space == "probability" else beta * h


def moved_mass(weights: Any, shifts: Any) -> np.ndarray:
    """Per margin: the share of its unit mass that a worst case ``(weights, shifts)`` moves (shift not 0)."""
    w, d = np.asarray(weights), np.asarray(shifts)
    return (w * (np.abs(d) > 1e-12)).sum(axis=1)


# max_shift's name for the paper's code's cap, |q_ik| <= epsilon
EPSILON_CAP = "epsilon"
# a pair is attacked when the worst case moves more than this share of its mass
ATTACKED = 1e-9


def worst_case(
    margins: Any,
    epsilon: float,
    *,
    pieces: int = 6,
    space: str = "probability",
    support: tuple[float, float] | None = None,
    group_size: int | None = None,
    max_shift: float | str | None = None,
    backend: str = "auto",
) -> WorstCase:
    """Solve SSAPO's follower exactly (DESIGN 1.2) for each consecutive group of ``group_size`` margins.

    ``space="probability"``: margins are sigmoid(gamma * h) in [0, 1], support [0, 1], pieces the tangents of
    -log x at k/K. ``space="margin"``: margins are beta * h, pieces the tangents of -log sigmoid at
    ``numpy.linspace(lo, hi, K)``; the default support is [min - 1, max + 1] of each group.
    ``max_shift`` caps every |q_ik|: ``None`` (the default) solves the program of Thm 3.3 as written, uncapped;
    ``"epsilon"`` caps at ``epsilon``, as the paper's code does (and as ``SGPODPOConfig`` and the pipeline do by
    default); a number caps there. Returns numpy for numpy input and torch on the input's device for torch input.
    """
    x, kind = _as_margins(margins)
    eps = _nonnegative("epsilon", epsilon)
    pieces = _positive_int("pieces", pieces)
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    n = x.shape[0]
    group_size = n if group_size is None else _positive_int("group_size", group_size)
    group_size = min(group_size, n)
    if isinstance(max_shift, str):
        if max_shift != EPSILON_CAP:
            raise ValueError(f"max_shift: expected None, {EPSILON_CAP!r} or a number >= 0, got {max_shift!r}")
        max_shift = eps
    shift_cap = math.inf if max_shift is None else _nonnegative("max_shift", max_shift, allow_inf=True)
    lo, hi = _check_support(x, space, support)

    if backend == "auto":
        backend = "cuda" if x.is_cuda and cuda_available() else "cpu"
    if backend == "cpu":
        result = _solve_cpu(x, eps, pieces, space, lo, hi, group_size, shift_cap)
    elif backend == "cuda":
        result = _solve_cuda(x, eps, pieces, space, lo, hi, group_size, shift_cap)
    elif backend == "torch":
        result = _solve_torch(x, eps, pieces, space, lo, hi, group_size, shift_cap)
    else:
        if space != "probability":
            raise ValueError(f"backend='paper' exists only for space='probability' (the paper's code), got {space!r}")
        result = _solve_paper(x, eps, pieces, lo, hi, group_size, shift_cap)
    return _to_kind(result, kind, x)


def cuda_available() -> bool:
    """True when the extension has the CUDA follower compiled in and a device is visible."""
    try:
        from sgpo import _C
    except ImportError:
        return False
    return hasattr(_C, "follower_cuda") and _C.cuda_device_count() > 0


# ---------------------------------------------------------------------------------------------- validation


def _as_margins(margins: Any) -> tuple[torch.Tensor, str]:
    if isinstance(margins, torch.Tensor):
        kind, x = "torch", margins.detach()
    else:
        kind = "numpy"
        try:
            arr = np.asarray(margins)
        except (TypeError, ValueError) as err:
            raise ValueError(f"margins must be a 1-D array of numbers, got {type(margins).__name__}") from err
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"margins must be real numbers, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr)
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if x.ndim != 1:
        raise ValueError(f"margins must be 1-D, got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError("margins must hold at least one margin, got an empty array")
    if x.is_complex():
        raise ValueError(f"margins must be real numbers, got dtype {x.dtype}")
    if x.dtype != torch.float64:
        x = x.to(torch.float64 if not x.is_floating_point() else torch.float32)
    x = x.contiguous()
    # numpy for host data: torch's thread pool costs milliseconds per call on a busy machine
    finite = np.isfinite(x.numpy()) if not x.is_cuda else torch.isfinite(x)
    if not bool(finite.all()):
        bad = int(np.flatnonzero(~np.asarray(finite.cpu() if x.is_cuda else finite))[0])
        raise ValueError(f"margins must be finite, got {float(x[bad])} at index {bad}")
    return x, kind


def _nonnegative(name: str, value: Any, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number >= 0, got {value!r}")
    v = float(value)
    if math.isnan(v) or v < 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_support(x: torch.Tensor, space: str, support: Any) -> tuple[float, float]:
    """Returns the given support, or (nan, nan) for the space's default (margin space: per group)."""
    xmin, xmax = (float(v) for v in torch.aminmax(x)) if x.is_cuda else (x.numpy().min(), x.numpy().max())
    xmin, xmax = float(xmin), float(xmax)
    if space == "probability" and (xmin < 0.0 or xmax > 1.0):
        raise ValueError(
            f"margins must lie in [0, 1] for space='probability' (sigmoid of the margin), got [{xmin}, {xmax}]"
        )
    if support is None:
        return math.nan, math.nan
    try:
        lo, hi = (float(v) for v in support)
    except (TypeError, ValueError) as err:
        raise ValueError(f"support must be a pair (lo, hi) of numbers, got {support!r}") from err
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"support must be finite with lo < hi, got {support!r}")
    if space == "probability" and (lo < 0.0 or hi > 1.0):
        raise ValueError(f"support must lie in [0, 1] for space='probability', got {support!r}")
    if xmin < lo or xmax > hi:
        raise ValueError(f"margins must lie inside support [{lo}, {hi}], got values in [{xmin}, {xmax}]")
    return lo, hi


def _to_kind(result: WorstCase, kind: str, x: torch.Tensor) -> WorstCase:
    parts = (result.weights, result.shifts, result.value, result.dual)
    if kind == "numpy":
        return WorstCase(*(p.cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p) for p in parts))
    return WorstCase(*(torch.as_tensor(p).to(x.device) for p in parts))


# ------------------------------------------------------------------------------------------------ backends


def _solve_cpu(x, eps, pieces, space, lo, hi, group_size, shift_cap) -> WorstCase:
    from sgpo import _C

    arr = x.cpu().numpy()
    w, d, value, dual = _C.follower_cpu(arr, group_size, SPACES.index(space), pieces, eps, lo, hi, shift_cap)
    return WorstCase(torch.from_numpy(w), torch.from_numpy(d), torch.from_numpy(value), torch.from_numpy(dual))


def _solve_cuda(x, eps, pieces, space, lo, hi, group_size, shift_cap) -> WorstCase:
    if not x.is_cuda:
        raise ValueError(f"backend='cuda' needs margins on a CUDA device, got device {x.device}")
    if not cuda_available():
        raise ValueError("backend='cuda' needs the extension built with CUDA and a visible device")
    from sgpo import _C

    n = x.shape[0]
    groups = -(-n // group_size)
    weights = torch.empty((n, pieces), dtype=x.dtype, device=x.device)
    shifts = torch.empty_like(weights)
    value = torch.empty(groups, dtype=torch.float64, device=x.device)
    dual = torch.empty_like(value)
    workspace = torch.empty(_C.follower_cuda_workspace_bytes(n, group_size, pieces), dtype=torch.uint8, device=x.device)
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        _C.follower_cuda(
            x.data_ptr(), x.dtype == torch.float64, n, group_size, SPACES.index(space), pieces, eps, lo, hi,
            shift_cap, weights.data_ptr(), shifts.data_ptr(), value.data_ptr(), dual.data_ptr(),
            workspace.data_ptr(), workspace.numel(), stream,
        )  # fmt: skip
    return WorstCase(weights, shifts, value, dual)


def tangent_pieces(space: str, pieces: int, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slopes a and intercepts b (each (G, K)) of the K tangent pieces l_k(x) = a_k x + b_k (DESIGN 1.2)."""
    lo = lo.to(torch.float64)
    k = torch.arange(pieces, dtype=torch.float64, device=lo.device)
    if space == "probability":
        x0 = (k + 1) / pieces
        return (-1.0 / x0).expand(lo.shape[0], -1), (1.0 - torch.log(x0)).expand(lo.shape[0], -1)
    if pieces == 1:
        knots = lo[:, None]
    else:
        # numpy.linspace: start + k * step, with the last knot exactly at the stop
        knots = lo[:, None] + k * ((hi - lo) / (pieces - 1))[:, None]
        knots[:, -1] = hi
    s = torch.sigmoid(-knots)
    return -s, torch.nn.functional.softplus(-knots) + s * knots


def _solve_torch(x, eps, pieces, space, lo, hi, group_size, shift_cap) -> WorstCase:
    n, K, dev = x.shape[0], pieces, x.device
    groups = -(-n // group_size)
    xg = torch.zeros(groups * group_size, dtype=torch.float64, device=dev)
    xg[:n] = x
    xg = xg.view(groups, group_size)
    valid = (torch.arange(groups * group_size, device=dev) < n).view(groups, group_size)
    count = valid.sum(1).to(torch.float64)
    if not math.isnan(lo):
        lo_g = torch.full((groups,), lo, dtype=torch.float64, device=dev)
        hi_g = torch.full((groups,), hi, dtype=torch.float64, device=dev)
    elif space == "probability":
        lo_g = torch.zeros(groups, dtype=torch.float64, device=dev)
        hi_g = torch.ones(groups, dtype=torch.float64, device=dev)
    else:
        big = torch.finfo(torch.float64).max
        lo_g = torch.where(valid, xg, big).amin(1) - 1.0
        hi_g = torch.where(valid, xg, -big).amax(1) + 1.0
    xg = torch.where(valid, xg, lo_g[:, None])  # padding sits at lo: it can move nowhere and gains nothing
    a, b = tangent_pieces(space, K, lo_g, hi_g)

    # Unmoved mass sits on the best piece at xi; a slice moved to lo on piece k gains (l_k(lo) - L(xi)) / d.
    lines = xg[..., None] * a[:, None, :] + b[:, None, :]
    L, kstar = lines.max(-1)
    at_lo = a * lo_g[:, None] + b
    order = torch.argsort(at_lo, dim=1, descending=True, stable=True)  # each margin's slices, best first
    d = xg - lo_g[:, None]
    slots = 1 if math.isinf(shift_cap) or shift_cap == 0 else min(K, max(1, math.ceil(float(d.max()) / shift_cap)))
    order = order[:, :slots]
    safe_d = torch.where(d > 0, d, 1.0)
    # (l_k(lo) - L) / d as -a_k - (L - l_k(xi)) / d, the C++ path's rounding: tied margins tie exactly
    gap = L[..., None] - lines.gather(2, order[:, None, :].expand(-1, group_size, -1))
    ratio = -a.gather(1, order)[:, None, :] - gap * (1.0 / safe_d)[..., None]
    if math.isinf(shift_cap):
        cost = d[..., None].clone()
    else:
        j = torch.arange(slots, dtype=torch.float64, device=dev)
        cost = (d[..., None] - j * shift_cap).clamp(0.0, shift_cap)
    live = (ratio > 0) & (cost > 0) & (d > 0)[..., None] & valid[..., None]
    ratio = torch.where(live, ratio, 0.0)
    cost = torch.where(live, cost, 0.0)

    # Fractional knapsack per group: lambda* is the ratio where the sorted costs' running sum passes the budget.
    budget = eps * count
    r_sorted, perm = ratio.view(groups, -1).sort(dim=1, descending=True, stable=True)
    running = cost.view(groups, -1).gather(1, perm).cumsum(1)
    cross = torch.searchsorted(running, budget[:, None], right=True).squeeze(1)
    found = cross < running.shape[1]
    lam = torch.where(found, r_sorted.gather(1, cross.clamp(max=running.shape[1] - 1)[:, None]).squeeze(1), 0.0)
    lam = torch.where(found & (lam > 0), lam, 0.0)
    found = lam > 0
    lam_b = lam[:, None, None]
    above = torch.where(ratio > lam_b, cost, 0.0).sum((1, 2))
    tied = torch.where(live & (ratio == lam_b), cost, 0.0).sum((1, 2))
    theta = torch.where(found & (tied > 0), ((budget - above) / tied.clamp(min=1e-300)).clamp(0.0, 1.0), 1.0)
    frac = torch.where(ratio > lam_b, 1.0, torch.where(ratio == lam_b, theta[:, None, None], 0.0))
    frac = torch.where(live, frac, 0.0)

    # Primal recovery: the taken slices sit at lo on their piece, the rest of the mass stays at xi on kstar.
    q = frac * cost
    mass = q / safe_d[..., None]
    idx = order[:, None, :].expand(-1, group_size, -1)
    s = torch.zeros(groups, group_size, K, dtype=torch.float64, device=dev).scatter_add_(2, idx, mass)
    qk = torch.zeros_like(s).scatter_add_(2, idx, q)
    rest = (1.0 - mass.sum(2)).clamp(min=0.0)
    s.scatter_add_(2, kstar[..., None], rest[..., None])
    shifts = torch.where(s > 0, qk / torch.where(s > 0, s, 1.0), 0.0)
    value = (torch.where(valid, L, 0.0).sum(1) + (ratio * q).sum((1, 2))) / count
    out_dtype = x.dtype
    return WorstCase(
        s.view(-1, K)[:n].to(out_dtype), shifts.view(-1, K)[:n].to(out_dtype), value, lam.to(torch.float64)
    )


def lp_objective(margins: np.ndarray, weights: np.ndarray, shifts: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """The program's objective (1/n) sum_ik [s_ik (a_k xi_i + b_k) - a_k q_ik] at s = weights, q = s * shifts."""
    q = weights * shifts
    return float(((weights * (np.outer(margins, a) + b)) - a * q).sum() / margins.shape[0])


def _solve_paper(x, eps, pieces, lo, hi, group_size, shift_cap) -> WorstCase:
    """The paper's solve, for reproduction studies: SLSQP, 50 iterations from uniform weights and zero shifts,
    simplex and support as a 1e5 quadratic penalty, |q| <= epsilon (or max_shift) as bounds, groups of 100.
    It stops far from the optimum; ``value`` is the program's objective at the point it returns, ``dual`` NaN."""
    from scipy.optimize import minimize

    xs = x.cpu().numpy().astype(np.float64)
    n, K = xs.shape[0], pieces
    lo = 0.0 if math.isnan(lo) else lo
    hi = 1.0 if math.isnan(hi) else hi
    group_size = PAPER_GROUP_SIZE if group_size == n and n > PAPER_GROUP_SIZE else group_size
    cap = min(eps, shift_cap)
    a, b = (t[0].numpy() for t in tangent_pieces("probability", K, torch.zeros(1), torch.ones(1)))
    weights, shifts, values = np.zeros((n, K)), np.zeros((n, K)), []
    for start in range(0, n, group_size):
        xi = xs[start : start + group_size]
        m = xi.shape[0]
        gain = np.outer(xi, a) + b

        def objective(z, xi=xi, gain=gain, m=m):
            s, q = z[: m * K].reshape(m, K), z[m * K :].reshape(m, K)
            loss = (s * gain - a * q).sum() / m
            moved = s * xi[:, None] - q
            violation = (
                ((s.sum(1) - 1.0) ** 2).sum()
                + (np.minimum(s, 0.0) ** 2).sum()
                + (np.minimum(moved - lo * s, 0.0) ** 2).sum()
                + (np.maximum(moved - hi * s, 0.0) ** 2).sum()
            )
            return -loss + PAPER_PENALTY * violation

        budget = {"type": "ineq", "fun": lambda z, m=m: eps - np.abs(z[m * K :]).sum() / m}
        z0 = np.concatenate([np.full(m * K, 1.0 / K), np.zeros(m * K)])
        bounds = [(None, None)] * (m * K) + [(-cap, cap)] * (m * K)
        res = minimize(
            objective, z0, method="SLSQP", bounds=bounds, constraints=[budget],
            options={"maxiter": PAPER_ITERATIONS},
        )  # fmt: skip
        s, q = res.x[: m * K].reshape(m, K), res.x[m * K :].reshape(m, K)
        weights[start : start + m] = s
        shifts[start : start + m] = np.where(s != 0, q / np.where(s != 0, s, 1.0), 0.0)
        values.append(lp_objective(xi, s, shifts[start : start + m], a, b))
    dtype = x.dtype
    return WorstCase(
        torch.from_numpy(weights).to(dtype),
        torch.from_numpy(shifts).to(dtype),
        torch.tensor(values, dtype=torch.float64),
        torch.full((len(values),), math.nan, dtype=torch.float64),
    )
