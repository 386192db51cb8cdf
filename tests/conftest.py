"""Shared fixtures: a tiny randomly initialised Llama with a byte-level chat tokenizer (no downloads), small preference
data files, and one uninterrupted ``tiny`` SSAPO run that the pipeline tests compare against."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# CI must not meet a new random example on every run: property tests draw the same examples each time
settings.register_profile("sgpo", derandomize=True, print_blob=True)
settings.load_profile("sgpo")

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny ``LlamaForCausalLM`` + tokenizer directory (``sgpo.models.build_tiny_model``, seed 0)."""
    pytest.importorskip("transformers")
    from sgpo.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


TOPICS = ["apples", "rivers", "robots", "music", "gardens", "oceans", "kindness", "mountains", "bread", "trains"]


@pytest.fixture(scope="session")
def preference_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``pairs.jsonl`` (12 labelled pairs, one as a chat conversation) and ``prompts.jsonl`` (16 prompts, one long)."""
    root = tmp_path_factory.mktemp("preference-data")
    pairs = []
    for i in range(12):
        a, b = TOPICS[i % 10], TOPICS[(3 * i + 1) % 10]
        pairs.append(
            {
                "prompt": f"Write one sentence about {a} and {b}.",
                "chosen": f"{a.title()} and {b} go well.",
                "rejected": "no",
            }
        )
    pairs[5] = {
        "prompt": [{"role": "user", "content": "Name a colour."}],
        "chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Seven."}],
    }
    prompts = [{"prompt": f"Describe {TOPICS[i % 10]} in the style of {TOPICS[(i + 4) % 10]}."} for i in range(16)]
    prompts[3]["prompt"] = "Please read this carefully. " * 12 + "What is the main idea?"
    files = {"pairs": root / "pairs.jsonl", "prompts": root / "prompts.jsonl"}
    for name, rows in (("pairs", pairs), ("prompts", prompts)):
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def tiny_overrides(model_dir: Path, files: dict[str, Path], output_dir: Path, *extra: str) -> list[str]:
    """``key=value`` overrides that point the ``tiny`` recipe at the test model and data."""
    return [
        f"model.name_or_path={model_dir}",
        f"data.seed_pairs={files['pairs']}",
        f"data.prompts={files['prompts']}",
        f"output_dir={output_dir}",
        "logging.progress=false",
        *extra,
    ]


@pytest.fixture(scope="session")
def single_thread() -> Any:
    """One intra-op thread: tiny models on a shared 2-core machine are many times faster without thread contention."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ssapo_run(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    preference_files: dict[str, Path],
    single_thread: Any,
) -> Path:
    """An uninterrupted ``tiny`` SSAPO run (round 0 + 2 rounds), run in this process; returns its output_dir."""
    from sgpo.pipeline import load_config, run

    out = tmp_path_factory.mktemp("ssapo-run") / "run"
    run(load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, out)))
    return out


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """Environment for ``sgpo`` child processes: one thread each, a private cache, tests importable (test judges)."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SGPO_CACHE=str(tmp_path / "cache"), TOKENIZERS_PARALLELISM="false"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("ACCELERATE_CONFIG_FILE", None)
    return env


def launch_two_processes(script: Path, args: list[str], timeout: int, **env: str) -> None:
    """``script args`` in two processes under ``torch.distributed.run`` (gloo on CPU), one thread each, with ``env``
    added to the environment; fails the test with the processes' own output if the launch failed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **env}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, launch_output(done)


def accelerate_launch(config_file: Path, port: int, *rest: str) -> list[str]:
    """``accelerate launch --config_file CONFIG`` on 2 CPU processes in float32 (what the docs' commands run at tiny
    size), followed by ``rest`` (launcher options, then the script or ``-m sgpo run ...``)."""
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)),
        *("--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(port), *rest),
    ]


def launch_output(done: subprocess.CompletedProcess) -> str:
    """A failed multi-process launch's output: its stdout tail and each failing process's own traceback, which the
    launcher's report that follows would push out of a plain stderr tail."""
    ranks = [line for line in done.stderr.splitlines() if line.startswith("[rank")]
    return done.stdout[-2000:] + "\n".join(ranks)[-6000:] + done.stderr[-2000:]


PYTHON = sys.executable
