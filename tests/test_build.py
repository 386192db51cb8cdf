"""The native core is built as the design says: OpenMP, and CUDA compiled in wherever nvcc exists."""

from __future__ import annotations

import shutil

import pytest
from sgpo import _C
from sgpo.cli import main


def test_build_info_fields():
    info = _C.build_info()
    assert {"version", "openmp", "threads", "cuda", "cuda_archs"} <= set(info)
    import sgpo

    assert info["version"] == sgpo.__version__
    assert info["openmp"] is True
    assert info["threads"] >= 1


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on this machine")
def test_cuda_is_compiled_where_nvcc_exists():
    info = _C.build_info()
    assert info["cuda"] is True
    assert info["cuda_archs"]


def test_cuda_device_count_without_a_gpu_is_not_an_error():
    import torch

    assert _C.cuda_device_count() == torch.cuda.device_count()


def test_kernels_are_installed_as_a_subpackage():
    import sgpo.kernels

    assert sgpo.kernels.__name__ == "sgpo.kernels"


def test_info_and_demo_commands(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "openmp" in out and "cuda_archs" in out and "torch" in out
    assert main(["demo", "--pairs", "4"]) == 0
    out = capsys.readouterr().out
    for loss_type in ("sigmoid", "ssapo", "sppo"):
        assert loss_type in out
