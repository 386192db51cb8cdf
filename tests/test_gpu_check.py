"""The GPU check without a device: scripts/gpu_check.py reports that nothing was checked, every test file and benchmark
flag it runs exists, each part fits one device command, and scripts/device_check.sh rehearses on the CPU with the CUDA
steps skipping and every other step passing, so the check cannot rot between runs on a GPU machine."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEVICE_COMMAND_LIMIT_S = 10 * 60


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


@pytest.mark.parametrize("rehearse", [False, True])
def test_the_benchmark_steps_accept_their_flags(check: types.ModuleType, tmp_path: Path, rehearse: bool) -> None:
    for step in check.steps(sys.executable, tmp_path, rehearse)[1:]:
        script = ROOT / step.argv[1]
        assert script.is_file(), script
        source = script.read_text()
        for flag in (a for a in step.argv[2:] if a.startswith("--")):
            assert f'"{flag}"' in source, f"{script.name} has no option {flag}"


def test_each_part_fits_one_device_command_with_room_for_the_build(check: types.ModuleType, tmp_path: Path) -> None:
    all_steps = check.steps(sys.executable, tmp_path)
    assert {s.part for s in all_steps} == {"a", "b", "c"}
    for part in ("a", "b", "c"):
        # a fresh machine builds the extension first (25 s on the H200's 16 cores): a minute is left for it
        assert sum(s.timeout_s for s in all_steps if s.part == part) <= DEVICE_COMMAND_LIMIT_S - 60, part


def test_an_unknown_part_or_option_is_refused_by_name(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "SGPO_DEVICE_CHECK_BUILD": "0", "PYTHON": sys.executable}
    for argv, expected in ((["d"], "PART='d': expected a, b, c or all"), (["a", "--fast"], "unknown option '--fast'")):
        done = subprocess.run(
            ["bash", "scripts/device_check.sh", *argv], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 2 and expected in done.stderr, done.stderr
    assert not list(tmp_path.glob("device_check_*.md"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rehearsal is the CPU's stand-in for the device run")
def test_the_device_check_rehearses_on_the_cpu(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "SGPO_DEVICE_CHECK_BUILD": "0",  # the suite tests the sgpo it imports; the build is the device's own step
        "PYTHON": sys.executable,
    }
    done = subprocess.run(
        ["bash", "scripts/device_check.sh", "all", "--rehearse"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    report = (tmp_path / "device_check_all.md").read_text()
    assert done.returncode == 0, report + done.stderr[-3000:]
    steps = re.findall(r"^## (.*): (\w+) \(\d+ s\)$", report, flags=re.M)
    assert len(steps) == 5 and all(status == "passed" for _, status in steps), steps
    # The CUDA tests skip cleanly and the rest of the device tests pass.
    assert re.search(r"\d+ passed, \d+ skipped", report)
    # Every method of the loss comparison ran, and agreed on the loss (bench_losses warns otherwise).
    for method in ("trl", "trl_fused", "liger", "sgpo_fused"):
        assert re.search(rf"^\| 64 \| 2 \| {method} \| \d", report, flags=re.M), method
    assert "disagree" not in done.stderr
    # The trainer table has the baseline and sgpo's rows, each with a step time.
    assert re.search(r"^\| trl\.DPOTrainer, defaults \| [\d.]+ \| 1\.00x", report, flags=re.M)
    assert re.search(r"^\| SGPODPOTrainer, logps_backend=sgpo \| [\d.]+ \|", report, flags=re.M)
    # The fused head's table: the baseline and sgpo's two paths timed, the Triton row at a setting the sweep chose.
    for method in ("torch", "sgpo_torch", "sgpo_triton"):
        assert re.search(rf"^\| tiny \(32, 300\) \| 2 \| {method} \| [\d.]+ \|", report, flags=re.M), method
    assert re.search(r"\| sgpo_triton \|.*\| block \d+, chunk_tokens \d+, num_warps \d+ \|$", report, flags=re.M)
    plan = json.loads((tmp_path / "fused_linear_tuned.json").read_text())["entries"]
    assert [e["backend"] in ("triton", "torch") for e in plan] == [True]
