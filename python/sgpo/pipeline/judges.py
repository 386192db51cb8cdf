"""Judges that annotate sampled responses: the policy's implicit reward, a reward model, or any pluggable class.

A judge is anything with ``scores(prompts, responses) -> np.ndarray`` (one score per (prompt, response) pair).
It may also define ``win_probabilities(prompt, responses) -> np.ndarray`` (SPPO's ``P_i`` of each of K responses);
without it, :func:`win_probabilities` uses Bradley-Terry on the scores with the judge's ``temperature`` (default 1).
The same judge works in ``sgpo label --judge``, ``sgpo run`` (``judge.name``, ``evaluate.judge.name``) and ``sgpo eval
--judge``: a registered name or ``"package.module:Class"``, with keyword arguments (``judge.options``). A class with a
``from_pipeline(context, **options)`` classmethod also receives the running policy.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgpo.evaluation import comparison

JUDGES: dict[str, str] = {
    "implicit_reward": "sgpo.pipeline.judges:ImplicitRewardJudge",
    "reward_model": "sgpo.pipeline.judges:RewardModelJudge",
    "verifiable": "sgpo.evaluation.judge:VerifiableJudge",
    # hidden-preference rubrics (sgpo.evaluation.rubrics)
    "warmth": "sgpo.evaluation.rubrics:WarmthJudge",
    "concreteness": "sgpo.evaluation.rubrics:ConcretenessJudge",
    "structure": "sgpo.evaluation.rubrics:StructureJudge",
}
IMPLICIT_REWARDS = ("sum", "mean", "length_debiased")
# "on_task": a response that fails the generic on-task check ranks below every response that passes it
ANNOTATOR_GATES = ("none", "on_task")


@dataclass
class JudgeContext:
    """What the pipeline hands a judge: log-probs of responses under the current policy and under the SFT model."""

    policy_logps: Callable[[Sequence[Any], Sequence[str]], np.ndarray]
    sft_logps: Callable[[Sequence[Any], Sequence[str]], np.ndarray]
    beta: float
    # response tokens (EOS included) of each (prompt, response), as the log-probs count them
    lengths: Callable[[Sequence[Any], Sequence[str]], np.ndarray] | None = None


def win_probabilities(judge: Any, prompt: Any, responses: Sequence[str]) -> np.ndarray:
    """The judge's own ``win_probabilities`` where it has one, else Bradley-Terry on its scores."""
    if callable(getattr(judge, "win_probabilities", None)):
        return np.asarray(judge.win_probabilities(prompt, responses), dtype=np.float64)
    if len(responses) == 0:
        raise ValueError("responses: expected at least one response, got none")
    scores = np.asarray(judge.scores([prompt] * len(responses), list(responses)), dtype=np.float64)
    return comparison.win_probabilities(scores, float(getattr(judge, "temperature", 1.0)))


def choose_pair(values: np.ndarray, admissible: np.ndarray | None = None) -> tuple[int, int]:
    """Indices of the chosen and rejected response among one prompt's samples: the highest and the lowest value,
    ties keeping the earlier sample. With ``admissible`` flags (a gated judge) and samples on both sides of the
    gate, the chosen is the best admissible sample and the rejected the worst inadmissible one."""
    v = np.asarray(values, dtype=np.float64)
    if admissible is not None:
        ok = np.asarray(admissible, dtype=bool)
        if ok.shape != v.shape:
            raise ValueError(f"admissible: expected one flag per value ({v.shape}), got shape {ok.shape}")
        if ok.any() and not ok.all():
            good, bad = np.flatnonzero(ok), np.flatnonzero(~ok)
            return int(good[np.argmax(v[good])]), int(bad[np.argmin(v[bad])])
    return int(np.argmax(v)), int(np.argmin(v))


def gated_difference(
    chosen: np.ndarray, rejected: np.ndarray, chosen_ok: np.ndarray | None, rejected_ok: np.ndarray | None
) -> np.ndarray:
    """How much a gated judge prefers ``chosen`` to ``rejected`` per pair: the gate decides where it separates the
    two (+-inf), the scores elsewhere; without flags, the score difference."""
    diff = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    if chosen_ok is None or rejected_ok is None:
        return diff
    gate = np.asarray(chosen_ok, dtype=np.float64) - np.asarray(rejected_ok, dtype=np.float64)
    return np.where(gate > 0, np.inf, np.where(gate < 0, -np.inf, diff))


