"""sgpo's prompt-sharing forwards inside :class:`sgpo.integrations.trl.SGPODPOTrainer` (``logps_backend="sgpo"``).

Two ways to forward each prompt once for both of its responses:

- **packed** (:mod:`sgpo.packing`): every pair of the micro-batch as one [prompt, chosen, rejected] sequence with a
  prefix-sharing attention mask, through one ordinary call of the model, so DDP's and FSDP's hooks, gradient
  checkpointing and PEFT work as in any forward;
- **pair by pair** (:mod:`sgpo.integrations.shared_prompt`): each prompt through a key/value cache that its two
  responses share, forward and backward one pair at a time, so only one pair's activations are held; it needs one
  process without FSDP and without gradient checkpointing, and a loss that is a mean of per-pair terms.

``SGPODPOConfig.pair_by_pair`` chooses; by default pair by pair where it applies, packed elsewhere.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from sgpo.architectures import prompt_sharing_blocker
from sgpo.integrations.shared_prompt import Pair, TokenLogps, pairs_token_logps, split_pairs
from sgpo.integrations.trl_losses import PairBatch, Tokens, chosen_sums, sequence_logps, uses_pairs_jointly, wpo_weights
from sgpo.lm_head import decoder_and_head
from sgpo.packing import install_packed_forward, pack_pairs, unsupported

# batch keys the trainer itself consumes; everything else in a collated batch goes to the model's forward
TRL_NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps"})
# a batch with any other key (pixel values, token type ids) takes the model's own forward
_SHARED_PROMPT_KEYS = TRL_NON_MODEL_KEYS | {"input_ids", "attention_mask"}


class PromptSharingForward:
    """The mixin of SGPODPOTrainer that holds sgpo's two prompt-sharing forwards (see the module docstring)."""

    def _shared_prompt(self, model: Any, inputs: Mapping[str, Any]) -> tuple[list[Pair], Any] | None:
        """The batch's pairs and ``model``'s (decoder, head) when sgpo's prompt-sharing forwards apply, else None.

        They need ``logps_backend="sgpo"``, no MoE auxiliary loss (it is not per pair), a plain causal LM
        (:func:`sgpo.lm_head.decoder_and_head`) and a text batch in TRL's layout with a non-empty prompt. Under
        DeepSpeed the pairs are packed (ZeRO-3 gathers each module's weights around its own forward).
        """
        if (
            self.args.logps_backend != "sgpo"
            or self.aux_loss_enabled
            or set(inputs) - _SHARED_PROMPT_KEYS - set(self._sgpo_columns)
        ):
            return None
        unwrapped = self.accelerator.unwrap_model(model)
        parts = decoder_and_head(unwrapped)
        if parts is None:
            return None
        # the architecture bars both layouts; the attention backend only the packed one
        reason = prompt_sharing_blocker(unwrapped) or (None if self._pair_by_pair() else unsupported(unwrapped))
        if reason is not None:
            if not getattr(self, "_sgpo_warned", False):
                warnings.warn(f"logps_backend='sgpo': {reason}; one forward per full sequence instead", stacklevel=2)
                self._sgpo_warned = True
            return None
        pairs = split_pairs(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        return None if pairs is None else (pairs, parts)

    def _pair_by_pair(self) -> bool:
        """Whether sgpo's forward runs pair by pair through a key/value cache (it needs one process, no FSDP and no
        gradient checkpointing: a wrapper's hooks expect one forward per backward, and checkpointing turns the cache
        off) rather than packed (:mod:`sgpo.packing`, one ordinary forward of the whole batch)."""
        applies = not (
            self.accelerator.num_processes > 1
            or self.is_fsdp_enabled
            or self.is_deepspeed_enabled
            or self.args.gradient_checkpointing
        )
        if self.args.pair_by_pair and not applies:
            raise ValueError(
                f"pair_by_pair: True needs one process without FSDP or DeepSpeed, got "
                f"{self.accelerator.num_processes} process(es){' under FSDP' if self.is_fsdp_enabled else ''}"
                f"{' under DeepSpeed' if self.is_deepspeed_enabled else ''}; expected pair_by_pair=False or None "
                "(the packed forward)"
            )
        return applies if self.args.pair_by_pair is None else self.args.pair_by_pair

    def _sgpo_tokens(self, model: Any, pairs: list[Pair], parts: Any) -> Tokens:
        """Per-token log-probs of ``pairs`` by sgpo's prompt-sharing forward: pair by pair, or packed into rows of
        [prompt, chosen, rejected] through the model's own call (DDP's and FSDP's hooks intact)."""
        if self._pair_by_pair():
            return pairs_token_logps(model, pairs, parts, log_sum_sq_probs=self.use_weighting)
        install_packed_forward(self.accelerator.unwrap_model(model))
        prompts, chosen, rejected = ([getattr(p, part) for p in pairs] for part in ("prompt", "chosen", "rejected"))
        # rows as long as the longest pair: shorter pairs share a row, none is cut
        budget = max(p.prompt.numel() + p.chosen.numel() + p.rejected.numel() for p in pairs)
        packed = pack_pairs(prompts, chosen, rejected, max_tokens=budget, device=pairs[0].prompt.device)
        # the patch replaces the forward that accelerate wrapped in autocast for mixed precision: autocast here instead
        with self.accelerator.autocast():
            token, log_sum_sq = model(sgpo_packed=packed, log_sum_sq_probs=self.use_weighting)
        return TokenLogps(token, packed.targets != -100, log_sum_sq)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if uses_pairs_jointly(self.args):
            return super().training_step(model, inputs, num_items_in_batch)
        # on the device first, so the pairs' token ids are views of what the model will see
        inputs = self._prepare_inputs(inputs)
        shared = self._shared_prompt(model, inputs)
        if shared is None or not self._pair_by_pair():
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
        lengths, sft_tokens = self._lengths(inputs["completion_mask"])
        n = len(pairs)
        total, chosen_logps, rejected_logps = 0.0, [], []
        for i, pair in enumerate(pairs):
            rows = slice(i, i + 1)
            tokens = pairs_token_logps(model, [pair], parts, log_sum_sq_probs=self.use_weighting)
            chosen, rejected = sequence_logps(tokens, self.ld_alpha).chunk(2)
            batch = PairBatch(
                logps=(chosen, rejected, ref_chosen_logps[rows], ref_rejected_logps[rows]),
                chosen_nll_logps=chosen_sums(tokens),
                lengths=(lengths[0][rows], lengths[1][rows]),
                sft_tokens=sft_tokens,
                wpo=wpo_weights(tokens) if self.use_weighting else None,
                columns={key: inputs[key][rows] for key in self._sgpo_columns},
            )
            loss = self._loss(batch, "train", torch.sum)
            self.accelerator.backward(loss * (scale / n))
            total = total + loss.detach()
            chosen_logps.append(chosen.detach())
            rejected_logps.append(rejected.detach())
        logps = (torch.cat(chosen_logps), torch.cat(rejected_logps), ref_chosen_logps, ref_rejected_logps)
        seq_len = inputs["completion_mask"].size(1) - 1
        self._log_metrics("train", inputs, None, seq_len, logps)
        return total * (scale / n)
