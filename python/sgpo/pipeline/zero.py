"""DeepSpeed ZeRO for the pipeline: the launch's checks, its plugin, the micro-batch backward and gathered weights.

``accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml`` sets ``ACCELERATE_USE_DEEPSPEED`` and the
plugin's fields in the environment. The pipeline then differs from a plain accelerate script in three places:

- every process loads the full weights (as with ``zero3_init_flag: false``), because it generates and scores with
  the model before training; ZeRO-3 partitions the weights when the update stage prepares the model;
- the update stage's loop owns the accumulation (a global batch split over processes and micro-batches, possibly
  uneven), so it marks the last micro-batch of each step as DeepSpeed's accumulation boundary itself, and the
  engine's clipping is the recipe's ``train.max_grad_norm``;
- a round's checkpoint is written from weights gathered out of the ZeRO-3 partitions.

On a machine without CUDA, DeepSpeed runs on its CPU accelerator over a gloo group (the CPU tests run it so).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

SUPPORTED_STAGES = (2, 3)
CONFIGS = "configs/accelerate/deepspeed_zero3.yaml"


def prepare_environment() -> None:
    """On a machine without CUDA, DeepSpeed's CPU accelerator (before DeepSpeed is first imported)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def load_full_weights(accelerator: Any) -> None:
    """Make transformers load full weights on every process, whatever the launch's ``zero3_init_flag``.

    accelerate registers the ZeRO-3 config with transformers whenever it selects the plugin, and transformers then
    loads every model inside ``deepspeed.zero.Init`` (each weight already partitioned), so the stages before the update
    could not run the model outside DeepSpeed's engine."""
    from transformers.integrations import unset_hf_deepspeed_config

    if is_deepspeed(accelerator):
        unset_hf_deepspeed_config()
        accelerator.state.deepspeed_plugin.dschf = None


def make_plugin(*, per_device_batch_size: int, max_grad_norm: float | None, world: int) -> Any:
    """The launch's ``DeepSpeedPlugin``, checked against the recipe and completed with what the loop needs.

    Raises ValueError for a ZeRO stage outside :data:`SUPPORTED_STAGES` or a launcher clipping value that is not the
    recipe's ``train.max_grad_norm``; both come before any model loads.
    """
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()
    if plugin.zero_stage not in SUPPORTED_STAGES:
        raise ValueError(
            f"zero_stage: the accelerate config asks for DeepSpeed ZeRO stage {plugin.zero_stage!r}; the pipeline "
            f"runs stages {' and '.join(map(str, SUPPORTED_STAGES))}: set zero_stage: 3 (as {CONFIGS} does)"
        )
    clip = 0.0 if max_grad_norm is None else float(max_grad_norm)
    launched = plugin.deepspeed_config.get("gradient_clipping", "auto")
    if launched != "auto" and float(launched) != clip:
        raise ValueError(
            f"gradient_clipping: the accelerate config clips at {launched!r} but the recipe's train.max_grad_norm is "
            f"{max_grad_norm!r}; set gradient_clipping: {clip} in the accelerate config, or train.max_grad_norm="
            f"{launched} in the recipe"
        )
    config = plugin.deepspeed_config
    config["gradient_clipping"] = clip
    # the loop accumulates its own micro-batches (boundary marked per step): DeepSpeed must neither divide the loss
    # nor step on a count of its own
    config["gradient_accumulation_steps"] = 1
    config["train_micro_batch_size_per_gpu"] = per_device_batch_size
    config["train_batch_size"] = per_device_batch_size * world
    return plugin


def backward(accelerator: Any, loss: torch.Tensor, *, last: bool) -> None:
    """Backward of one micro-batch; on the step's ``last`` one DeepSpeed reduces the accumulated gradient, clips it
    and steps the optimizer (under ZeRO-2/3 ``no_sync`` is refused and the boundary marks the step instead)."""
    accelerator.deepspeed_engine_wrapped.backward(loss, sync_gradients=last)


def is_deepspeed(accelerator: Any) -> bool:
    return accelerator.distributed_type.value == "DEEPSPEED"


def is_zero3(accelerator: Any) -> bool:
    return is_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3


def full_state_dict(model: nn.Module, *, main: bool) -> dict[str, torch.Tensor]:
    """ZeRO-3's partitions gathered into full CPU tensors on the ``main`` process (a collective: every process calls
    it), one module at a time so that no process ever holds more than one module's full weights on the device."""
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        params = list(module.named_parameters(prefix=prefix, recurse=False))
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            if main:
                state.update({name: p.detach().cpu().clone() for name, p in params})
        if main:
            # a module's non-persistent buffers (rotary frequencies) are not part of its saved weights
            skip = module._non_persistent_buffers_set
            buffers = module.named_buffers(prefix=prefix, recurse=False)
            state.update({name: b.detach().cpu() for name, b in buffers if name.rsplit(".", 1)[-1] not in skip})
    return state
