"""The command line is quiet by default: sgpo's own output, not the libraries' bars and warnings (``--verbose``)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from conftest import PYTHON, subprocess_env

# a tqdm bar as it is drawn: "description: 40%|████      | 2/5 [00:01<00:01, 2.0it/s]"
BAR = re.compile(r"(?:^|[\r\n])([^\r\n:|]*?):? *\d{1,3}%\|")
SGPO_BARS = {"label", "generate", "train", "round", "evaluate"}


class ChattyJudge:
    """A judge whose library draws its own progress bar and warns, as transformers' GGUF loader does."""

    def scores(self, prompts: Any, responses: Any) -> np.ndarray:
        import warnings

        from tqdm.auto import tqdm

        for _ in tqdm(range(3), desc="Converting and de-quantizing third-party tensors"):
            pass
        warnings.warn("a library's FutureWarning", FutureWarning, stacklevel=1)
        return np.array([float(len(r)) for r in responses])


def label(model: Path, out: Path, *extra: str) -> str:
    argv = [PYTHON, "-m", "sgpo", "label", str(model), "--judge", "test_console:ChattyJudge", "--prompts", "hidden"]
    argv += ["--budget", "2", "--samples", "2", "--max-new-tokens", "4", "--out", str(out), *extra]
    env = subprocess_env(out.parent)
    for key in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "PYTHONWARNINGS", "TQDM_DISABLE"):
        env.pop(key, None)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def bars(output: str) -> set[str]:
    return {description.strip() for description in BAR.findall(output)}


def test_model_loads_print_no_third_party_bars_unless_verbose(tiny_model_dir: Path, tmp_path: Path) -> None:
    quiet = label(tiny_model_dir, tmp_path / "quiet" / "gold.jsonl")
    verbose = label(tiny_model_dir, tmp_path / "verbose" / "gold.jsonl", "--verbose")
    # --verbose shows the libraries' bars: transformers' weight loading and the judge's own
    assert {"Loading weights", "Converting and de-quantizing third-party tensors"} <= bars(verbose), bars(verbose)
    assert "FutureWarning" in verbose
    # the default shows sgpo's own bars only, whatever library draws the others, and its summary
    assert bars(quiet) and bars(quiet) <= SGPO_BARS, bars(quiet)
    assert "FutureWarning" not in quiet
    assert "label: 100%" in quiet and "pairs from 2 prompts" in quiet
