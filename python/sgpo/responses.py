"""Responses of models to prompts, sampled with fixed per-row seeds and cached by content, and their log-probs.

Every model is sampled with the same per-row seeds (:func:`sgpo.generation.row_seed`), so two models that agree on a
prompt give the same response. Responses (and log-probs) are cached as JSON files in a cache directory, keyed by the
model's files (their content, not their place), the prompts and the sampling settings: evaluations that share a
cache sample each model once, and two runs that trained the same weights share their samples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

# the hidden-preference track: more prompts (the effects are a few points) and short answers (the rubrics need few)
HIDDEN_DEFAULTS = {"num_prompts": 256, "max_new_tokens": 48}


@dataclass(frozen=True)
class EvalSettings:
    """How responses are sampled for evaluation (the same for every model and the baseline)."""

    prompts: str = "test"
    num_prompts: int = 64
    max_new_tokens: int = 80
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16
    # where models answer and in what precision: "auto" = cuda in bfloat16 when a GPU is present, else cpu in float32
    device: str = "auto"
    dtype: str = "auto"

    @classmethod
    def for_prompts(cls, prompts: str, **given: object) -> EvalSettings:
        """Settings with the track's defaults (``hidden``: 256 prompts, 48 new tokens) where ``given`` has None."""
        defaults = HIDDEN_DEFAULTS if prompts == "hidden" else {}
        values = {k: v for k, v in given.items() if v is not None}
        return cls(prompts=prompts, **{**defaults, **values})

    def validate(self) -> EvalSettings:
        """The settings checked, with ``auto`` device and dtype resolved for this machine."""
        from sgpo.devices import resolve_placement

        if self.num_prompts < 1:
            raise ValueError(f"num_prompts: expected an integer >= 1, got {self.num_prompts!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected an integer >= 1, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature: expected a number >= 0, got {self.temperature!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {self.batch_size!r}")
        device, dtype = resolve_placement(self.device, self.dtype)
        return replace(self, device=device, dtype=dtype)


def _fingerprint(model: str, prompts: Sequence[str], settings: EvalSettings) -> str:
    """A key that changes when the model's files, the prompts or the sampling settings change. It reads the files'
    content, not their place: two runs that trained the same weights share their evaluation."""
    from sgpo.models import resolve_model
    from sgpo.pipeline.cache import fingerprint

    digest = hashlib.sha256()
    resolved = Path(resolve_model(model))
    digest.update((fingerprint(resolved) if resolved.exists() else str(resolved)).encode())
    # the device changes an answer by float rounding only; float32 is left out so caches made before the dtype option
    # stay valid, while any other precision samples (and is keyed) apart
    keyed = {k: v for k, v in asdict(settings).items() if k != "device" and (k != "dtype" or v != "float32")}
    digest.update(json.dumps(keyed, sort_keys=True).encode())
    digest.update("\n".join(prompts).encode())
    return digest.hexdigest()[:16]


def response_logps(model: object, tokenizer: object, prompts: Sequence[object], responses: Sequence[str]) -> np.ndarray:
    """Summed log-probs of each response (EOS included) under ``model``, with the chat template the sampler used."""
    import torch

    from sgpo.pipeline.scoring import SequenceScorer, encode, score_rows

    rows = [encode(tokenizer, p, r, system_prompt=None, max_length=1 << 30) for p, r in zip(prompts, responses)]
    with torch.no_grad():
        device = next(model.parameters()).device
        return score_rows(SequenceScorer(model), rows, pad_id=tokenizer.pad_token_id, batch_size=16, device=device)


def _cache_file(cache_dir: Path | None, name: str) -> Path | None:
    return cache_dir / f"{name}.json" if cache_dir is not None else None


def _write_cache(cache: Path | None, value: dict) -> None:
    if cache is None:
        return
    from sgpo.pipeline.files import atomic_path

    # atomic: evaluations running side by side may share the cache
    with atomic_path(cache) as tmp:
        tmp.write_text(json.dumps(value, ensure_ascii=False))


def sample_model(
    model: str, prompts: Sequence[object], settings: EvalSettings, cache_dir: Path | None, *, logps: bool = False
) -> list[str] | tuple[list[str], list[float]]:
    """One response per prompt from ``model`` (name or path), cached in ``cache_dir`` when given.

    With ``logps`` it also returns each response's log-prob under ``model`` (cached with the responses).
    """
    settings = settings.validate()
    cache = _cache_file(cache_dir, _fingerprint(model, [json.dumps(p) for p in prompts], settings))
    cached = json.loads(cache.read_text()) if cache is not None and cache.is_file() else None
    if cached is not None and (not logps or "logps" in cached):
        return (cached["responses"], cached["logps"]) if logps else cached["responses"]
    from sgpo.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model)
    policy = load_model(model, dtype=settings.dtype, device=settings.device)
    if cached is not None:
        responses = cached["responses"]
    else:
        responses = _sample(policy, tokenizer, prompts, settings)
    record = {"model": str(model), "responses": responses}
    if logps:
        record["logps"] = response_logps(policy, tokenizer, prompts, responses).tolist()
    _write_cache(cache, record)
    return (responses, record["logps"]) if logps else responses


def _sample(policy: object, tokenizer: object, prompts: Sequence[object], settings: EvalSettings) -> list[str]:
    from sgpo.generation import generate_responses

    return [
        rows[0]
        for rows in generate_responses(
            policy,
            tokenizer,
            list(prompts),
            num_samples=1,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=settings.seed,
            batch_size=settings.batch_size,
        )
    ]


def cached_logps(
    model: str,
    items: Sequence[tuple[Sequence[object], Sequence[str]]],
    cache_dir: Path | None,
    settings: EvalSettings | None = None,
) -> list[np.ndarray]:
    """Log-probs under ``model`` of each item's (prompts, responses), cached; the model is loaded once, if at all.

    They are computed on ``settings``' device in its dtype (default: the CPU in float32)."""
    placement = replace(EvalSettings(), device="cpu", dtype="float32")
    if settings is not None:
        placement = replace(placement, device=settings.device, dtype=settings.dtype)
    out: list[np.ndarray | None] = []
    missing = []
    for i, (prompts, responses) in enumerate(items):
        digest = hashlib.sha256(json.dumps([list(map(json.dumps, prompts)), list(responses)]).encode())
        cache = _cache_file(cache_dir, f"logps_{_fingerprint(model, [], placement)}_{digest.hexdigest()[:16]}")
        if cache is not None and cache.is_file():
            out.append(np.asarray(json.loads(cache.read_text())["logps"]))
        else:
            out.append(None)
            missing.append((i, cache))
    if missing:
        from sgpo.models import load_model, load_tokenizer

        tokenizer = load_tokenizer(model)
        policy = load_model(model, dtype=placement.dtype, device=placement.device)
        for i, cache in missing:
            values = response_logps(policy, tokenizer, *items[i])
            _write_cache(cache, {"model": str(model), "logps": values.tolist()})
            out[i] = values
    return [np.asarray(v) for v in out]


def response_lengths(model: str, prompts: Sequence[object], responses: Sequence[str]) -> np.ndarray:
    """Response tokens (EOS included) of each (prompt, response) under ``model``'s tokenizer, as log-probs count."""
    from sgpo.models import load_tokenizer
    from sgpo.pipeline.scoring import IGNORE_INDEX, encode

    tokenizer = load_tokenizer(model)
    rows = [encode(tokenizer, p, r, system_prompt=None, max_length=1 << 30) for p, r in zip(prompts, responses)]
    return np.array([sum(x != IGNORE_INDEX for x in labels) for _, labels in rows], dtype=np.float64)
