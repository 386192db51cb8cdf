"""The run context every stage works in: the config, accelerate's processes, the run directory and its checkpoints.

Files it owns::

    output_dir/config.yaml          the resolved config; a later call on the same directory must match it
    output_dir/round_<t>/           one directory per round; round_<t>/checkpoint/ is the policy round t trained

Every process of a run sees a stage as done or not together: :meth:`RunContext.done` answers as the main process
sees the files. :meth:`RunContext.stage` wraps a stage whose outputs may be copied from ``cache_dir`` and whose work
resumes from part files; :meth:`RunContext.chunked` runs the chunks of that work, one part file each, so a killed
run resumes mid-stage. Chunks are fixed by the stage's inputs alone and each (prompt, sample) draws from its own
seed, so the number of processes does not change what a stage computes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from sgpo.pipeline import cache, distributed, files, zero
from sgpo.pipeline.config import RunConfig

# sections a later call may change: where results go, how they are shown and how many threads compute them
FREE_SECTIONS = ("logging", "output_dir", "threads", "cache_dir")


class RunContext:
    """One run directory and what its stages share: the config, the accelerator, the data, the tokenizer."""

    def __init__(self, cfg: RunConfig) -> None:
        import torch
        from accelerate import Accelerator

        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        distributed.check_backends(cfg.generation.backend)
        distributed.prepare_environment()
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        mixed = cfg.train.mixed_precision
        if mixed == "auto":
            mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        # accelerate only forms a multi-process CPU group (gloo) when told to run on the CPU
        world = int(os.environ.get("WORLD_SIZE", "1"))
        multi_cpu = not torch.cuda.is_available() and world > 1
        plugin = None
        if distributed.deepspeed_requested():
            from accelerate import PartialState

            plugin = zero.make_plugin(
                per_device_batch_size=cfg.train.per_device_batch_size,
                max_grad_norm=cfg.train.max_grad_norm,
                world=world,
            )
            if multi_cpu:
                # the gloo group first; accelerate then takes DeepSpeed only from an accelerator not told cpu=True
                PartialState(cpu=True)
                multi_cpu = False
        self.accelerator = Accelerator(
            mixed_precision=mixed,
            cpu=multi_cpu,
            deepspeed_plugin=plugin,
            log_with=cfg.logging.report_to or None,
            project_dir=str(self.out),
        )
        distributed.enable_cpu_fsdp(self.accelerator)
        zero.load_full_weights(self.accelerator)
        self.stages = cache.StageCache(cfg.cache_dir)
        # the stages of the current round copied from cache_dir
        self.cached: list[str] = []
        # set by prepare(): the run's data, the base model's path and its tokenizer
        self.data: Any = None
        self.base_path: str = ""
        self.tokenizer: Any = None
        # the frozen SFT model, loaded on first use where the reference is not the policy with its adapter off
        self.sft: Any = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def say(self, text: str) -> None:
        if self.main:
            print(f"[sgpo] {text}", flush=True)

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def round_dir(self, t: int) -> Path:
        return self.out / f"round_{t}"

    def checkpoint(self, t: int) -> Path | None:
        """The checkpoint the policy of round ``t`` starts from (None = the base model, fresh adapter)."""
        for previous in range(t - 1, -1, -1):
            path = self.round_dir(previous) / "checkpoint"
            if path.is_dir():
                return path
        return None

    def done(self, *paths: Path) -> bool:
        """Whether every path exists, as the main process sees it, so all processes skip or run a stage together."""
        from accelerate.utils import broadcast_object_list

        answer = [all(p.exists() for p in paths)]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(answer, from_process=0)
        return answer[0]

    @contextlib.contextmanager
    def stage(
        self,
        outputs: Sequence[Path],
        *,
        parts: Path | None = None,
        shared_as: str | None = None,
        t: int = 0,
        inputs: Callable[[], dict[str, Any]] = dict,
    ) -> Iterator[bool]:
        """A stage writing ``outputs`` (in the order it writes them; the last marks it done); yields whether it is.

        ``shared_as`` names a stage of round ``t`` that runs share through ``cache_dir``: when a run made it from the
        same policy files, inputs and settings, its outputs are copied here first and the stage is done. ``inputs``
        is called only to make that key, so a run without a cache never hashes a judge's files. The body computes
        the stage when it is not done, the main process writing ``outputs``; on leaving it the main process removes
        the stage's ``parts`` and stores the outputs for later runs, then every process waits for it. A stage found
        done drops the part files a kill left between its output and their removal.
        """
        entry = None if shared_as is None else self._fetch(shared_as, t, outputs, inputs)
        if self.done(outputs[-1]):
            if parts is not None and self.main:
                remove(parts)
            yield True
            return
        yield False
        if self.main:
            if parts is not None:
                remove(parts)
            if entry is not None:
                self.stages.store(entry, outputs[-1].parent, [p.name for p in outputs])
        self.barrier()

    def _fetch(self, name: str, t: int, outputs: Sequence[Path], inputs: Callable[[], dict[str, Any]]) -> str | None:
        """Copy a shared stage's outputs from ``cache_dir``; returns the entry the stage stores its files under
        (None: no cache, already done, or not the main process)."""
        if self.stages.root is None or not self.main or outputs[-1].exists():
            return None
        checkpoint = self.checkpoint(t)
        entry = cache.key(
            name,
            policy=cache.fingerprint(checkpoint) if checkpoint is not None else None,
            base=cache.fingerprint(self.base_path),
            model=asdict(self.cfg.model),
            threads=self.cfg.threads,
            processes=self.accelerator.num_processes,
            **inputs(),
        )
        if self.stages.fetch(entry, outputs[-1].parent, [p.name for p in outputs]):
            self.cached.append(name)
            self.say(f"round {t}: {name} copied from {self.stages.root} (the same policy files, inputs and settings)")
        return entry

    def chunked(
        self, parts: Path, total: int, size: int, compute: Callable[[int, int], list[Any]], desc: str
    ) -> list[Any]:
        """The chunk-and-resume loop of every stage that works through a list of ``total`` items.

        The items are cut into chunks of ``size``; this process runs ``compute(lo, hi)`` for the items ``[lo, hi)`` of
        every chunk it owns (chunk ``c`` belongs to process ``c % processes``) that has no part file under ``parts``
        yet, and writes its list there. Once every process is through, each returns all chunks' items, in order.
        """
        from tqdm.auto import tqdm

        n_chunks = (total + size - 1) // size
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        mine = [c for c in range(n_chunks) if c % world == rank]
        show = self.cfg.logging.progress and self.main
        for c in tqdm(mine, desc=desc, disable=not show, unit="chunk"):
            path = parts / f"part_{c:05d}.json"
            if not path.is_file():
                files.write_json(path, compute(c * size, min(total, (c + 1) * size)))
        self.barrier()
        merged = [item for c in range(n_chunks) for item in files.read_json(parts / f"part_{c:05d}.json")]
        # every process has read every part before any returns: the main one removes the parts once it has the output
        self.barrier()
        return merged

    def prepare(self) -> None:
        """Check the config against the run directory and the judges, load the data and the tokenizer, record the
        config; every error here comes before any model loads."""
        from sgpo.models import load_tokenizer, resolve_model
        from sgpo.pipeline.data import prepare_data
        from sgpo.pipeline.judges import check_judge_options

        cfg = self.cfg
        self.check_config()
        if cfg.rounds > 0:
            check_judge_options(cfg.judge.name, dict(cfg.judge.options))
        check_judge_options(cfg.evaluate.judge.name, dict(cfg.evaluate.judge.options), "evaluate.judge.name")
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for directory in [self.out, *self.out.glob("round_*"), *self.out.glob("round_*/*_parts")]:
                files.clean_stale(directory)
        self.barrier()
        needs_pairs = cfg.round0.enabled or cfg.method == "dpo"
        self.data = prepare_data(cfg.data, rounds=cfg.rounds, needs_pairs=needs_pairs, seed=cfg.seed)
        with self.accelerator.main_process_first():
            self.base_path = resolve_model(cfg.model.name_or_path)
        self.tokenizer = load_tokenizer(self.base_path)
        # recorded only once the data and the model passed their checks, so a failed start can be corrected freely
        config_path = self.out / "config.yaml"
        if self.main and not config_path.is_file():
            with files.atomic_path(config_path) as tmp:
                tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.barrier()
        if cfg.logging.report_to:
            self.accelerator.init_trackers("sgpo", config=_flatten(cfg.to_dict()))

    def check_config(self) -> None:
        """Refuse to continue a run directory made with a different config (:data:`FREE_SECTIONS` aside)."""
        path = self.out / "config.yaml"
        if not path.is_file():
            return
        saved = yaml.safe_load(path.read_text())
        for section in FREE_SECTIONS:
            saved.pop(section, None)
        mine = {k: v for k, v in self.cfg.to_dict().items() if k not in FREE_SECTIONS}
        if saved != mine:
            key = _first_difference(saved, mine)
            raise ValueError(
                f"output_dir: {self.out} holds a run made with a different config (first difference at {key}); "
                "use a new output_dir or the same config"
            )


def remove(path: Path) -> None:
    """Remove a directory of part files or a staging copy, if it is there."""
    shutil.rmtree(path, ignore_errors=True)


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix[:-1]} ({a!r} before, {b!r} now)"


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
