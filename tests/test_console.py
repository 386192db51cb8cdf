"""The command line is quiet by default: sgpo's own output, not the libraries' bars and warnings (``--verbose``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import PYTHON, subprocess_env


def label(model: Path, out: Path, *extra: str) -> str:
    argv = [PYTHON, "-m", "sgpo", "label", str(model), "--judge", "warmth", "--prompts", "hidden", "--budget", "2"]
    argv += ["--samples", "2", "--max-new-tokens", "4", "--out", str(out), *extra]
    env = subprocess_env(out.parent)
    for key in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "PYTHONWARNINGS"):
        env.pop(key, None)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_model_loads_print_no_third_party_bars_unless_verbose(tiny_model_dir: Path, tmp_path: Path) -> None:
    quiet = label(tiny_model_dir, tmp_path / "quiet" / "gold.jsonl")
    verbose = label(tiny_model_dir, tmp_path / "verbose" / "gold.jsonl", "--verbose")
    assert "Loading weights" in verbose
    assert "Loading weights" not in quiet and "FutureWarning" not in quiet
    # sgpo's own progress bar and summary remain
    assert "label: 100%" in quiet and "pairs from 2 prompts" in quiet
