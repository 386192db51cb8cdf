"""Shared fixtures: a tiny randomly initialised Llama with a byte-level chat tokenizer (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny ``LlamaForCausalLM`` + tokenizer directory (``sgpo.models.build_tiny_model``, seed 0)."""
    pytest.importorskip("transformers")
    from sgpo.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
