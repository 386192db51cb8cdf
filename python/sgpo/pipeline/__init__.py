"""The resumable training pipeline: ``sgpo run CONFIG [key=value ...]`` (see :mod:`sgpo.pipeline.runner`)."""

from sgpo.pipeline.config import RunConfig, bundled_configs, config_from_dict, load_config

__all__ = ["RunConfig", "bundled_configs", "config_from_dict", "load_config", "run"]


def run(cfg: RunConfig) -> dict:
    """Run or continue every round of ``cfg`` (imports transformers/accelerate on first use)."""
    from sgpo.pipeline.runner import run as _run

    return _run(cfg)
