"""What the command line shows: sgpo's own progress bars and summaries, not the libraries' chatter beneath them.

Without ``--verbose``, every ``sgpo`` command silences what transformers, datasets, peft, accelerate, torch and triton
print on their own (a "Loading weights" bar per model load, "Generating train split" bars, FutureWarnings about
their APIs). Environment variables carry the setting to processes the command starts (``accelerate launch``
workers); a variable the user has set is left as it is.
"""

from __future__ import annotations

import os
import warnings

QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
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
