"""Run configuration: nested dataclasses read from YAML, overridable from the command line as ``key.sub=value``.

Every hyperparameter of a run lives here under the names TRL users know (``beta``, ``loss_type``,
``label_smoothing``, ...); the bundled recipes in ``sgpo/configs/*.yaml`` set the papers' values. Unknown keys are
errors that list the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from sgpo.follower import EPSILON_CAP
from sgpo.loss_args import BATCH_COUPLED, LENGTH_NORMALISED
from sgpo.pipeline.typed import build
from sgpo.reference import LOSS_TYPES, SPACES

METHODS = ("ssapo", "sppo", "dpo")
FOLLOWER_APPLY = ("worst_case", "soft_trim", "margin_drop")
OPTIMIZERS = ("adamw", "rmsprop")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
# the pipeline solves on a host array of margins: "auto" is the exact C++ solver there ("cuda" needs device input)
FOLLOWER_BACKENDS = ("auto", "cpu", "torch", "paper")
EVAL_DTYPES = ("auto", "float32", "bfloat16", "float16")
_MAX_SHIFT = f"{EPSILON_CAP!r} (the cap follows follower.epsilon), a number >= 0, or null (uncapped)"


@dataclass
class ModelConfig:
    name_or_path: str = "SmolLM2-135M-Instruct"
    dtype: str = "float32"
    # LoRA: the reference is the policy with its adapter disabled; false = full fine-tuning with a frozen reference
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # adapters on the last N decoder layers only (null = all): the backward pass then stops at the lowest adapted layer
    lora_layers: int | None = None
    gradient_checkpointing: bool = False
    system_prompt: str | None = None


@dataclass
class DataConfig:
    # "default" = the small files bundled in sgpo/data; else a JSON/JSONL/parquet path, a saved dataset or a hub name
    seed_pairs: str | None = "default"
    prompts: str | None = "default"
    split: str = "train"
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    # with prompts: null, this fraction of seed_pairs is the gold seed, the rest is used prompt-only (paper: 2K of 60K)
    seed_fraction: float | None = None
    max_seed_pairs: int | None = None
    # new prompts per round t = 1..rounds (paper: 8K/20K/30K); one number = the same each round. A prompt table with a
    # round_column gives round t its rows labelled t (the first prompts_per_round of them); else the shuffled pool is
    # cut in order (null = split evenly)
    prompts_per_round: list[int] | int | None = None
    round_column: str = "round"
    max_prompt_length: int = 256
    max_length: int = 512
    # over-long prompts: "truncate" keeps their last max_prompt_length tokens, "skip" drops them; both are counted
    long_prompts: str = "truncate"


@dataclass
class VllmConfig:
    """How vLLM runs when ``generation.backend`` picks it (the policy is exported to a merged copy first)."""

    # the share of each GPU's memory vLLM may take: the training processes keep the policy on the same GPUs
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    # the longest prompt + response vLLM plans for (null = the model's own context length)
    max_model_len: int | None = None


@dataclass
class GenerationConfig:
    num_samples: int = 2
    max_new_tokens: int = 300
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 8
    # "auto" uses vLLM when it is installed and a GPU is present, else transformers' generate
    backend: str = "auto"
    vllm: VllmConfig = field(default_factory=VllmConfig)


@dataclass
class JudgeConfig:
    # implicit_reward | reward_model | verifiable | warmth | concreteness | structure | "package.module:Class"
    name: str = "implicit_reward"
    # the judge's keyword arguments; implicit_reward takes reward: sum (the paper) | mean | length_debiased and
    # gate: none | on_task (answers that fail the generic on-task check rank last)
    options: dict[str, Any] = field(default_factory=dict)
    # gold-labelled pairs no round trains on: the annotator's agreement with them is measured before every round
    agreement_pairs: str | None = None


@dataclass
class FollowerConfig:
    epsilon: float = 0.01
    pieces: int = 6
    space: str = "probability"
    # probability space: xi = sigmoid(gamma * h) (the paper's code uses gamma = 0.1); margin space: xi = beta * h
    gamma: float = 0.1
    group_size: int | None = None
    # cap on each point's displacement: "epsilon" (the paper's code: follows follower.epsilon, also when epsilon is
    # overridden), a number, or null (uncapped: Thm 3.3's program as written); validate() resolves it to a number
    max_shift: float | str | None = EPSILON_CAP
    # sgpo.worst_case's backend: "auto"/"cpu" (the exact C++ solver), "torch" (its pure-PyTorch reference), or
    # "paper" (the SSAPO paper's inexact SLSQP follower, probability space only; for comparison)
    backend: str = "auto"
    # what the round trains with the worst case: "worst_case" (the ssapo loss against its weights and shifts), or
    # "soft_trim" (train.loss_type's loss, each pair weighted by the mass the worst case leaves unshifted: the
    # follower's reweighting without its adversarial shifts, a control), or "margin_drop" (train.loss_type's loss
    # without as many of the round's lowest-margin pairs as the worst case attacks: the follower's plain baseline)
    apply: str = "worst_case"


@dataclass
class TrainConfig:
    loss_type: str = "ssapo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    learning_rate: float = 3e-7
    epochs: int = 1
    # the global batch (pairs per optimizer step over all processes); per_device_batch_size sets accumulation
    batch_size: int = 32
    per_device_batch_size: int = 4
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "auto"
    # optimizer steps between saved training states: a killed round resumes from the last one (null: never save)
    save_steps: int | None = 50
    # each micro-batch's pairs as [prompt, chosen, rejected] sequences in one forward, every prompt once (DESIGN 6);
    # false: one padded row per chosen and per rejected response
    packed: bool = True


@dataclass
class Round0Config:
    """Round 0: DPO on the gold seed pairs; a null value takes the ``train`` section's."""

    enabled: bool = True
    loss_type: str = "sigmoid"
    beta: float | None = None
    learning_rate: float | None = None
    epochs: int | None = None


