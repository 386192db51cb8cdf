"""scripts/gpu_check.py (``make gpu-check``) without a device: it reports that nothing was checked, and every test file
and benchmark flag it runs exists here, so the check cannot rot between runs on a GPU machine."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("sgpo_gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a device")
def test_without_a_device_nothing_is_checked(check: types.ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.md"
    assert check.main(["--out", str(out)]) == 2
    assert "No CUDA device" in out.read_text()


def test_the_device_tests_collect_and_carry_the_gpu_marker(check: types.ModuleType) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
        + [str(ROOT / t) for t in check.DEVICE_TESTS if t != "tests/test_gpu_compile.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "test_gpu_kernels.py::" in done.stdout and "test_follower_cuda.py::" in done.stdout


def test_the_benchmark_steps_accept_their_flags(check: types.ModuleType, tmp_path: Path) -> None:
    for step in check.steps(sys.executable, tmp_path)[1:]:
        script = ROOT / step.argv[1]
        assert script.is_file(), script
        source = script.read_text()
        for flag in (a for a in step.argv[2:] if a.startswith("--")):
            assert f'"{flag}"' in source, f"{script.name} has no option {flag}"
    assert sum(s.timeout_s for s in check.steps(sys.executable, tmp_path)) <= 9 * 60
