"""``sgpo info``: how the native core was built and what this machine offers."""

from __future__ import annotations

import argparse
import importlib.metadata
from typing import Any


def package_version(package: str) -> str:
    """The installed version of ``package``, or "not installed"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect() -> dict[str, Any]:
    """Build info of ``sgpo._C`` plus torch/triton versions and GPU visibility."""
    import torch

    from sgpo import _C

    info: dict[str, Any] = dict(_C.build_info())
    info["torch"] = torch.__version__
    info["triton"] = package_version("triton")
    info["gpu_visible"] = torch.cuda.is_available()
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    info["cuda_runtime_devices"] = _C.cuda_device_count()
    return info


def format_info(info: dict[str, Any]) -> str:
    width = max(len(key) for key in info)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in info.items())


def _run(args: argparse.Namespace) -> int:
    print(format_info(collect()))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="print build info (OpenMP, CUDA archs) and torch/triton/GPU")
    parser.set_defaults(func=_run)
