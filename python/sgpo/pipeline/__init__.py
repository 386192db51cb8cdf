"""The resumable training pipeline: ``sgpo run CONFIG [key=value ...]``.

:mod:`~sgpo.pipeline.runner` runs the rounds. :mod:`~sgpo.pipeline.stages` holds one module per stage (generate,
annotate, solve, update, evaluate, report), each naming the run-directory files it reads and writes, and
:mod:`~sgpo.pipeline.context` what they share: the config, the accelerator, the run directory, the stage cache and the
chunk-and-resume loop. The leader's loss and training loop live in :mod:`~sgpo.pipeline.leader`, the judges and their
registry in :mod:`~sgpo.pipeline.judges`, the config's sections in :mod:`~sgpo.pipeline.config`.
"""

from sgpo.pipeline.config import RunConfig, config_from_dict
from sgpo.pipeline.recipes import bundled_configs, load_config

__all__ = ["RunConfig", "bundled_configs", "config_from_dict", "load_config", "run"]


def run(cfg: RunConfig) -> dict:
    """Run or continue every round of ``cfg`` (imports transformers/accelerate on first use)."""
    from sgpo.pipeline.runner import run as _run

    return _run(cfg)
