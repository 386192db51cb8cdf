"""sgpo's losses and follower inside TRL's ``DPOTrainer`` (the TRL 1.x line, :data:`SUPPORTED_TRL`).

TRL 1.x computes its DPO loss inline in ``DPOTrainer._compute_loss`` and offers no hook for the loss alone, so
:class:`SGPODPOTrainer` overrides ``compute_loss``, the public ``transformers.Trainer`` hook, and keeps the rest of TRL:
dataset tokenisation and collation, the fused LM head that gives per-token log-probs without materialising the logits,
the reference log-probs (a reference model, the PEFT adapter disabled, or ``precompute_ref_log_probs``), and the
``rewards/*`` and ``logps/*`` metrics. ``logps_backend="sgpo"`` swaps TRL's log-prob head for
:func:`sgpo.ops.fused_linear_sequence_logps`, projecting response tokens only, and (on one process, without gradient
checkpointing) forwards each pair's prompt once for both responses (:mod:`sgpo.integrations.shared_prompt`), for the
policy and the reference alike. Where the loss is a mean over pairs (every loss but ssapo's ``"batch"`` follower), a
training step then runs forward and backward one pair at a time, so only one pair's activations are held at once.

``ssapo`` runs in one of two modes (``SGPODPOConfig.ssapo_worst_case``):

- ``"batch"``: the follower (:func:`sgpo.worst_case`) is solved on each step's global batch: the margins of every
  process's micro-batch, all-gathered, so each process solves the same program and keeps its own rows.
- ``"columns"``: the worst case was solved once over the whole dataset (``sgpo solve``, the pipeline, or
  :func:`sgpo.worst_case` plus :func:`add_worst_case_columns`) and rides along in two dataset columns, so the follower
  sees every margin at once as the paper intends.

``sppo`` reads the estimated win probabilities of the chosen and rejected responses from the dataset: sgpo's column
names ``chosen_win_prob``/``rejected_win_prob``, or ``chosen_probs_win``/``chosen_probs_lose`` as SPPO's released data
names them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import is_peft_model
from packaging.specifiers import SpecifierSet

import sgpo
from sgpo.integrations.shared_prompt import Pair, decoder_and_head, pairs_logps, split_pairs
from sgpo.pipeline.distributed import enable_cpu_fsdp, head_sequence_logps
from sgpo.reference import LOSS_TYPES, SPACES, PreferenceLosses

try:
    import trl
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.utils import use_adapter
except ImportError as err:
    raise ImportError("sgpo.integrations.trl needs TRL: pip install 'sgpo[trl]'") from err

# The overridden surface (compute_loss, compute_ref_log_probs, the fused_lm_head forward, _metrics,
# _set_signature_columns_if_needed) is TRL 1.x's; keep in step with the `trl` extra in pyproject.toml.
SUPPORTED_TRL = ">=1.0,<2"

if not SpecifierSet(SUPPORTED_TRL).contains(trl.__version__, prereleases=True):
    raise ImportError(
        f"sgpo.integrations.trl supports trl{SUPPORTED_TRL}; trl {trl.__version__} is installed "
        f"(pip install 'trl{SUPPORTED_TRL}')"
    )

# (chosen, rejected) win-probability columns for sppo: sgpo's names, then SPPO's released data (arXiv 2405.00675)
WIN_PROB_COLUMNS: tuple[tuple[str, str], ...] = (
    ("chosen_win_prob", "rejected_win_prob"),
    ("chosen_probs_win", "chosen_probs_lose"),
)
SSAPO_WORST_CASE_MODES: tuple[str, ...] = ("batch", "columns")
LOGPS_BACKENDS: tuple[str, ...] = ("trl", "sgpo")

# batch keys the trainer itself consumes; everything else in a collated batch goes to the model's forward
_TRL_NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps"})
# a batch with any other key (pixel values, token type ids) takes the model's own forward
_SHARED_PROMPT_KEYS = _TRL_NON_MODEL_KEYS | {"input_ids", "attention_mask"}
# sgpo loss types that take DPOConfig.label_smoothing
_SMOOTHED_LOSS_TYPES = ("sigmoid", "robust")


@dataclass
class SGPODPOConfig(DPOConfig):
    """TRL's ``DPOConfig`` plus sgpo's options.

    ``loss_type`` takes sgpo's loss types (:data:`sgpo.ops.LOSS_TYPES`); several combine with ``loss_weights`` as in
    TRL. Two meanings differ from TRL 1.x: ``sigmoid`` with ``label_smoothing > 0`` is conservative DPO (TRL 1.x ignores
    it), and ``ipo`` is length-normalised like TRL's only while ``ipo_length_normalized`` is true (the default).
    TRL's ``ld_alpha``, ``f_divergence_type`` and ``use_weighting`` change the loss in ways sgpo's ops do not model and
    are refused.
    """

    logps_backend: str = field(
        default="trl",
        metadata={
            "help": "Op computing the log-probs: 'trl' (TRL's fused LM head) or 'sgpo' "
            "(sgpo.ops.fused_linear_sequence_logps on response tokens only, each prompt forwarded once per pair, "
            "and for per-pair losses forward and backward one pair at a time).",
            "choices": list(LOGPS_BACKENDS),
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward. Default: on with logps_backend='trl' (TRL's default), off "
            "with 'sgpo', whose step holds one pair's activations at a time and needs the cache checkpointing disables "
            "to forward each prompt once."
        },
    )
    ipo_length_normalized: bool = field(
        default=True,
        metadata={"help": "ipo divides each log-ratio by its completion's token count, as TRL's ipo does."},
    )
    ssapo_worst_case: str = field(
        default="batch",
        metadata={
            "help": "Where ssapo's worst case comes from: 'batch' solves the follower on each step's all-gathered "
            "margins; 'columns' reads a worst case precomputed over the whole dataset from its columns.",
            "choices": list(SSAPO_WORST_CASE_MODES),
        },
    )
    ssapo_epsilon: float = field(
        default=0.01, metadata={"help": "Radius of the follower's Wasserstein ball (the paper's epsilon)."}
    )
    ssapo_pieces: int = field(default=6, metadata={"help": "Tangent pieces K of the follower's loss."})
    ssapo_space: str = field(
        default="probability",
        metadata={"help": "Space of the follower and the ssapo loss.", "choices": list(SPACES)},
    )
    ssapo_group_size: int | None = field(
        default=None, metadata={"help": "Solve the follower in consecutive groups of this many margins."}
    )
    ssapo_max_shift: float | None = field(
        default=None, metadata={"help": "Cap on each point's displacement (the paper's code uses epsilon)."}
    )
    ssapo_backend: str = field(default="auto", metadata={"help": "Backend of sgpo.worst_case."})
    worst_case_weights_column: str = field(
        default="worst_case_weights",
        metadata={"help": "Dataset column with each pair's K worst-case weights (ssapo_worst_case='columns')."},
    )
    worst_case_shifts_column: str = field(
        default="worst_case_shifts",
        metadata={"help": "Dataset column with each pair's K worst-case shifts (ssapo_worst_case='columns')."},
    )

    def __post_init__(self) -> None:
        if self.gradient_checkpointing is None:
            self.gradient_checkpointing = self.logps_backend == "trl"
        super().__post_init__()
        unknown = [name for name in self.loss_type if name not in LOSS_TYPES]
        if unknown:
            raise ValueError(
                f"loss_type: {unknown} are not sgpo loss types; expected some of {', '.join(LOSS_TYPES)} "
                "(use trl.DPOTrainer for TRL's other losses)"
            )
        if self.ld_alpha is not None:
            raise ValueError(f"ld_alpha: sgpo's losses use summed log-probs; expected None, got {self.ld_alpha!r}")
        if self.f_divergence_type != "reverse_kl":
            raise ValueError(
                "f_divergence_type: sgpo's losses are reverse-KL; "
                f"expected 'reverse_kl', got {self.f_divergence_type!r}"
            )
        if self.use_weighting:
            raise ValueError("use_weighting: WPO weighting is not part of sgpo's losses; expected False, got True")
        if self.label_smoothing != 0.0 and not set(self.loss_type) & set(_SMOOTHED_LOSS_TYPES):
            raise ValueError(
                f"label_smoothing: only {' and '.join(_SMOOTHED_LOSS_TYPES)} use it; got {self.label_smoothing!r} "
                f"with loss_type={self.loss_type}"
            )
        if self.logps_backend not in LOGPS_BACKENDS:
            raise ValueError(f"logps_backend: expected one of {', '.join(LOGPS_BACKENDS)}, got {self.logps_backend!r}")
        if self.ssapo_worst_case not in SSAPO_WORST_CASE_MODES:
            raise ValueError(
                f"ssapo_worst_case: expected one of {', '.join(SSAPO_WORST_CASE_MODES)}, got {self.ssapo_worst_case!r}"
            )
        if self.ssapo_space not in SPACES:
            raise ValueError(f"ssapo_space: expected one of {', '.join(SPACES)}, got {self.ssapo_space!r}")
        if not (math.isfinite(self.ssapo_epsilon) and self.ssapo_epsilon >= 0):
            raise ValueError(f"ssapo_epsilon: expected a finite number >= 0, got {self.ssapo_epsilon!r}")
        if self.ssapo_pieces < 1:
            raise ValueError(f"ssapo_pieces: expected an integer >= 1, got {self.ssapo_pieces!r}")
        if self.ssapo_group_size is not None and self.ssapo_group_size < 1:
            raise ValueError(f"ssapo_group_size: expected None or an integer >= 1, got {self.ssapo_group_size!r}")


def add_worst_case_columns(
    dataset: Any,
    worst_case: Any,
    *,
    weights_column: str = "worst_case_weights",
    shifts_column: str = "worst_case_shifts",
) -> Any:
    """Return ``dataset`` with the follower's per-pair weights and shifts as two list columns (ssapo ``"columns"``).

    ``worst_case`` is a :class:`sgpo.WorstCase` (or a (weights, shifts) pair of (n, K) arrays) solved on the margins
    of ``dataset``'s rows, in row order.
    """
    if hasattr(worst_case, "weights") and hasattr(worst_case, "shifts"):
        weights, shifts = worst_case.weights, worst_case.shifts
    elif isinstance(worst_case, (tuple, list)) and len(worst_case) == 2:
        weights, shifts = worst_case
    else:
        raise ValueError(
            f"worst_case: expected a sgpo.WorstCase or a (weights, shifts) pair, got {type(worst_case).__name__}"
        )
    weights = torch.as_tensor(weights).detach().cpu().double()
    shifts = torch.as_tensor(shifts).detach().cpu().double()
    if weights.dim() != 2 or weights.shape[0] != len(dataset) or shifts.shape != weights.shape:
        raise ValueError(
            f"worst_case: expected weights and shifts of shape ({len(dataset)}, K) for a dataset of {len(dataset)} "
            f"rows, got {tuple(weights.shape)} and {tuple(shifts.shape)}"
        )
    dataset = dataset.add_column(weights_column, weights.tolist())
    return dataset.add_column(shifts_column, shifts.tolist())


def _column_names(dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:
        names = list(next(iter(dataset)).keys())
    return list(names)


def loss_columns(args: SGPODPOConfig, dataset: Any, dataset_arg: str = "train_dataset") -> dict[str, str]:
    """Batch key -> dataset column for the per-pair inputs ``args.loss_type`` reads from ``dataset``."""
    names = _column_names(dataset)
    columns: dict[str, str] = {}
    if "sppo" in args.loss_type:
        pair = next((p for p in WIN_PROB_COLUMNS if p[0] in names and p[1] in names), None)
        if pair is None:
            options = " or ".join("/".join(p) for p in WIN_PROB_COLUMNS)
            raise ValueError(
                f"{dataset_arg}: loss_type 'sppo' reads win probabilities from the columns {options}; "
                f"the dataset has {names}"
            )
        columns["chosen_win_prob"], columns["rejected_win_prob"] = pair
    if "ssapo" in args.loss_type and args.ssapo_worst_case == "columns":
        for key, column in (
            ("worst_case_weights", args.worst_case_weights_column),
            ("worst_case_shifts", args.worst_case_shifts_column),
        ):
            if column not in names:
                raise ValueError(
                    f"{dataset_arg}: ssapo_worst_case='columns' reads the column {column!r}, which the dataset "
                    f"lacks (it has {names}); add it with sgpo.integrations.trl.add_worst_case_columns"
                )
            columns[key] = column
    return columns


class _WithLossColumns:
    """Wraps a preference collator: adds the per-pair loss inputs, as float32 tensors, to each batch."""

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], columns: Mapping[str, str]):
        self.collator = collator
        self.columns = dict(columns)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        for key, column in self.columns.items():
            if column not in examples[0]:
                raise ValueError(f"dataset: the loss reads the column {column!r}, which this dataset's rows lack")
            batch[key] = torch.tensor([example[column] for example in examples], dtype=torch.float32)
        return batch


class SGPODPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` with the loss computed by :func:`sgpo.ops.preference_losses`.

    Takes the same arguments as ``trl.DPOTrainer``; ``args`` must be an :class:`SGPODPOConfig`. Logs TRL's
    ``rewards/{chosen,rejected,accuracies,margins}``, ``logps/{chosen,rejected}``, ``num_tokens`` and (with TRL's
    log-prob head) ``entropy``, and for ssapo the mean worst-case shift ``ssapo/shift`` (plus the follower's
    ``ssapo/worst_case_value`` when it is solved per batch). With gradient accumulation, ssapo's batch mode solves the
    follower once per micro-step, on that micro-step's margins from every process.
    """

    _tag_names = ["trl", "dpo", "sgpo"]

    def __init__(self, model: Any, ref_model: Any = None, args: SGPODPOConfig | None = None, **kwargs: Any):
        if args is None:
            args = SGPODPOConfig()
        if not isinstance(args, SGPODPOConfig):
            raise ValueError(
                f"args: expected an sgpo.integrations.trl.SGPODPOConfig (a DPOConfig with sgpo's options), "
                f"got {type(args).__name__}"
            )
        train_dataset, eval_dataset = kwargs.get("train_dataset"), kwargs.get("eval_dataset")
        # checked before TRL tokenises the datasets, so a missing column fails in seconds
        self._sgpo_columns = loss_columns(args, train_dataset) if train_dataset is not None else {}
        evals = eval_dataset if isinstance(eval_dataset, dict) else {"": eval_dataset}
        for name, dataset in evals.items():
            if dataset is None:
                continue
            label = f"eval_dataset[{name!r}]" if name else "eval_dataset"
            columns = loss_columns(args, dataset, label)
            if columns != self._sgpo_columns:
                raise ValueError(
                    f"{label}: the loss reads the columns {sorted(columns.values())} from it but "
                    f"{sorted(self._sgpo_columns.values())} from train_dataset; name them alike"
                )
        super().__init__(model, ref_model=ref_model, args=args, **kwargs)
        if self._sgpo_columns:
            self.data_collator = _WithLossColumns(self.data_collator, self._sgpo_columns)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        # accelerate runs DDP on CPU whatever the FSDP settings; sgpo turns its FSDP2 path on there
        plugin_args = self.args.fsdp_plugin_args
        if plugin_args is not None:
            from accelerate.utils import FullyShardedDataParallelPlugin

            plugin = FullyShardedDataParallelPlugin(**plugin_args)
        else:
            plugin = None
        if enable_cpu_fsdp(self.accelerator, plugin):
            self.is_fsdp_enabled = True

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        extra = [c for c in self._sgpo_columns.values() if c not in self._signature_columns]
        self._signature_columns = [*self._signature_columns, *extra]

    def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {k: v for k, v in inputs.items() if k not in self._sgpo_columns}
        shared = self._shared_prompt(model, inputs)
        if shared is None:
            return super().compute_ref_log_probs(model, inputs)
        pairs, parts = shared
        adapter = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            # TRL's reference under PEFT: the adapter named "ref" when there is one, else every adapter disabled
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with torch.no_grad(), adapter, self.accelerator.autocast():
            return pairs_logps(model, pairs, parts)

    def _shared_prompt(self, model: Any, inputs: Mapping[str, Any]) -> tuple[list[Pair], Any] | None:
        """The batch's pairs and ``model``'s (decoder, head) when the prompt-sharing forward applies, else None.

        It needs ``logps_backend="sgpo"``, one process (a DDP or FSDP wrapper's hooks expect one forward per
        backward), no gradient checkpointing (it turns the cache off), no MoE auxiliary loss (it is not per pair), a
        plain causal LM (:func:`sgpo.integrations.shared_prompt.decoder_and_head`) and a text batch in TRL's layout.
        """
        if (
            self.args.logps_backend != "sgpo"
            or self.accelerator.num_processes > 1
            or self.is_deepspeed_enabled
            or self.is_fsdp_enabled
            or self.args.gradient_checkpointing
            or self.aux_loss_enabled
            or set(inputs) - _SHARED_PROMPT_KEYS - set(self._sgpo_columns)
        ):
            return None
        parts = decoder_and_head(self.accelerator.unwrap_model(model))
        if parts is None:
            return None
        pairs = split_pairs(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        return None if pairs is None else (pairs, parts)

    def _per_pair_loss(self) -> bool:
        # ssapo's batch follower couples the pairs; every other loss is a mean of per-pair terms
        return not ("ssapo" in self.loss_types and self.args.ssapo_worst_case == "batch")

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if not self._per_pair_loss():
            return super().training_step(model, inputs, num_items_in_batch)
        # on the device first, so the pairs' token ids are views of what the model will see
        inputs = self._prepare_inputs(inputs)
        shared = self._shared_prompt(model, inputs)
        if shared is None:
            return super().training_step(model, inputs, num_items_in_batch)
        pairs, parts = shared
        # TRL's activation offloading, where this TRL release has it
        with getattr(self, "maybe_activation_offload_context", contextlib.nullcontext()):
            model.train()
            if callable(getattr(self.optimizer, "train", None)):
                self.optimizer.train()
            # the scaling transformers' Trainer.training_step applies to the loss before its backward
            scaled = getattr(self, "loss_is_scaled_for_ga", None)
            if scaled is None:
                scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                    self.compute_loss_func is not None
                )
            scale = 1.0 if scaled else 1.0 / self.current_gradient_accumulation_steps
            with self.compute_loss_context_manager():
                return self._pair_by_pair_step(model, inputs, pairs, parts, scale)

    def _pair_by_pair_step(
        self, model: Any, inputs: dict[str, Any], pairs: list[Pair], parts: Any, scale: float
    ) -> torch.Tensor:
        """Forward and backward one pair at a time: the gradient of the batch's mean loss, one pair's activations."""
        ref_chosen_logps, ref_rejected_logps = self._reference_logps(inputs)
        chosen_lengths, rejected_lengths = inputs["completion_mask"].sum(dim=1).clamp(min=1).chunk(2, dim=0)
        n = len(pairs)
        total, chosen_logps, rejected_logps = 0.0, [], []
        for i, pair in enumerate(pairs):
            rows = slice(i, i + 1)
            chosen, rejected = pairs_logps(model, [pair], parts)
            logps = (chosen, rejected, ref_chosen_logps[rows], ref_rejected_logps[rows])
            columns = {key: inputs[key][rows] for key in self._sgpo_columns}
            lengths = (chosen_lengths[rows], rejected_lengths[rows])
            loss = self._weighted_loss(logps, columns, lengths, "train", torch.sum)
            self.accelerator.backward(loss * (scale / n))
            total = total + loss.detach()
            chosen_logps.append(chosen.detach())
            rejected_logps.append(rejected.detach())
        logps = (torch.cat(chosen_logps), torch.cat(rejected_logps), ref_chosen_logps, ref_rejected_logps)
        seq_len = inputs["completion_mask"].size(1) - 1
        self._log_metrics("train", inputs, None, seq_len, logps)
        return total * (scale / n)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        mode = "train" if self.model.training else "eval"
        skip = _TRL_NON_MODEL_KEYS | set(self._sgpo_columns)
        model_kwargs = {k: v for k, v in inputs.items() if k not in skip}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        # prompt-learning PEFT prepends virtual tokens to the outputs; the real positions are the last ones
        seq_len = completion_mask.size(1) - 1
        shared = self._shared_prompt(model, inputs)
        if shared is not None:
            outputs = None
            chosen_logps, rejected_logps = pairs_logps(model, *shared)
        else:
            if self.args.logps_backend == "trl":
                outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
                logps = outputs.log_probs[:, -seq_len:].sum(dim=1)
            else:
                # logits_to_keep=1: through the model's own forward (DDP hooks intact) without the (B, T, V) logits
                outputs = model(**model_kwargs, logits_to_keep=1, output_hidden_states=True)
                hidden = outputs.hidden_states[-1][:, -(seq_len + 1) : -1]
                head = self.accelerator.unwrap_model(model).get_output_embeddings()
                logps = head_sequence_logps(head, hidden, labels[:, 1:])
            chosen_logps, rejected_logps = logps.chunk(2, dim=0)

        ref_chosen_logps, ref_rejected_logps = self._reference_logps(inputs)
        lengths = completion_mask.sum(dim=1).clamp(min=1).chunk(2, dim=0)
        logps = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
        loss = self._weighted_loss(logps, inputs, lengths, mode, torch.mean)

        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())
        self._log_metrics(mode, inputs, outputs, seq_len, logps)

        if return_outputs:
            # compute_metrics wants logits, which the fused head never builds (TRL recomputes them the same way)
            with torch.no_grad():
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss

    def _reference_logps(self, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's chosen and rejected log-probs: precomputed columns, else a forward of the reference."""
        if self.precompute_ref_logps:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        reference = self.ref_model if self.ref_model is not None else self.model
        return self.compute_ref_log_probs(reference, inputs)

    def _weighted_loss(
        self,
        logps: Sequence[torch.Tensor],
        inputs: Mapping[str, Any],
        lengths: Sequence[torch.Tensor],
        mode: str,
        reduce: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``sum_k loss_weights[k] * reduce(per-pair losses of loss_types[k])`` (TRL's combination of loss types)."""
        loss = 0.0
        for loss_type, loss_weight in zip(self.loss_types, self.loss_weights, strict=True):
            loss = loss + reduce(self._pair_losses(loss_type, logps, inputs, lengths, mode).losses) * loss_weight
        return loss

    def _pair_losses(
        self,
        loss_type: str,
        logps: Sequence[torch.Tensor],
        inputs: Mapping[str, Any],
        lengths: Sequence[torch.Tensor],
        mode: str,
    ) -> PreferenceLosses:
        args: SGPODPOConfig = self.args
        options: dict[str, Any] = {
            "loss_type": loss_type,
            "beta": self.beta,
            "label_smoothing": self.label_smoothing if loss_type in _SMOOTHED_LOSS_TYPES else 0.0,
        }
        if loss_type == "ipo" and args.ipo_length_normalized:
            options["chosen_lengths"], options["rejected_lengths"] = lengths
        elif loss_type == "sppo":
            options["chosen_win_prob"] = inputs["chosen_win_prob"]
            options["rejected_win_prob"] = inputs["rejected_win_prob"]
        elif loss_type == "ssapo":
            options["space"] = args.ssapo_space
            if args.ssapo_worst_case == "columns":
                weights, shifts = inputs["worst_case_weights"], inputs["worst_case_shifts"]
            else:
                weights, shifts = self._batch_worst_case(logps, mode)
            options["worst_case"] = (weights, shifts)
            self._metrics[mode]["ssapo/shift"].append(
                self.accelerator.gather((weights * shifts).sum(dim=-1)).mean().item()
            )
        return sgpo.ops.preference_losses(*logps, **options)

    def _batch_worst_case(self, logps: Sequence[torch.Tensor], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The follower (DESIGN 1.2, paper Alg. 1 step 3) on this step's margins from every process.

        Its input is what the ssapo loss shifts: T(beta * Delta), sigmoid in probability space, identity in margin
        space; with beta = 0.1 that is the paper code's sigmoid(0.1 * h).
        """
        args: SGPODPOConfig = self.args
        chosen, rejected, ref_chosen, ref_rejected = (t.detach().float() for t in logps)
        margins = self.beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
        if args.ssapo_space == "probability":
            margins = torch.sigmoid(margins)
        # even_batches keeps micro-batches the same size on every process, so rank r's rows start at r * n
        everyone = self.accelerator.gather(margins)
        worst = sgpo.worst_case(
            everyone,
            args.ssapo_epsilon,
            pieces=args.ssapo_pieces,
            space=args.ssapo_space,
            group_size=args.ssapo_group_size,
            max_shift=args.ssapo_max_shift,
            backend=args.ssapo_backend,
        )
        self._metrics[mode]["ssapo/worst_case_value"].append(torch.as_tensor(worst.value).float().mean().item())
        start = self.accelerator.process_index * margins.shape[0]
        rows = slice(start, start + margins.shape[0])
        return worst.weights[rows], worst.shifts[rows]

    def _log_metrics(
        self,
        mode: str,
        inputs: Mapping[str, Any],
        outputs: Any,
        seq_len: int,
        logps: Sequence[torch.Tensor],
    ) -> None:
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        mask = inputs["completion_mask"][..., 1:]
        if getattr(outputs, "entropy", None) is not None:
            entropy_sum = gather((outputs.entropy[:, -seq_len:].detach() * mask).sum()).sum()
            tokens = gather(mask.sum()).sum()
            metrics["entropy"].append((entropy_sum / tokens).item() if tokens > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps = (t.detach() for t in logps)
        # TRL's implicit rewards beta * s(y), whatever the loss type
        chosen_rewards = self.accelerator.gather(self.beta * (chosen_logps - ref_chosen_logps))
        rejected_rewards = self.accelerator.gather(self.beta * (rejected_logps - ref_rejected_logps))
        metrics["rewards/chosen"].append(chosen_rewards.mean().item())
        metrics["rewards/rejected"].append(rejected_rewards.mean().item())
        metrics["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        metrics["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(self.accelerator.gather(chosen_logps).mean().item())
        metrics["logps/rejected"].append(self.accelerator.gather(rejected_logps).mean().item())
