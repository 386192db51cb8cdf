"""Which implementation an op runs: the Triton kernels or the lean PyTorch path.

Triton runs for CUDA tensors when triton is installed, and for CPU tensors under ``TRITON_INTERPRET=1`` (how CI tests
the kernels). ``SGPO_KERNELS=triton|torch`` overrides the choice. The Triton kernels compute in float32, so float64
inputs always take the PyTorch path, which follows the reference in float64.
"""

from __future__ import annotations

import importlib.util
import os

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
