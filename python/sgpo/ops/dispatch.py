"""Which implementation an op runs: the Triton kernels or the lean PyTorch path.

Triton runs for CUDA tensors when triton is installed, and for CPU tensors under ``TRITON_INTERPRET=1`` (how CI tests
the kernels). ``SGPO_KERNELS=triton|torch`` overrides the choice. The Triton kernels compute in float32, so float64
inputs always take the PyTorch path, which follows the reference in float64.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

BACKENDS: tuple[str, ...] = ("triton", "torch")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def choose_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The backend for an op whose inputs live on ``device`` and compute in ``dtype``."""
    forced = os.environ.get("SGPO_KERNELS", "").strip().lower()
    if forced not in ("", "auto", *BACKENDS):
        raise ValueError(f"SGPO_KERNELS: unknown value {forced!r}; expected one of auto, {', '.join(BACKENDS)}")
    if forced == "torch" or dtype == torch.float64:
        return "torch"
    runs_here = device.type == "cuda" or interpreting()
    if forced == "triton":
        if not triton_available():
            raise ValueError(
                "SGPO_KERNELS: 'triton' was requested but triton is not installed (pip install sgpo[triton])"
            )
        if not runs_here:
            raise ValueError(
                f"SGPO_KERNELS: 'triton' was requested for a tensor on {device}; Triton needs a CUDA tensor, "
                "or TRITON_INTERPRET=1 to run on CPU"
            )
        return "triton"
    return "triton" if runs_here and triton_available() else "torch"


@dataclass(frozen=True)
class FusedLinearPlan:
    """How :func:`sgpo.ops.fused_linear_token_logps` runs: ``backend``, and for the Triton path the vocabulary
    columns per tile (``block``), the tokens per tile (``chunk_tokens``) and the forward pass's ``num_warps``."""

    backend: str
    block: int
    chunk_tokens: int
    num_warps: int


# The Triton path's setting where no measured one applies: a (4,096 x 4,096) tile, 32 MB in bfloat16, wide enough for
# cuBLAS to run at full rate and small enough to stay mostly in an H100's 50 MB L2 between the matmul and the pass.
TRITON_BLOCK = 4096
TRITON_CHUNK_TOKENS = 4096
TRITON_NUM_WARPS = 8
# Measured settings per GPU and head shape: the device benchmark (benchmarks/bench_fused_head.py --tuned-out) writes
# this file; each entry is the fastest sgpo backend within the benchmark's memory limit.
TUNED_FILE = Path(__file__).with_name("fused_linear_tuned.json")


@functools.cache
def _tuned_entries(path: Path) -> tuple[dict, ...]:
    if not path.is_file():
        return ()
    return tuple(json.loads(path.read_text())["entries"])


@functools.cache
def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


def _tuned(device: torch.device, dtype: torch.dtype, hidden: int, vocab: int, tokens: int) -> dict | None:
    """The measured entry for this GPU and dtype whose head and token count are nearest on a log scale."""
    if device.type != "cuda":
        return None
    name, dtype_name = _device_name(device), str(dtype).removeprefix("torch.")
    candidates = [e for e in _tuned_entries(TUNED_FILE) if e["device"] == name and e["dtype"] == dtype_name]

    def distance(entry: dict) -> float:
        pairs = ((entry["hidden"], hidden), (entry["vocab"], vocab), (entry["tokens"], max(tokens, 1)))
        return sum(abs(math.log(a / b)) for a, b in pairs)

    return min(candidates, key=distance, default=None)


def fused_linear_plan(
    device: torch.device, dtype: torch.dtype, hidden: int, vocab: int, tokens: int, chunk_tokens: int | None
) -> FusedLinearPlan:
    """The plan for ``tokens`` positions of a (``vocab``, ``hidden``) head in ``dtype`` on ``device``: the backend
    of :func:`choose_backend`, then, on a GPU with a measured entry and no ``SGPO_KERNELS`` override, the measured
    backend and setting. ``chunk_tokens`` given by the caller always wins."""
    plan = FusedLinearPlan(choose_backend(device, dtype), TRITON_BLOCK, TRITON_CHUNK_TOKENS, TRITON_NUM_WARPS)
    forced = os.environ.get("SGPO_KERNELS", "").strip().lower() in BACKENDS
    entry = None if forced or plan.backend != "triton" else _tuned(device, dtype, hidden, vocab, tokens)
    if entry is not None:
        plan = FusedLinearPlan(entry["backend"], entry["block"], entry["chunk_tokens"], entry["num_warps"])
    if chunk_tokens is not None:
        plan = dataclasses.replace(plan, chunk_tokens=chunk_tokens)
    return plan