@dataclass
class RefinementConfig:
    """SPA self-refinement (arXiv 2406.04412, DESIGN 1.5): confidence-guided label smoothing of self-annotated pairs."""

    enabled: bool = False
    alpha: float = 0.1
    quantile: float = 0.1


@dataclass
class EvaluateConfig:
    # prompts whose responses the judge scores after every round (null = no evaluation)
    prompts: str | None = None
    # the split of a hub dataset or saved DatasetDict in evaluate.prompts (a file has one)
    split: str = "train"
    num_prompts: int = 32
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(name="verifiable"))
    max_new_tokens: int | None = None
    # prompts answered per generate call (null = generation.batch_size)
    batch_size: int | None = None
    # the precision the answers are generated in, on the device the policy trains on: "auto" = bfloat16 on a GPU
    # that supports it, else float32 (the policy's own weights keep model.dtype)
    dtype: str = "auto"


@dataclass
class LoggingConfig:
    report_to: list[str] = field(default_factory=list)
    progress: bool = True


# the losses of sgpo's loss ops that the update stage computes as the papers define them: every type but those that
# divide by a response's token count, which the stage's summed log-probs do not carry (SGPODPOTrainer and sgpo.nn do),
# and those that sort the whole batch
PIPELINE_LOSS_TYPES = tuple(
    x
    for x in LOSS_TYPES
    # ipo divides by lengths only when given them; aot's sort would see one micro-batch, not the batch
    if x == "ipo" or (x not in LENGTH_NORMALISED and x not in BATCH_COUPLED)
)


def _pipeline_loss(key: str, value: str, exclude: tuple[str, ...] = ()) -> None:
    allowed = tuple(x for x in PIPELINE_LOSS_TYPES if x not in exclude)
    if value in LOSS_TYPES and value not in PIPELINE_LOSS_TYPES:
        why = "sorts the whole batch" if value in BATCH_COUPLED else "normalises by response length"
        raise ValueError(
            f"{key}: {value!r} {why}, which the pipeline's update does not compute (train it with SGPODPOTrainer or "
            f"sgpo.nn); expected one of {', '.join(allowed)}"
        )
    _choice(key, value, allowed)


