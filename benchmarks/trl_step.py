"""One configuration of ``benchmarks/bench_trl.py`` in this (fresh) process: train TRL's or sgpo's DPO trainer for a
few steps and print the step times, the peak memory and, with ``profile``, where a step's time goes, as one JSON line.

    python benchmarks/trl_step.py SPEC_JSON                                   # one process
    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/trl_step.py SPEC_JSON   # DDP

Under ``torch.distributed.run`` every process prints its own line (with its rank); the caller takes the slowest step
and the largest peak.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class Phases:
    """Seconds per phase of the measured steps: hooks on the decoder, the head, ``accelerator.backward`` and the
    optimizer; forward work without gradient is the reference's."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.active = False
        self._open: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.active:
                self.seconds[name] += time.perf_counter() - start

    def wrap(self, owner: Any, attribute: str, name: str, split_reference: bool = True) -> None:
        import torch

        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            label = "reference" if split_reference and not torch.is_grad_enabled() else name
            with self.phase(label):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)

    def hook_module(self, module: Any, name: str) -> None:
        import torch

        def before(*_):
            self._open[name] = time.perf_counter()

        def after(*_):
            if self.active and name in self._open:
                label = name if torch.is_grad_enabled() else "reference"
                self.seconds[label] += time.perf_counter() - self._open.pop(name)

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration in this process: train, time the steps, read the peak resident set."""
    import torch

    torch.set_num_threads(spec["threads"])
    import datasets
    import transformers
    import trl
    from sgpo.integrations.trl import SGPODPOConfig, SGPODPOTrainer
    from transformers import AutoTokenizer, TrainerCallback

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    baseline_kb = rss_kb("VmRSS")
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    phases = Phases()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs) -> None:
            phases.active = state.global_step >= 1
            self.start = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs) -> None:
            self.optimizer_start = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs) -> None:
            if phases.active:
                phases.seconds["optimizer"] += time.perf_counter() - self.optimizer_start

        def on_step_end(self, args, state, control, **kwargs) -> None:
            self.times.append(time.perf_counter() - self.start)

    data = datasets.Dataset.from_dict(spec["data"])
    trainer_cls, config_cls = (
        (SGPODPOTrainer, SGPODPOConfig) if spec["trainer"] == "sgpo" else (trl.DPOTrainer, trl.DPOConfig)
    )
    out = tempfile.mkdtemp(prefix="sgpo-bench-trl-")
    args = config_cls(output_dir=out, **spec["common"], **spec["config"])
    kwargs: dict[str, Any] = {}
    if spec.get("lora"):
        import peft

        kwargs["peft_config"] = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    timer = StepTimer()
    start = time.perf_counter()
    trainer = trainer_cls(
        model=spec["model"],
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(spec["model"]),
        callbacks=[timer],
        **kwargs,
    )
    setup = time.perf_counter() - start
    if spec.get("profile"):
        policy = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        phases.hook_module(policy.get_decoder(), "decoder forward")
        if trainer.ref_model is not None:
            phases.hook_module(trainer.ref_model.get_decoder(), "reference")
        import sgpo.integrations.shared_prompt as shared
        import sgpo.integrations.trl as sgpo_trl
        import trl.trainer.utils as trl_utils

        # the fused head, wherever sgpo calls it from (each module holds its own reference to the function)
        phases.wrap(shared, "head_token_logps", "head forward")
        phases.wrap(sgpo_trl, "head_token_logps", "head forward")
        import sgpo.integrations.trl_forward as trl_forward
        import sgpo.packing as packing

        phases.wrap(packing, "head_token_logps", "head forward")
        phases.wrap(packing, "model_attention_mask", "mask building")
        phases.wrap(trl_forward, "pack_pairs", "packing")
        phases.wrap(trl_utils._ChunkedLogProbFunction, "apply", "head forward")
        phases.wrap(trainer.accelerator, "backward", "backward", split_reference=False)
        phases.wrap(trainer, "training_step", "training step", split_reference=False)
    trainer.train()
    steps = timer.times[1:]
    result = {
        "rank": int(os.environ.get("RANK", "0")),
        "median": statistics.median(steps),
        "times": timer.times,
        "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else (rss_kb("VmHWM") - baseline_kb) / 1024,
        "setup": setup,
    }
    if spec.get("profile"):
        per_step = {name: seconds / len(steps) for name, seconds in phases.seconds.items()}
        per_step["other"] = statistics.mean(steps) - sum(
            v for k, v in per_step.items() if k not in ("training step", "other")
        )
        result["phases"] = per_step
    return result


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))), flush=True)
    from sgpo.pipeline.distributed import leave_together

    leave_together()
