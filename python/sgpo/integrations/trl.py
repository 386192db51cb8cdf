"""sgpo's losses and follower inside TRL's ``DPOTrainer`` (the TRL 1.x line, :data:`SUPPORTED_TRL`).

TRL 1.x computes its DPO loss inline in ``DPOTrainer._compute_loss`` and offers no hook for the loss alone, so
:class:`SGPODPOTrainer` overrides ``compute_loss``, the public ``transformers.Trainer`` hook, and keeps the rest of TRL:
dataset tokenisation and collation, the fused LM head that gives per-token log-probs without materialising the logits,
the reference log-probs (a reference model, the PEFT adapter disabled, or ``precompute_ref_log_probs``), and the
``rewards/*``, ``logps/*``, ``logits/*``, ``entropy`` and ``mean_token_accuracy`` metrics. Every loss type and option
of TRL 1.16's ``DPOTrainer`` is accepted with its name and default (:class:`SGPODPOConfig`) and computed by
:func:`sgpo.ops.preference_losses` (:mod:`sgpo.integrations.trl_losses`). ``logps_backend="sgpo"`` swaps TRL's
log-prob head for :func:`sgpo.ops.fused_linear_token_logps`, projecting response tokens only, and forwards each pair's
prompt once for both responses, for the policy and the reference alike (:mod:`sgpo.integrations.trl_forward`): packed
into one ordinary forward with a prefix-sharing mask (any number of processes, DDP, FSDP2, gradient checkpointing), or
on one process pair by pair, forward and backward one pair at a time, where the loss is a mean of per-pair terms.

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
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from accelerate.utils import is_peft_model

import sgpo
from sgpo.integrations.shared_prompt import TokenLogps
from sgpo.integrations.trl_columns import WIN_PROB_COLUMNS, WithLossColumns, add_worst_case_columns, loss_columns
from sgpo.integrations.trl_config import (
    LOGPS_BACKENDS,
    SSAPO_WORST_CASE_MODES,
    SUPPORTED_TRL,
    DPOTrainer,
    SGPODPOConfig,
    use_adapter,
)
from sgpo.integrations.trl_forward import TRL_NON_MODEL_KEYS, PromptSharingForward
from sgpo.integrations.trl_losses import (
    PairBatch,
    Tokens,
    chosen_sums,
    combine,
    loss_logps,
    loss_options,
    sequence_logps,
    wpo_weights,
)
from sgpo.lm_head import head_token_logps
from sgpo.pipeline.distributed import enable_cpu_fsdp
from sgpo.reference import PreferenceLosses

__all__ = [
    "LOGPS_BACKENDS",
    "SSAPO_WORST_CASE_MODES",
    "SUPPORTED_TRL",
    "WIN_PROB_COLUMNS",
    "SGPODPOConfig",
    "SGPODPOTrainer",
    "add_worst_case_columns",
    "loss_columns",
]


class SGPODPOTrainer(PromptSharingForward, DPOTrainer):
    """TRL's ``DPOTrainer`` with the loss computed by :func:`sgpo.ops.preference_losses`.

    Takes the same arguments as ``trl.DPOTrainer``; ``args`` must be an :class:`SGPODPOConfig`. Logs TRL's metrics
    (``rewards/*``, ``logps/*``, ``num_tokens``, and with TRL's log-prob head ``entropy``, ``logits/*`` and
    ``mean_token_accuracy``), and for ssapo the mean worst-case shift ``ssapo/shift`` (plus the follower's
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
        # a string model id is loaded by TRL later; only a model object can already be a PEFT model
        peft_model = not isinstance(model, str) and is_peft_model(model)
        if args.sync_ref_model and (kwargs.get("peft_config") is not None or peft_model):
            raise ValueError(
                "sync_ref_model: True needs a reference model to move, but with PEFT the reference is the adapter "
                "disabled; expected sync_ref_model=False, or full fine-tuning"
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
            self.data_collator = WithLossColumns(self.data_collator, self._sgpo_columns)

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
        adapter = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            # TRL's reference under PEFT: the adapter named "ref" when there is one, else every adapter disabled
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with torch.no_grad(), adapter, self.accelerator.autocast():
            tokens = self._sgpo_tokens(model, *shared)
        return sequence_logps(tokens, self.ld_alpha).chunk(2)

    def _policy_tokens(
        self, model: Any, inputs: Mapping[str, Any], model_kwargs: dict[str, Any], labels: torch.Tensor
    ) -> tuple[Tokens, Any]:
        """The policy's per-token log-probs of the batch (with WPO's log sum_v p_v^2 when weighting) and the model's
        outputs (None from the prompt-sharing forward)."""
        mask = inputs["completion_mask"][:, 1:].bool()
        # prompt-learning PEFT prepends virtual tokens to the outputs; the real positions are the last ones
        seq_len = mask.size(1)
        shared = self._shared_prompt(model, inputs)
        if shared is not None:
            return self._sgpo_tokens(model, *shared), None
        if self.args.logps_backend == "trl":
            outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
            log_sum_sq = outputs.log_sum_sq_probs[:, -seq_len:] if self.use_weighting else None
            return TokenLogps(outputs.log_probs[:, -seq_len:], mask, log_sum_sq), outputs
        # logits_to_keep=1: through the model's own forward (DDP hooks intact) without the (B, T, V) logits
        outputs = model(**model_kwargs, logits_to_keep=1, output_hidden_states=True)
        hidden = outputs.hidden_states[-1][:, -(seq_len + 1) : -1]
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        token, log_sum_sq = head_token_logps(head, hidden, labels[:, 1:], log_sum_sq_probs=self.use_weighting)
        return TokenLogps(token, mask, log_sum_sq), outputs

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        mode = "train" if self.model.training else "eval"
        skip = TRL_NON_MODEL_KEYS | set(self._sgpo_columns)
        model_kwargs = {k: v for k, v in inputs.items() if k not in skip}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        seq_len = completion_mask.size(1) - 1
        tokens, outputs = self._policy_tokens(model, inputs, model_kwargs, labels)
        chosen_logps, rejected_logps = sequence_logps(tokens, self.ld_alpha).chunk(2)
        ref_chosen_logps, ref_rejected_logps = self._reference_logps(inputs)
        lengths, sft_tokens = self._lengths(completion_mask)
        logps = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
        batch = PairBatch(
            logps=logps,
            chosen_nll_logps=chosen_sums(tokens),
            lengths=lengths,
            sft_tokens=sft_tokens,
            wpo=wpo_weights(tokens) if self.use_weighting else None,
            columns={key: inputs[key] for key in self._sgpo_columns},
        )
        loss = self._loss(batch, mode, torch.mean)

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

    @staticmethod
    def _lengths(completion_mask: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Each response's token count (at least 1) and the mean chosen response length, sft's normaliser."""
        counts = completion_mask.sum(dim=1)
        chosen, rejected = counts.clamp(min=1).chunk(2)
        sft_tokens = counts.chunk(2)[0].sum().clamp(min=1) / chosen.shape[0]
        return (chosen, rejected), sft_tokens

    def _reference_logps(self, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's chosen and rejected log-probs: precomputed columns, else a forward of the reference."""
        if self.precompute_ref_logps:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        reference = self.ref_model if self.ref_model is not None else self.model
        return self.compute_ref_log_probs(reference, inputs)

    def _loss(self, batch: PairBatch, mode: str, reduce: Any) -> torch.Tensor:
        """TRL's weighted sum over ``loss_type`` of the reduced per-pair losses of ``batch``."""
        return combine(
            self.args,
            self.loss_weights,
            lambda loss_type: self._pair_losses(loss_type, batch, mode).losses,
            batch.wpo,
            reduce,
        )

    def _pair_losses(self, loss_type: str, batch: PairBatch, mode: str) -> PreferenceLosses:
        args: SGPODPOConfig = self.args
        options = loss_options(args, loss_type, self.beta, batch)
        if loss_type == "ssapo":
            options["space"] = args.ssapo_space
            if args.ssapo_worst_case == "columns":
                weights, shifts = batch.columns["worst_case_weights"], batch.columns["worst_case_shifts"]
            else:
                weights, shifts = self._batch_worst_case(batch.logps, mode)
            options["worst_case"] = (weights, shifts)
            self._metrics[mode]["ssapo/shift"].append(
                self.accelerator.gather((weights * shifts).sum(dim=-1)).mean().item()
            )
        return sgpo.ops.preference_losses(*loss_logps(loss_type, batch), **options)

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
        chosen_mask, rejected_mask = mask.bool().chunk(2)
        if getattr(outputs, "mean_logits", None) is not None:
            chosen_logits, rejected_logits = outputs.mean_logits[:, -seq_len:].chunk(2)
            for name, values, rows in (
                ("chosen", chosen_logits, chosen_mask),
                ("rejected", rejected_logits, rejected_mask),
            ):
                total = gather(values[rows].sum()).sum().item()
                count = gather(rows.sum()).sum().item()
                metrics[f"logits/{name}"].append(total / count if count > 0 else 0.0)
        if getattr(outputs, "is_top1", None) is not None:
            correct = gather((outputs.is_top1[:, -seq_len:].chunk(2)[0] & chosen_mask).sum()).sum()
            total = gather(chosen_mask.sum()).sum()
            metrics["mean_token_accuracy"].append((correct / total).item() if total > 0 else 0.0)
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