@dataclass
class RunConfig:
    method: str = "ssapo"
    rounds: int = 3
    seed: int = 42
    output_dir: str = "runs/sgpo"
    # torch intra-op threads per process (null = torch's default, one per core); on shared CPUs fewer is faster
    threads: int | None = None
    # round samples, judgments and held-out agreement shared between runs (sgpo.pipeline.cache): runs that start a
    # round from the same policy files compute its stages once; null = off
    cache_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    follower: FollowerConfig = field(default_factory=FollowerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    round0: Round0Config = field(default_factory=Round0Config)
    refinement: RefinementConfig = field(default_factory=RefinementConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> RunConfig:
        """Raise ``ValueError`` naming the key for any value the run cannot use; returns ``self``."""
        from sgpo.pipeline.tracking import check_report_to

        _choice("method", self.method, METHODS)
        self.logging.report_to = check_report_to(self.logging.report_to)
        _check("rounds", self.rounds, self.rounds >= 0, "an integer >= 0")
        if self.threads is not None:
            _check("threads", self.threads, self.threads >= 1, "an integer >= 1 or null")
        if self.method == "dpo" and self.rounds:
            raise ValueError(
                f"rounds: method 'dpo' trains offline on labelled pairs only; expected 0, got {self.rounds}"
            )
        if self.method in ("ssapo", "dpo") and self.data.seed_pairs is None:
            raise ValueError(f"data.seed_pairs: method {self.method!r} needs labelled pairs, got null")
        if self.method != "dpo" and self.rounds > 0 and self.data.prompts is None and self.data.seed_fraction is None:
            raise ValueError("data.prompts: rounds need prompts; give data.prompts or data.seed_fraction")
        if self.model.lora_layers is not None:
            _check("model.lora_layers", self.model.lora_layers, self.model.lora_layers >= 1, "an integer >= 1 or null")
        d = self.data
        if d.seed_fraction is not None:
            _check("data.seed_fraction", d.seed_fraction, 0 < d.seed_fraction < 1, "a number in (0, 1)")
        _choice("data.long_prompts", d.long_prompts, ("truncate", "skip"))
        _check("data.max_prompt_length", d.max_prompt_length, d.max_prompt_length >= 1, "an integer >= 1")
        _check("data.max_length", d.max_length, d.max_length > d.max_prompt_length, "more than data.max_prompt_length")
        per_round = d.prompts_per_round
        if isinstance(per_round, list):
            _check("data.prompts_per_round", per_round, len(per_round) == self.rounds, f"{self.rounds} counts")
        if per_round is not None:
            counts = per_round if isinstance(per_round, list) else [per_round]
            _check("data.prompts_per_round", per_round, all(c >= 1 for c in counts), "counts >= 1")
        g = self.generation
        _check("generation.num_samples", g.num_samples, g.num_samples >= 2, "an integer >= 2 (pairs need two)")
        _check("generation.max_new_tokens", g.max_new_tokens, g.max_new_tokens >= 1, "an integer >= 1")
        _check("generation.temperature", g.temperature, g.temperature >= 0, "a number >= 0")
        _check("generation.top_p", g.top_p, 0 < g.top_p <= 1, "a number in (0, 1]")
        _check("generation.batch_size", g.batch_size, g.batch_size >= 1, "an integer >= 1")
        _choice("generation.backend", g.backend, ("auto", "transformers", "vllm"))
        v = g.vllm
        share = v.gpu_memory_utilization
        _check("generation.vllm.gpu_memory_utilization", share, 0 < share <= 1, "a share of GPU memory in (0, 1]")
        tp = v.tensor_parallel_size
        _check("generation.vllm.tensor_parallel_size", tp, tp >= 1, "an integer >= 1 (GPUs per vLLM engine)")
        if v.max_model_len is not None:
            need = d.max_prompt_length + g.max_new_tokens
            _check(
                "generation.vllm.max_model_len",
                v.max_model_len,
                v.max_model_len >= need,
                f"null or at least data.max_prompt_length + generation.max_new_tokens = {need}",
            )
        f = self.follower
        _check("follower.epsilon", f.epsilon, f.epsilon >= 0 and math.isfinite(f.epsilon), "a finite number >= 0")
        _check("follower.pieces", f.pieces, f.pieces >= 1, "an integer >= 1")
        _choice("follower.space", f.space, SPACES)
        _check("follower.gamma", f.gamma, f.gamma > 0, "a number > 0")
        _choice("follower.backend", f.backend, FOLLOWER_BACKENDS)
        if f.backend == "paper" and f.space != "probability":
            raise ValueError("follower.backend: 'paper' exists only for follower.space=probability")
        _choice("follower.apply", f.apply, FOLLOWER_APPLY)
        if isinstance(f.max_shift, str):
            _check("follower.max_shift", f.max_shift, f.max_shift == EPSILON_CAP, _MAX_SHIFT)
            f.max_shift = f.epsilon
        elif f.max_shift is not None:
            _check("follower.max_shift", f.max_shift, f.max_shift >= 0, _MAX_SHIFT)
        if f.apply != "worst_case" and self.method != "ssapo":
            raise ValueError(f"follower.apply: {f.apply!r} weights an ssapo run's rounds; method is {self.method!r}")
        t = self.train
        _pipeline_loss("train.loss_type", t.loss_type)
        if self.method == "ssapo" and f.apply == "worst_case" and t.loss_type != "ssapo":
            raise ValueError(f"train.loss_type: method 'ssapo' trains the 'ssapo' loss, got {t.loss_type!r}")
        if self.method == "ssapo" and f.apply != "worst_case" and t.loss_type in ("ssapo", "sppo", "sppo_hard"):
            raise ValueError(
                f"train.loss_type: follower.apply {f.apply!r} weights a pair loss without the worst case's shifts "
                f"(sigmoid: DPO), got {t.loss_type!r}"
            )
        if self.method == "sppo" and t.loss_type not in ("sppo", "sppo_hard"):
            raise ValueError(f"train.loss_type: method 'sppo' trains 'sppo' or 'sppo_hard', got {t.loss_type!r}")
        if self.method == "dpo" and t.loss_type in ("sppo", "ssapo"):
            raise ValueError(f"train.loss_type: {t.loss_type!r} needs self-play rounds; method 'dpo' is offline")
        for name in ("beta", "learning_rate"):
            value = getattr(t, name)
            _check(f"train.{name}", value, value > 0 and math.isfinite(value), "a finite number > 0")
        _check("train.epochs", t.epochs, t.epochs >= 1, "an integer >= 1")
        if t.save_steps is not None:
            _check("train.save_steps", t.save_steps, t.save_steps >= 1, "an integer >= 1 or null")
        _check("train.per_device_batch_size", t.per_device_batch_size, t.per_device_batch_size >= 1, "an integer >= 1")
        _check("train.batch_size", t.batch_size, t.batch_size >= 1, "an integer >= 1")
        _choice("train.optimizer", t.optimizer, OPTIMIZERS)
        _choice("train.scheduler", t.scheduler, SCHEDULERS)
        _check("train.warmup_ratio", t.warmup_ratio, 0 <= t.warmup_ratio < 1, "a number in [0, 1)")
        _choice("train.mixed_precision", t.mixed_precision, MIXED_PRECISION)
        r = self.round0
        if r.enabled:
            _pipeline_loss("round0.loss_type", r.loss_type, exclude=("sppo", "ssapo"))
            if r.loss_type == "exo_pair":
                # round 0 takes train.label_smoothing
                smoothing = self.train.label_smoothing
                _check("train.label_smoothing", smoothing, 0 < smoothing < 1, "EXO's epsilon in (0, 1) for exo_pair")
            if r.epochs is not None:
                _check("round0.epochs", r.epochs, r.epochs >= 1, "an integer >= 1")
            for name in ("beta", "learning_rate"):
                value = getattr(r, name)
                if value is not None:
                    _check(f"round0.{name}", value, value > 0 and math.isfinite(value), "a finite number > 0")
        e = self.evaluate
        if e.batch_size is not None:
            _check("evaluate.batch_size", e.batch_size, e.batch_size >= 1, "an integer >= 1 or null")
        _choice("evaluate.dtype", e.dtype, EVAL_DTYPES)
        s = self.refinement
        _check("refinement.alpha", s.alpha, 0 <= s.alpha <= 0.5, "a number in [0, 0.5]")
        _check("refinement.quantile", s.quantile, 0 <= s.quantile <= 1, "a number in [0, 1]")
        if s.enabled and self.method != "ssapo":
            raise ValueError(
                f"refinement.enabled: SPA refinement applies to self-annotated rounds; method is {self.method!r}"
            )
        return self

    def follower_note(self) -> str | None:
        """A line saying so when an SSAPO run's follower does not cap at epsilon as the paper's code does."""
        f = self.follower
        if self.method != "ssapo" or f.max_shift == f.epsilon:
            return None
        if f.max_shift is None:
            return f"follower.max_shift is null: the follower is uncapped (the paper's code caps at {f.epsilon:g})"
        return (
            f"follower.max_shift {f.max_shift:g} differs from follower.epsilon {f.epsilon:g} (the paper's code caps at "
            f"epsilon; follower.max_shift=epsilon follows it)"
        )


def _check(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{key}: expected {expected}, got {value!r}")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}: unknown value {value!r}; expected one of {', '.join(choices)}")


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """A validated :class:`RunConfig` from a (possibly partial) nested mapping."""
    return build(RunConfig, values).validate()
