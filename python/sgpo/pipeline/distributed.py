"""Sharded training for the pipeline and the TRL integration: FSDP2 on CPU, sharded training states, backend checks.

accelerate applies its FSDP plugin only on accelerators: with ``cpu=True`` it forms a gloo group and runs DDP even when
the launch config says ``distributed_type: FSDP``. Its FSDP2 code (``fully_shard`` per decoder layer, the optimizer's
parameters swapped for the shards, DTensor-aware clipping) runs on CPU unchanged once the state says FSDP, which
:func:`enable_cpu_fsdp` does, so CPU runs exercise the same code path as GPU runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def leave_together() -> None:
    """Under a launcher, wait for every process and close the process group; nothing in one process.

    Call it last: a process that exits while another is still in a collective with it (gloo or NCCL) makes that one
    abort (SIGABRT) after its work is done."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def fsdp_requested() -> bool:
    """Whether the launch asked for FSDP (``accelerate launch`` sets this from ``distributed_type: FSDP``)."""
    return _env_flag("ACCELERATE_USE_FSDP")


def deepspeed_requested() -> bool:
    """Whether the launch asked for DeepSpeed (``distributed_type: DEEPSPEED`` in the accelerate config)."""
    return _env_flag("ACCELERATE_USE_DEEPSPEED")


def check_backends(generation_backend: str) -> None:
    """Refuse, before any model loads, a launch or config that needs a package or device this machine lacks."""
    if deepspeed_requested():
        if importlib.util.find_spec("deepspeed") is None:
            raise ValueError(
                "distributed_type: the accelerate config asks for DEEPSPEED, which needs the deepspeed package "
                "(not installed); pip install deepspeed, or launch with configs/accelerate/fsdp.yaml or ddp.yaml"
            )
    if generation_backend == "vllm":
        missing = [
            what
            for what, ok in (
                ("vLLM is not installed", importlib.util.find_spec("vllm") is not None),
                ("no CUDA device is present", torch.cuda.is_available()),
            )
            if not ok
        ]
        if missing:
            raise ValueError(
                f"generation.backend: 'vllm' needs vLLM and a CUDA device, but {' and '.join(missing)}; "
                "expected 'auto' or 'transformers' here"
            )


def prepare_environment() -> None:
    """Settings the pipeline needs before accelerate and transformers read the environment."""
    if deepspeed_requested():
        from sgpo.pipeline import zero

        zero.prepare_environment()
    if fsdp_requested():
        # with it, transformers loads real weights on the first process only and leaves the others to FSDP's
        # broadcast at prepare; the pipeline generates and scores with the unsharded model on every process before
        # training, so every process loads the weights itself
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"


def enable_cpu_fsdp(accelerator: Any, plugin: Any = None) -> bool:
    """Make a multi-process CPU ``accelerator`` shard with FSDP2 when FSDP was asked for; True when it now does.

    ``plugin`` is the ``FullyShardedDataParallelPlugin`` to use (None: one read from the launch environment, as
    accelerate would). Any other accelerator is left as it is.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU or (plugin is None and not fsdp_requested()):
        return False
    plugin = plugin if plugin is not None else FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(f"fsdp_version: FSDP on CPU runs FSDP2; expected 2, got {plugin.fsdp_version!r}")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    # as accelerate does for FSDP on accelerators: every later AcceleratorState() copies the process state's type
    PartialState().distributed_type = DistributedType.FSDP
    return True


def is_sharded(accelerator: Any) -> bool:
    return accelerator.distributed_type.value == "FSDP"


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every process's shards gathered into full CPU tensors (a collective: every process must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


_STEP_DIR = re.compile(r"^step_(\d+)$")
_META = "meta.json"


class ShardedTrainState:
    """A round's training state under FSDP: each process writes its shards with ``torch.distributed.checkpoint``.

    Same interface as :class:`sgpo.pipeline.leader.TrainState`. A save goes to a staging directory that every process
    writes into; once all have finished, the main process adds the metadata (``meta.json``, the marker that the
    state is complete) and renames the directory to ``step_<n>`` under ``path``, then drops older steps. A kill at
    any point leaves either the previous complete state or the new one; a staging directory is never loaded.
    The RNG states are per process, in ``rng_<rank>.safetensors``.
    """

    def __init__(self, path: str | Path, *, every: int | None, main: bool = True) -> None:
        self.path = Path(path)
        self.every = every
        self.main = main
        self.staging = self.path.parent / f".{self.path.name}.staging"

    def _latest(self) -> Path | None:
        if not self.path.is_dir():
            return None
        steps = [
            (int(m.group(1)), entry)
            for entry in self.path.iterdir()
            if (m := _STEP_DIR.match(entry.name)) and (entry / _META).is_file()
        ]
        return max(steps)[1] if steps else None

    def saved_step(self) -> int | None:
        latest = self._latest()
        return None if latest is None else int(json.loads((latest / _META).read_text())["step"])

    def due(self, step: int, total_steps: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step < total_steps

    def save(
        self, model: nn.Module, optimizer: Any, *, step: int, totals: dict[str, float], shape: dict[str, int]
    ) -> None:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        from sgpo.pipeline.files import atomic_path, write_json

        if self.main:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir(parents=True)
        dist.barrier()
        options = StateDictOptions(ignore_frozen_params=True)
        model_state, optim_state = get_state_dict(model, _unwrap(optimizer), options=options)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(self.staging))
        with atomic_path(self.staging / f"rng_{dist.get_rank()}.safetensors") as tmp:
            save_file({"cpu": torch.get_rng_state(), **_cuda_rng()}, str(tmp))
        dist.barrier()
        if self.main:
            meta = {"step": step, "totals": totals, "shape": shape, "processes": dist.get_world_size()}
            write_json(self.staging / _META, meta)
            previous = [p for p in self.path.glob("step_*") if p.is_dir()]
            self.path.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging, self.path / f"step_{step:06d}")
            _fsync_dir(self.path)
            for old in previous:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def load(self, model: nn.Module, optimizer: Any, *, shape: dict[str, int]) -> tuple[int, dict[str, float]] | None:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

        # the main process decides which state every process loads
        found = [self._latest()]
        dist.broadcast_object_list(found, src=0)
        latest = found[0]
        if latest is None:
            return None
        meta = json.loads((latest / _META).read_text())
        if meta["shape"] != shape:
            raise ValueError(
                f"{latest}: saved for a round of {meta['shape']}, this round is {shape}; delete {self.path} to retrain"
            )
        # frozen weights are not in the state (the base model holds them); dcp.load fails on any trainable one missing
        options = StateDictOptions(ignore_frozen_params=True, strict=False)
        inner = _unwrap(optimizer)
        model_state, optim_state = get_state_dict(model, inner, options=options)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(latest))
        set_state_dict(model, inner, model_state_dict=state["model"], optim_state_dict=state["optim"], options=options)
        rng = load_file(str(latest / f"rng_{dist.get_rank()}.safetensors"))
        torch.set_rng_state(rng["cpu"])
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
        if cuda and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        return int(meta["step"]), {k: float(v) for k, v in meta["totals"].items()}

    def remove(self) -> None:
        if self.main:
            shutil.rmtree(self.path, ignore_errors=True)
            shutil.rmtree(self.staging, ignore_errors=True)


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    # accelerate's AcceleratedOptimizer keeps the torch optimizer, whose param_groups the DCP helpers map to names
    return getattr(optimizer, "optimizer", optimizer)


def _cuda_rng() -> dict[str, torch.Tensor]:
    if not torch.cuda.is_available():
        return {}
    return {f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
