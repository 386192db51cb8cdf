"""The fused linear log-probs' Triton path: its interpreted tests (tests/test_fused_head_interpreted.py) in a process
started with TRITON_INTERPRET=1, and the plan that decides which path and setting a call runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sgpo.ops import dispatch


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="this process collects those tests directly")
def test_the_triton_path_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    tests = Path(__file__).resolve().parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(tests / "test_fused_head_interpreted.py"), "-q", "-p", "no:cacheprovider"],
        cwd=tests.parent,
        env=dict(os.environ, TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-2000:]


def _entry(name: str, hidden: int, vocab: int, tokens: int, backend: str, block: int) -> dict:
    return {
        "device": name, "dtype": "bfloat16", "hidden": hidden, "vocab": vocab, "tokens": tokens,
        "backend": backend, "block": block, "chunk_tokens": 2048, "num_warps": 4,
    }  # fmt: skip


@pytest.fixture
def tuned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("triton")
    entries = [
        _entry("GPU A", 4096, 128_256, 4096, "triton", 8192),
        _entry("GPU A", 576, 49_152, 8192, "torch", 4096),
        _entry("GPU B", 4096, 128_256, 4096, "torch", 1024),
    ]
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"entries": entries}))
    monkeypatch.setattr(dispatch, "TUNED_FILE", path)
    monkeypatch.setattr(dispatch, "_device_name", lambda device: "GPU A")
    monkeypatch.delenv("SGPO_KERNELS", raising=False)


def test_the_plan_takes_the_nearest_measured_head_on_the_same_gpu(tuned: None) -> None:
    cuda = torch.device("cuda")
    llama = dispatch.fused_linear_plan(cuda, torch.bfloat16, 4096, 128_256, 2048, None)
    assert (llama.backend, llama.block, llama.chunk_tokens, llama.num_warps) == ("triton", 8192, 2048, 4)
    smol = dispatch.fused_linear_plan(cuda, torch.bfloat16, 576, 49_152, 4096, chunk_tokens=512)
    assert (smol.backend, smol.chunk_tokens) == ("torch", 512)
    # no entry for float16 on this GPU: the defaults
    default = dispatch.fused_linear_plan(cuda, torch.float16, 4096, 128_256, 2048, None)
    assert (default.backend, default.block) == ("triton", dispatch.TRITON_BLOCK)


def test_an_override_or_the_cpu_ignores_the_measured_table(tuned: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert dispatch.fused_linear_plan(torch.device("cpu"), torch.bfloat16, 4096, 128_256, 2048, None).backend == "torch"
    monkeypatch.setenv("SGPO_KERNELS", "triton")
    forced = dispatch.fused_linear_plan(torch.device("cuda"), torch.bfloat16, 576, 49_152, 8192, None)
    assert (forced.backend, forced.block) == ("triton", dispatch.TRITON_BLOCK)


def test_float64_always_takes_the_pytorch_path(tuned: None) -> None:
    plan = dispatch.fused_linear_plan(torch.device("cuda"), torch.float64, 4096, 128_256, 2048, None)
    assert plan.backend == "torch"
