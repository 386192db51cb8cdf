"""Runs tests/test_kernels_interpreted.py (the Triton kernels on CPU tensors) in a process started with
TRITON_INTERPRET=1: the interpreter must be chosen before triton is first imported, which in a shared pytest process
another module may already have done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="this process collects those tests directly")
def test_triton_kernels_under_the_interpreter() -> None:
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1", SGPO_KERNELS="triton")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(tests / "test_kernels_interpreted.py"), "-q", "-p", "no:cacheprovider"],
        cwd=tests.parent,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-2000:]