def length_debias_alpha(score_diffs: np.ndarray, length_diffs: np.ndarray) -> float:
    """The ``alpha`` that makes chosen and rejected equally long on average when each pair picks by ``r - alpha * len``.

    For pair ``i`` (responses a, b) with ``dr_i = r_a - r_b`` and ``dl_i = len_a - len_b``, the chosen-minus-rejected
    length is ``sign(dr_i - alpha dl_i) dl_i``; its mean is non-increasing in ``alpha`` and steps only at the
    breakpoints ``dr_i / dl_i``. The answer is the breakpoint where that mean changes sign (0 when the raw choice
    already has no length difference on average, or no pair differs in length).
    """
    dr, dl = np.asarray(score_diffs, dtype=np.float64), np.asarray(length_diffs, dtype=np.float64)
    if dr.shape != dl.shape or dr.ndim != 1:
        raise ValueError(f"score_diffs, length_diffs: expected 1-D arrays of one shape, got {dr.shape} and {dl.shape}")

    def gap(alpha: float) -> float:
        return float(np.mean(np.sign(dr - alpha * dl) * dl)) if dr.size else 0.0

    if not np.any(dl != 0) or gap(0.0) == 0.0:
        return 0.0
    breaks = np.unique(dr[dl != 0] / dl[dl != 0])
    # the gap is constant between breakpoints: probe each interval; it is > 0 below the first breakpoint and < 0
    # above the last, so it changes sign once, at a breakpoint. Of that breakpoint (where the pairs tied there count
    # 0) and the intervals on either side, take the smallest imbalance, an interval (no ties) when it is as small.
    probes = np.concatenate([[breaks[0] - 1.0], (breaks[:-1] + breaks[1:]) / 2, [breaks[-1] + 1.0]])
    k = next(k for k, a in enumerate(probes) if gap(float(a)) <= 0)
    candidates = [float(probes[k]), float(probes[k - 1]), float(breaks[k - 1])]
    return min(candidates, key=lambda a: abs(gap(a)))


