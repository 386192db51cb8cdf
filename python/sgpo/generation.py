"""Sampling responses from a chat model: batched ``generate`` with a KV cache, or vLLM when it is installed.

Every (prompt, sample) row draws from its own ``torch.Generator`` seeded from ``(seed, prompt index, sample index)``,
so a prompt's samples do not depend on which other prompts share its batch, on the batch size, or on how many processes
split the work: a resumed or re-sharded run samples the same responses (up to float rounding of differently padded
batches).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# the paper's sampling settings (SSAPO Alg. 1 / SPA: temperature 0.7, at most 300 new tokens)
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_NEW_TOKENS = 300


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A 63-bit seed for one sample of one prompt, stable across Python runs and platforms."""
    digest = hashlib.sha256(f"{seed}:{prompt_index}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def chat_messages(prompt: str | Sequence[dict[str, str]], system_prompt: str | None = None) -> list[dict[str, str]]:
    """A prompt as chat messages: a string becomes one user turn; a message list is used as given."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def format_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[dict[str, str]],
    system_prompt: str | None = None,
) -> str:
    """The prompt rendered with the tokenizer's chat template, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(
        chat_messages(prompt, system_prompt), tokenize=False, add_generation_prompt=True
    )


class _PerRowSampler:
    """A logits processor that samples each row with its own generator and leaves only that token finite.

    ``generate`` then runs greedily (``do_sample=False``) and picks exactly the sampled token, so the randomness of a
    row is owned by the row rather than by the batch's shared global generator.
    """

    def __init__(self, generators: list[torch.Generator], temperature: float, top_p: float) -> None:
        self.generators = generators
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the top token always stays)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        picks = torch.empty(probs.shape[0], dtype=torch.long)
        cpu_probs = probs.cpu()
        for row, generator in enumerate(self.generators):
            picks[row] = torch.multinomial(cpu_probs[row], 1, generator=generator)[0]
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, picks.to(scores.device).unsqueeze(-1), 0.0)
        return out


def _check_sampling_args(
    prompts: Sequence[Any], num_samples: int, max_new_tokens: int, temperature: float, top_p: float, batch_size: int
) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples: expected an integer >= 1, got {num_samples!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected an integer >= 1, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature: expected a number >= 0 (0 = greedy), got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    for i, prompt in enumerate(prompts):
        if (isinstance(prompt, str) and not prompt.strip()) or (not isinstance(prompt, str) and not prompt):
            raise ValueError(f"prompts: prompt {i} is empty")


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | Sequence[dict[str, str]]],
    *,
    num_samples: int = 1,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    prompt_indices: Sequence[int] | None = None,
    system_prompt: str | None = None,
    progress: bool = False,
) -> list[list[str]]:
    """``num_samples`` responses for each prompt (strings or chat message lists), formatted with the chat template.

    Rows are batched ``batch_size`` (prompt, sample) rows at a time, prompts sorted by length to limit padding. Sample
    ``j`` of prompt ``i`` is seeded by :func:`row_seed` ``(seed, prompt_indices[i], j)``; ``prompt_indices`` defaults to
    ``0..len(prompts)-1``; a caller that splits a prompt list passes the global indices so every split samples alike.
    ``temperature=0`` decodes greedily. Returns the decoded responses without the prompt or special tokens.
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, LogitsProcessorList

    _check_sampling_args(prompts, num_samples, max_new_tokens, temperature, top_p, batch_size)
    if prompt_indices is None:
        prompt_indices = range(len(prompts))
    if len(prompt_indices) != len(prompts):
        raise ValueError(f"prompt_indices: expected {len(prompts)} indices (one per prompt), got {len(prompt_indices)}")
    texts = [format_prompt(tokenizer, p, system_prompt) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    rows = sorted(
        ((i, j) for i in range(len(prompts)) for j in range(num_samples)), key=lambda r: (-len(encoded[r[0]]), r)
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = [tokenizer.eos_token_id]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        use_cache=True,
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[list[str]] = [[""] * num_samples for _ in prompts]
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc="generate", disable=not progress, unit="batch"):
            batch = rows[start : start + batch_size]
            width = max(len(encoded[i]) for i, _ in batch)
            # left padding: every row's next token sits in the last column
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (i, _) in enumerate(batch):
                ids = encoded[i]
                input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[r, width - len(ids) :] = 1
            processors = LogitsProcessorList()
            if temperature > 0:
                generators = [torch.Generator().manual_seed(row_seed(seed, prompt_indices[i], j)) for i, j in batch]
                processors.append(_PerRowSampler(generators, temperature, top_p))
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
                logits_processor=processors,
            )
            for r, (i, j) in enumerate(batch):
                results[i][j] = tokenizer.decode(output[r, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return results


def vllm_available() -> bool:
    """Whether the vLLM backend can be used (vLLM importable and a CUDA device present)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def generate_responses_vllm(
    model_path: str,
    prompts: Sequence[str | Sequence[dict[str, str]]],
    *,
    num_samples: int = 1,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = 1.0,
    seed: int = 0,
    prompt_indices: Sequence[int] | None = None,
    system_prompt: str | None = None,
    gpu_memory_utilization: float = 0.5,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
) -> list[list[str]]:
    """The vLLM counterpart of :func:`generate_responses` for a saved model directory.

    Prompt ``i``'s samples draw from one vLLM seed, :func:`row_seed` ``(seed, prompt_indices[i], 0)``, so a prompt's
    samples do not depend on the other prompts (they differ from transformers' samples for the same seed).
    ``gpu_memory_utilization``, ``tensor_parallel_size`` and ``max_model_len`` are vLLM's ``LLM`` arguments.
    """
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    _check_sampling_args(prompts, num_samples, max_new_tokens, temperature, top_p, 1)
    if prompt_indices is None:
        prompt_indices = range(len(prompts))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    texts = [format_prompt(tokenizer, p, system_prompt) for p in prompts]
    llm = LLM(
        model=model_path,
        seed=seed,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
    )
    params = [
        SamplingParams(
            n=num_samples,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_new_tokens,
            seed=row_seed(seed, index, 0),
        )
        for index in prompt_indices
    ]
    outputs = llm.generate(texts, params)
    return [[choice.text for choice in out.outputs] for out in outputs]
