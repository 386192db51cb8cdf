"""The CUDA follower against the C++ one. Runs only where a GPU and the CUDA build exist; the math it runs
(follower.h) is shared with the CPU path, whose radix selection (the kernels' algorithm) test_follower.py
checks against HiGHS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sgpo
import torch
from sgpo import _C
from sgpo.follower import cuda_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not cuda_available(),
        reason="needs a CUDA device and the extension built with CUDA "
        f"(compiled in: {hasattr(_C, 'follower_cuda')}, devices: {_C.cuda_device_count()})",
    ),
]


@pytest.mark.parametrize("space", ["probability", "margin"])
@pytest.mark.parametrize("max_shift", [None, 0.01])
@pytest.mark.parametrize("group_size", [None, 100, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(space, max_shift, group_size, dtype):
    rng = np.random.default_rng(0)
    n = 50_003
    x = rng.uniform(0, 1, n) if space == "probability" else rng.normal(0, 2, n)
    xt = torch.from_numpy(x).to(dtype)
    cpu = sgpo.worst_case(xt, 0.01, space=space, max_shift=max_shift, group_size=group_size, backend="cpu")
    gpu = sgpo.worst_case(xt.cuda(), 0.01, space=space, max_shift=max_shift, group_size=group_size)
    assert gpu.weights.is_cuda and gpu.weights.dtype == dtype and gpu.value.dtype == torch.float64
    torch.testing.assert_close(gpu.value.cpu(), cpu.value, rtol=1e-10, atol=1e-12)
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(gpu.weights.cpu(), cpu.weights, rtol=0, atol=tol)
    torch.testing.assert_close((gpu.weights * gpu.shifts).cpu(), cpu.weights * cpu.shifts, rtol=0, atol=tol)


def test_cuda_edge_cases():
    for x, eps, K in (([0.7], 0.1, 1), ([0.0, 1.0, 0.5], 0.0, 6), ([0.2, 0.4], 1e6, 3)):
        xt = torch.tensor(x, dtype=torch.float64)
        cpu = sgpo.worst_case(xt, eps, pieces=K)
        gpu = sgpo.worst_case(xt.cuda(), eps, pieces=K, backend="cuda")
        torch.testing.assert_close(gpu.value.cpu(), cpu.value)
        torch.testing.assert_close(gpu.weights.cpu(), cpu.weights)
        assert math.isfinite(float(gpu.dual[0]))


def test_cuda_runs_on_the_current_stream():
    x = torch.rand(10_000, device="cuda", dtype=torch.float64)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        res = sgpo.worst_case(x, 0.01, group_size=100)
    stream.synchronize()
    torch.testing.assert_close(res.value.cpu(), sgpo.worst_case(x.cpu(), 0.01, group_size=100).value)