class ScoreJudge:
    """A judge defined by a scalar score; win probabilities follow Bradley-Terry with ``temperature``."""

    name = "score"
    temperature: float = 1.0

    def scores(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def win_probabilities(self, prompt: Any, responses: Sequence[str]) -> np.ndarray:
        if len(responses) == 0:
            raise ValueError("responses: expected at least one response, got none")
        return comparison.win_probabilities(self.scores([prompt] * len(responses), responses), self.temperature)


class ImplicitRewardJudge(ScoreJudge):
    """SPA's self-annotation (SSAPO Alg. 1 step 2): ``r(y) = log pi_t(y|x) - log pi_SFT(y|x)``.

    ``reward`` (``judge.options.reward``) picks the variant:

    - ``"sum"``: the summed log-ratio over the response's tokens (the paper);
    - ``"mean"``: the per-token average, ``r(y) / len(y)``;
    - ``"length_debiased"``: ``r(y) - alpha * len(y)``, ``alpha`` fitted on the round's pairs by
      :func:`length_debias_alpha` so that the chosen and rejected responses are equally long on average
      (:meth:`calibrate`).

    ``gate`` (``judge.options.gate``): ``"on_task"`` ranks a response that fails the generic on-task check
    (:func:`sgpo.evaluation.rubrics.on_task`: empty, refusing, copying the prompt, looping, or never naming the
    prompt's topic) below every response that passes, whatever its reward (:meth:`admissible`). The check reads the
    prompt and the response only, never a rubric: it knows what an answer is, not which answers a labeller prefers.
    It decides the chosen and rejected responses of a pair and the held-out agreement; SPPO's win probabilities
    stay the implicit reward's.

    Win probabilities use ``sigmoid(beta * (r_i - r_j))``, the DPO preference model of the policy itself.
    """

    name = "implicit_reward"

    def __init__(self, context: JudgeContext, reward: str = "sum", gate: str = "none") -> None:
        if reward not in IMPLICIT_REWARDS:
            raise ValueError(f"judge.options.reward: expected one of {', '.join(IMPLICIT_REWARDS)}, got {reward!r}")
        if reward != "sum" and context.lengths is None:
            raise ValueError(f"judge.options.reward: {reward!r} needs response lengths, which this caller cannot give")
        if gate not in ANNOTATOR_GATES:
            raise ValueError(f"judge.options.gate: expected one of {', '.join(ANNOTATOR_GATES)}, got {gate!r}")
        self.context = context
        self.reward = reward
        self.gate = gate
        self.temperature = 1.0 / context.beta
        self.alpha = 0.0

    @property
    def calibrated(self) -> bool:
        """Whether :meth:`calibrate` must see a whole round's scores before they mean anything."""
        return self.reward == "length_debiased"

    @classmethod
    def from_pipeline(cls, context: JudgeContext, reward: str = "sum", gate: str = "none") -> ImplicitRewardJudge:
        return cls(context, reward, gate)

    def admissible(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray | None:
        """Whether each response passes the judge's gate; None without one."""
        if self.gate == "none":
            return None
        from sgpo.evaluation.rubrics import on_task

        return np.array([on_task(p, r) for p, r in zip(prompts, responses, strict=True)], dtype=bool)

    def lengths(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
        if self.context.lengths is None:
            raise ValueError("judge.options.reward: response lengths are not available")
        return np.asarray(self.context.lengths(prompts, responses), dtype=np.float64)

    def scores(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
        policy = self.context.policy_logps(prompts, responses)
        sft = self.context.sft_logps(prompts, responses)
        ratio = np.asarray(policy, dtype=np.float64) - np.asarray(sft, dtype=np.float64)
        if self.reward == "mean":
            return ratio / np.maximum(self.lengths(prompts, responses), 1.0)
        if self.reward == "length_debiased":
            return ratio - self.alpha * self.lengths(prompts, responses)
        return ratio

    def calibrate(self, scores: Sequence[np.ndarray], lengths: Sequence[np.ndarray]) -> list[np.ndarray]:
        """For ``length_debiased``: fit ``alpha`` on every within-prompt pair of a round from the raw summed
        log-ratios (``scores[i]``: the K responses of prompt i, as :meth:`scores` gives them before any fit) and
        return ``r - alpha * len``; the other variants return ``scores`` unchanged."""
        raw = [np.asarray(s, dtype=np.float64) for s in scores]
        if self.reward != "length_debiased":
            return raw
        sizes = [np.asarray(n, dtype=np.float64) for n in lengths]
        pairs = [np.triu_indices(len(s), k=1) for s in raw]
        dr = np.concatenate([s[i] - s[j] for s, (i, j) in zip(raw, pairs, strict=True)] or [np.zeros(0)])
        dl = np.concatenate([n[i] - n[j] for n, (i, j) in zip(sizes, pairs, strict=True)] or [np.zeros(0)])
        self.alpha = length_debias_alpha(dr, dl)
        return [s - self.alpha * n for s, n in zip(raw, sizes, strict=True)]


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


def judge_class(name: str, option: str = "judge.name") -> type:
    """The class a judge name refers to: a key of :data:`JUDGES` or ``"package.module:Class"``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{option}: expected a judge name or 'package.module:Class', got {name!r}")
    target = JUDGES.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"{option}: unknown judge {name!r}; expected one of {', '.join(JUDGES)} or 'package.module:Class'"
        )
    module_name, class_name = target.split(":", 1)
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{option}: cannot import {target!r}: {err}") from err


def check_judge_class(name: str, option: str = "judge.name") -> type:
    """:func:`judge_class`, refusing a class without a ``scores`` method: a check that runs before any model loads."""
    cls = judge_class(name, option)
    if not callable(getattr(cls, "scores", None)):
        raise ValueError(f"{option}: {cls.__name__} has no scores(prompts, responses) method; a judge needs one")
    return cls


def _options_key(option: str) -> str:
    return option.rsplit(".", 1)[0] + ".options" if "." in option else f"{option}-options"


def check_judge_options(name: str, options: dict[str, Any], option: str = "judge.name") -> None:
    """Refuse, before any model loads, options that the judge's constructor would not take.

    A recipe's options stay when only ``judge.name`` changes; the message says how to drop them."""
    import inspect

    cls = check_judge_class(name, option)
    pipeline = hasattr(cls, "from_pipeline")
    try:
        inspect.signature(cls.from_pipeline if pipeline else cls).bind(*([None] if pipeline else []), **options)
    except TypeError as err:
        raise ValueError(
            f"{_options_key(option)}: {options!r} do not fit {cls.__name__}: {err} "
            f"(a recipe's options stay when {option} changes; {_options_key(option)}={{}} drops them)"
        ) from err


def build_judge(name: str, options: dict[str, Any], context: JudgeContext | None, option: str = "judge.name") -> Any:
    """Instantiate a judge; ``from_pipeline`` classes get ``context`` (the running policy) as well."""
    cls = check_judge_class(name, option)
    options_key = _options_key(option)
    try:
        if hasattr(cls, "from_pipeline"):
            if context is None:
                raise ValueError(f"{option}: {name!r} scores with the policy and cannot judge outside a run")
            judge = cls.from_pipeline(context, **options)
        else:
            judge = cls(**options)
    except TypeError as err:
        raise ValueError(f"{options_key}: {options!r} do not fit {cls.__name__}: {err}") from err
    if not callable(getattr(judge, "scores", None)):
        raise ValueError(f"{option}: {cls.__name__} has no scores() method; a judge needs one")
    return judge
