"""Which causal LMs sgpo's prompt-once forwards are proven for.

Both prompt-once layouts (packed pairs, :mod:`sgpo.packing`; a key/value cache shared pair by pair,
:mod:`sgpo.integrations.shared_prompt`) give exactly the plain forward's log-probs only where every token mixer is
attention: a layer that carries state along the sequence (a Mamba or other state-space mixer, a short convolution,
linear attention, a recurrence) would let the rejected response read the chosen one's state, and its cache may not
replicate per response. So the layouts run only on the model types the parity tests check against the plain forward
(``tests/test_packing.py``); every other model takes the full-sequence forward, named once by the caller.
"""

from __future__ import annotations

from torch import nn

# the model types of tests/test_packing.py's FAMILIES (a test keeps the two lists equal)
TESTED_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3", "qwen3_moe"})
# words in a token mixer's class name that mean it carries state along the sequence
_STATEFUL = ("mamba", "ssm", "conv", "linearattention", "recurren", "deltanet", "rwkv", "lstm")


def _text_model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "model_type", None)


def stateful_layer(model: nn.Module) -> str | None:
    """The class name of the first module of ``model`` (outside torch itself) that carries state along the
    sequence, or None."""
    for module in model.modules():
        cls = type(module)
        if cls.__module__.startswith("torch."):
            continue
        if any(word in cls.__name__.lower() for word in _STATEFUL):
            return cls.__name__
    return None


def prompt_sharing_blocker(model: nn.Module) -> str | None:
    """Why ``model``'s pairs cannot be forwarded prompt-once (naming the layer or model type), or None when they can."""
    layer = stateful_layer(model)
    if layer is not None:
        return f"layer type {layer} carries state along the sequence, so a prompt-once layout is not its plain forward"
    model_type = _text_model_type(model)
    if model_type not in TESTED_MODEL_TYPES:
        return (
            f"model type {model_type!r} is not among those whose prompt-once forward is tested against the plain "
            f"forward ({', '.join(sorted(TESTED_MODEL_TYPES))})"
        )
    return None
