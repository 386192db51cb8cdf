"""Judges that annotate sampled responses: the policy's implicit reward, a reward model, or any pluggable class.

A judge has ``scores(prompts, responses) -> np.ndarray`` (one score per (prompt, response) pair) and
``win_probabilities(prompt, responses) -> np.ndarray`` (SPPO's ``P_i`` of each of K responses). The config key
``judge.name`` picks the class: a registered name or ``"package.module:Class"``; ``judge.options`` are its keyword
arguments. A class with a ``from_pipeline(context, **options)`` classmethod also receives the running policy.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

JUDGES: dict[str, str] = {
    "implicit_reward": "sgpo.pipeline.judges:ImplicitRewardJudge",
    "reward_model": "sgpo.pipeline.judges:RewardModelJudge",
    "verifiable": "sgpo.evaluation.judge:VerifiableJudge",
}


@dataclass
class JudgeContext:
    """What the pipeline hands a judge: log-probs of responses under the current policy and under the SFT model."""

    policy_logps: Callable[[Sequence[Any], Sequence[str]], np.ndarray]
    sft_logps: Callable[[Sequence[Any], Sequence[str]], np.ndarray]
    beta: float


def bradley_terry_win_probabilities(scores: np.ndarray, temperature: float) -> np.ndarray:
    """SPPO's ``P_i = (1/K) sum_j sigmoid((s_i - s_j) / temperature)``, ``j = i`` counting 1/2 (DESIGN 1.4)."""
    diff = (scores[:, None] - scores[None, :]) / temperature
    return (1.0 / (1.0 + np.exp(-diff))).mean(axis=1)


class ScoreJudge:
    """A judge defined by a scalar score; win probabilities follow Bradley-Terry with ``temperature``."""

    name = "score"
    temperature: float = 1.0

    def scores(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def win_probabilities(self, prompt: Any, responses: Sequence[str]) -> np.ndarray:
        if len(responses) == 0:
            raise ValueError("responses: expected at least one response, got none")
        return bradley_terry_win_probabilities(self.scores([prompt] * len(responses), responses), self.temperature)


class ImplicitRewardJudge(ScoreJudge):
    """SPA's self-annotation (SSAPO Alg. 1 step 2): ``r(y) = log pi_t(y|x) - log pi_SFT(y|x)``.

    Win probabilities use ``sigmoid(beta * (r_i - r_j))``, the DPO preference model of the policy itself.
    """

    name = "implicit_reward"

    def __init__(self, context: JudgeContext) -> None:
        self.context = context
        self.temperature = 1.0 / context.beta

    @classmethod
    def from_pipeline(cls, context: JudgeContext) -> ImplicitRewardJudge:
        return cls(context)

    def scores(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
        policy = self.context.policy_logps(prompts, responses)
        sft = self.context.sft_logps(prompts, responses)
        return np.asarray(policy, dtype=np.float64) - np.asarray(sft, dtype=np.float64)


class RewardModelJudge(ScoreJudge):
    """An ``AutoModelForSequenceClassification`` reward model scoring the chat-formatted (prompt, response)."""

    name = "reward_model"

    def __init__(
        self, model: str, *, batch_size: int = 8, max_length: int = 1024, temperature: float = 1.0, device: str = "auto"
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from sgpo.models import resolve_model

        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"judge.options.temperature: expected a finite number > 0, got {temperature!r}")
        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.temperature = temperature

    def _text(self, prompt: Any, response: str) -> str:
        from sgpo.generation import chat_messages

        messages = chat_messages(prompt) + [{"role": "assistant", "content": response}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n\n".join(m["content"] for m in messages)

    def scores(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"responses: expected {len(prompts)} (one per prompt), got {len(responses)}")
        texts = [self._text(p, r) for p, r in zip(prompts, responses, strict=True)]
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                ).to(self.device)
                out.append(self.model(**batch).logits[:, 0].float().cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def judge_class(name: str) -> type:
    """The class a ``judge.name`` refers to: a key of :data:`JUDGES` or ``"package.module:Class"``."""
    target = JUDGES.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"judge.name: unknown judge {name!r}; expected one of {', '.join(JUDGES)} or 'package.module:Class'"
        )
    module_name, class_name = target.split(":", 1)
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"judge.name: cannot import {target!r}: {err}") from err


def build_judge(name: str, options: dict[str, Any], context: JudgeContext | None) -> Any:
    """Instantiate a judge; ``from_pipeline`` classes get ``context`` (the running policy) as well."""
    cls = judge_class(name)
    try:
        if hasattr(cls, "from_pipeline"):
            if context is None:
                raise ValueError(f"judge.name: {name!r} scores with the policy and cannot judge outside a run")
            judge = cls.from_pipeline(context, **options)
        else:
            judge = cls(**options)
    except TypeError as err:
        raise ValueError(f"judge.options: {options!r} do not fit {cls.__name__}: {err}") from err
    for method in ("scores", "win_probabilities"):
        if not callable(getattr(judge, method, None)):
            raise ValueError(f"judge.name: {cls.__name__} has no {method}() method; a judge needs both")
    return judge
