"""What the command line shows: sgpo's own progress bars and summaries, not the libraries' chatter beneath them.

Without ``--verbose``, every ``sgpo`` command silences what transformers, datasets, peft, accelerate, torch and triton
print on their own (a "Loading weights" bar per model load, "Generating train split" bars, transformers' GGUF
conversion bar, FutureWarnings about their APIs). Any tqdm bar that does not choose for itself whether to show is
off (tqdm's own ``TQDM_DISABLE``); sgpo's bars always choose. Environment variables carry the setting to processes
the command starts (``accelerate launch`` workers); a variable the user has set is left as it is.
"""

from __future__ import annotations

import os
import sys
import warnings
from functools import partialmethod

QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
    "TQDM_DISABLE": "1",
}
# modules whose own warnings are about their APIs or internals, not about the user's run
THIRD_PARTY = r"(transformers|datasets|huggingface_hub|peft|accelerate|trl|torch|triton|gguf)(\.|$)"


def quiet_libraries() -> None:
    """Silence third-party progress bars and warnings in this process and the processes it starts.

    Call before transformers or datasets are imported: they read their settings from the environment then.
    """
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=THIRD_PARTY)
    if os.environ["TQDM_DISABLE"] == "1":
        _tqdm_bars_off_by_default()


def _tqdm_bars_off_by_default() -> None:
    """tqdm reads ``TQDM_*`` defaults once, when it is imported, and torch imports it before any command starts:
    give bars that do not pass ``disable`` the same default in this process."""
    std = sys.modules.get("tqdm.std")
    if std is None:
        return
    init = std.tqdm.__dict__["__init__"]
    func, keywords = (init.func, dict(init.keywords)) if isinstance(init, partialmethod) else (init, {})
    std.tqdm.__init__ = partialmethod(func, **{**keywords, "disable": True})
