"""``sgpo run``: rounds of generate -> annotate -> solve -> update -> evaluate, with files between the stages.

Run directory layout (every file written atomically; a stage whose output exists is skipped on the next call)::

    output_dir/config.yaml            the resolved config (a later call must match it)
    output_dir/round_0/               round 0: DPO on the gold seed pairs
    output_dir/round_<t>/prompts.jsonl, generations.jsonl, annotations.jsonl, worst_case.safetensors + .json,
                         reference_logps.safetensors, checkpoint/, train_log.jsonl, metrics.json (the round is done);
                         while training: train_state.safetensors (every train.save_steps) and train_log.partial.jsonl
    output_dir/metrics.jsonl          every training step of every round
    output_dir/report.json, report.md the run's summary

Generation and annotation write one part file per chunk of prompts, so a killed run resumes mid-stage; chunks are
fixed by the prompt list alone and each (prompt, sample) draws from its own seed, so the number of processes does not
change what is sampled.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sgpo.pipeline import cache, distributed, files
from sgpo.pipeline.config import RunConfig, bundled_configs, load_config
from sgpo.pipeline.data import RunData, fit_prompts, prepare_data
from sgpo.pipeline.leader import spa_smoothing


class Run:
    """One run directory and the state shared by its stages."""

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
        multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = Accelerator(
            mixed_precision=mixed,
            cpu=multi_cpu,
            log_with=cfg.logging.report_to or None,
            project_dir=str(self.out),
        )
        distributed.enable_cpu_fsdp(self.accelerator)
        self.stages = cache.StageCache(cfg.cache_dir)
        # the stages of the current round copied from cache_dir
        self.cached: list[str] = []

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def say(self, text: str) -> None:
        if self.main:
            print(f"[sgpo] {text}", flush=True)

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def done(self, *paths: Path) -> bool:
        """Whether every path exists, as the main process sees it, so all processes skip or run a stage together."""
        from accelerate.utils import broadcast_object_list

        answer = [all(p.exists() for p in paths)]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(answer, from_process=0)
        return answer[0]

    def drop_parts(self, parts: Path) -> None:
        """A finished stage's part files, left behind when a kill came between its output and their removal."""
        if self.main:
            _remove(parts)

    def shared(self, stage: str, t: int, names: list[str], inputs: Callable[[], dict[str, Any]]) -> str | None:
        """Copy round ``t``'s ``stage`` files from ``cache_dir`` when a run made them from the same policy files,
        inputs and settings; returns the entry the stage stores its files under (None: no cache, done or not main).
        ``inputs`` is called only to make a key, so a run without a cache never hashes a judge's files.
        Every process then sees the stage done or not through ``done``, which answers as the main process sees it."""
        if self.stages.root is None or not self.main or (self.round_dir(t) / names[-1]).exists():
            return None
        checkpoint = self.checkpoint(t)
        entry = cache.key(
            stage,
            policy=cache.fingerprint(checkpoint) if checkpoint is not None else None,
            base=cache.fingerprint(self.base_path),
            model=asdict(self.cfg.model),
            threads=self.cfg.threads,
            processes=self.accelerator.num_processes,
            **inputs(),
        )
        if self.stages.fetch(entry, self.round_dir(t), names):
            self.cached.append(stage)
            self.say(f"round {t}: {stage} copied from {self.stages.root} (the same policy files, inputs and settings)")
        return entry

    def keep(self, entry: str | None, t: int, names: list[str]) -> None:
        """Store a stage this run computed for later runs (main process; a no-op without an entry)."""
        if entry is not None and self.main:
            self.stages.store(entry, self.round_dir(t), names)

    def round_dir(self, t: int) -> Path:
        return self.out / f"round_{t}"

    def checkpoint(self, t: int) -> Path | None:
        """The checkpoint the policy of round ``t`` starts from (None = the base model, fresh adapter)."""
        for previous in range(t - 1, -1, -1):
            path = self.round_dir(previous) / "checkpoint"
            if path.is_dir():
                return path
        return None

    def check_config(self) -> None:
        """Refuse to continue a run directory made with a different config (logging settings aside)."""
        path = self.out / "config.yaml"
        current = self.cfg.to_dict()
        if path.is_file():
            saved = yaml.safe_load(path.read_text())
            # where results go, how they are shown and how many threads compute them may change between calls
            free = ("logging", "output_dir", "threads", "cache_dir")
            for section in free:
                saved.pop(section, None)
            mine = {k: v for k, v in current.items() if k not in free}
            if saved != mine:
                key = _first_difference(saved, mine)
                raise ValueError(
                    f"output_dir: {self.out} holds a run made with a different config (first difference at {key}); "
                    "use a new output_dir or the same config"
                )

    def load_policy(self, checkpoint: Path | None) -> Any:
        """The trainable policy from ``checkpoint`` (None: the base model with a freshly initialised adapter)."""
        import torch

        from sgpo.models import load_model

        cfg = self.cfg.model
        if not cfg.lora:
            model = load_model(checkpoint or self.base_path, dtype=cfg.dtype)
        else:
            from peft import LoraConfig, PeftModel, get_peft_model

            model = load_model(self.base_path, dtype=cfg.dtype)
            if checkpoint is not None:
                model = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)
            else:
                # the adapter's random init must not depend on what ran before in this process
                torch.manual_seed(self.cfg.seed)
                lora = LoraConfig(
                    r=cfg.lora_r,
                    lora_alpha=cfg.lora_alpha,
                    lora_dropout=cfg.lora_dropout,
                    target_modules=list(cfg.lora_target_modules),
                    layers_to_transform=self.lora_layers(model),
                    task_type="CAUSAL_LM",
                )
                model = get_peft_model(model, lora)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if cfg.lora:
                model.enable_input_require_grads()
        return model.to(self.accelerator.device)

    def lora_layers(self, model: Any) -> list[int] | None:
        """The decoder layers that get adapters: the last ``model.lora_layers`` ones (None: all)."""
        count = self.cfg.model.lora_layers
        if count is None:
            return None
        total = model.config.num_hidden_layers
        if count > total:
            raise ValueError(f"model.lora_layers: the model has {total} decoder layers, got {count}")
        return list(range(total - count, total))

    def save_checkpoint(self, model: Any, t: int) -> None:
        # sharded weights are gathered by every process together, then written by the main one
        state_dict = distributed.full_state_dict(model) if distributed.is_sharded(self.accelerator) else None
        if self.main:
            unwrapped = self.accelerator.unwrap_model(model)
            with files.atomic_dir(self.round_dir(t) / "checkpoint") as staging:
                unwrapped.save_pretrained(staging, safe_serialization=True, state_dict=state_dict)
                self.tokenizer.save_pretrained(staging)
        self.barrier()

    def rows(self, prompts: list[Any], responses: list[str]) -> list[tuple[list[int], list[int]]]:
        from sgpo.pipeline.scoring import encode

        return [
            encode(
                self.tokenizer,
                p,
                r,
                system_prompt=self.cfg.model.system_prompt,
                max_length=self.cfg.data.max_length,
            )
            for p, r in zip(prompts, responses, strict=True)
        ]

    def logps(self, model: Any, prompts: list[Any], responses: list[str], *, sft: bool = False) -> np.ndarray:
        """Summed response log-probs under ``model`` (under the SFT model when ``sft``)."""
        import contextlib

        from sgpo.pipeline.scoring import SequenceScorer, score_rows

        rows = self.rows(prompts, responses)
        context: Any = contextlib.nullcontext()
        scorer_model = model
        if sft:
            if self.cfg.model.lora:
                context = model.disable_adapter()
            else:
                scorer_model = self.sft_model()
        with context:
            return score_rows(
                SequenceScorer(scorer_model),
                rows,
                pad_id=self.tokenizer.pad_token_id,
                batch_size=2 * self.cfg.train.per_device_batch_size,
                device=self.accelerator.device,
            )

    def sft_model(self) -> Any:
        from sgpo.models import load_model

        if getattr(self, "_sft", None) is None:
            self._sft = load_model(self.base_path, dtype=self.cfg.model.dtype).to(self.accelerator.device).eval()
        return self._sft

    def chunked(self, parts: Path, n_chunks: int, compute: Any, desc: str) -> list[Any]:
        """Run ``compute(c)`` for every chunk ``c`` this process owns and has not finished; all parts, in order."""
        from tqdm.auto import tqdm

        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        mine = [c for c in range(n_chunks) if c % world == rank]
        show = self.cfg.logging.progress and self.main
        for c in tqdm(mine, desc=desc, disable=not show, unit="chunk"):
            path = parts / f"part_{c:05d}.json"
            if not path.is_file():
                files.write_json(path, compute(c))
        self.barrier()
        merged = [files.read_json(parts / f"part_{c:05d}.json") for c in range(n_chunks)]
        # every process has read every part before any returns: the main one removes the parts once it has the output
        self.barrier()
        return merged

    def round_prompts(self, t: int) -> tuple[list[Any], dict[str, int]]:
        path = self.round_dir(t) / "prompts.jsonl"
        if not self.done(path):
            prompts, indices, counts = fit_prompts(
                self.tokenizer, self.data.round_prompts[t - 1], self.cfg.data, self.cfg.model.system_prompt
            )
            if not prompts:
                raise ValueError(f"data.max_prompt_length: every prompt of round {t} is too long and was skipped")
            if self.main:
                files.write_json(self.round_dir(t) / "prompt_counts.json", counts)
                files.write_jsonl(path, [{"index": i, "prompt": p} for i, p in zip(indices, prompts, strict=True)])
            self.barrier()
        rows = files.read_jsonl(path)
        return [r["prompt"] for r in rows], files.read_json(self.round_dir(t) / "prompt_counts.json")

    def generate(self, t: int, model: Any, prompts: list[Any]) -> list[list[str]]:
        """Stage 1: sample ``num_samples`` responses per prompt from pi_t (SSAPO Alg. 1 step 2)."""
        from sgpo.generation import generate_responses

        g = self.cfg.generation
        path = self.round_dir(t) / "generations.jsonl"
        seed = self.cfg.seed * 1000 + t
        names = [path.name]
        entry = self.shared(
            "generate",
            t,
            names,
            lambda: {"prompts": prompts, "generation": asdict(g), "seed": seed, "vllm": self.use_vllm()},
        )
        if self.done(path):
            self.drop_parts(self.round_dir(t) / "generate_parts")
            return [r["responses"] for r in files.read_jsonl(path)]
        if self.use_vllm():
            responses = self.generate_vllm(t, model, prompts, seed)
        else:
            per_chunk = max(1, g.batch_size // g.num_samples)
            n_chunks = (len(prompts) + per_chunk - 1) // per_chunk

            def compute(c: int) -> list[list[str]]:
                lo, hi = c * per_chunk, min(len(prompts), (c + 1) * per_chunk)
                return generate_responses(
                    model,
                    self.tokenizer,
                    prompts[lo:hi],
                    prompt_indices=list(range(lo, hi)),
                    num_samples=g.num_samples,
                    max_new_tokens=g.max_new_tokens,
                    temperature=g.temperature,
                    top_p=g.top_p,
                    seed=seed,
                    batch_size=g.batch_size,
                    system_prompt=self.cfg.model.system_prompt,
                )

            parts = self.round_dir(t) / "generate_parts"
            responses = [r for part in self.chunked(parts, n_chunks, compute, f"generate r{t}") for r in part]
        if self.main:
            files.write_jsonl(path, [{"prompt": p, "responses": r} for p, r in zip(prompts, responses, strict=True)])
            _remove(self.round_dir(t) / "generate_parts")
            self.keep(entry, t, names)
        self.barrier()
        return responses

    def use_vllm(self) -> bool:
        from sgpo.generation import vllm_available

        # an unusable 'vllm' was refused before any model loaded (distributed.check_backends)
        backend = self.cfg.generation.backend
        return backend == "vllm" or (backend == "auto" and vllm_available())

    def generate_vllm(self, t: int, model: Any, prompts: list[Any], seed: int) -> list[list[str]]:
        """vLLM samples on the main process from a merged copy of the policy; the others wait."""
        from sgpo.generation import generate_responses_vllm

        g = self.cfg.generation
        merged = self.round_dir(t) / "vllm_model"
        responses: list[list[str]] = []
        if self.main:
            unwrapped = self.accelerator.unwrap_model(model)
            with files.atomic_dir(merged) as staging:
                export = unwrapped.merge_and_unload() if self.cfg.model.lora else unwrapped
                export.save_pretrained(staging, safe_serialization=True)
                self.tokenizer.save_pretrained(staging)
            responses = generate_responses_vllm(
                str(merged),
                prompts,
                num_samples=g.num_samples,
                max_new_tokens=g.max_new_tokens,
                temperature=g.temperature,
                top_p=g.top_p,
                seed=seed,
                system_prompt=self.cfg.model.system_prompt,
            )
            _remove(merged)
        self.barrier()
        return responses

    def annotator(self, model: Any, policy_logps: Any = None) -> Any:
        """The round's judge (``judge.name``); a ``from_pipeline`` judge scores with ``model`` and the SFT model."""
        from sgpo.pipeline.judges import JudgeContext, build_judge

        context = JudgeContext(
            policy_logps=policy_logps or (lambda p, r: self.logps(model, list(p), list(r))),
            sft_logps=lambda p, r: self.logps(model, list(p), list(r), sft=True),
            beta=self.cfg.train.beta,
            lengths=lambda p, r: np.array(
                [sum(x != -100 for x in labels) for _, labels in self.rows(list(p), list(r))]
            ),
        )
        return build_judge(self.cfg.judge.name, dict(self.cfg.judge.options), context)

    def judging_settings(self) -> dict[str, Any]:
        """What a judge's scores depend on besides the policy and the base model (for ``shared``)."""
        return {
            "judge": cache.judge_identity(self.cfg.judge.name, dict(self.cfg.judge.options)),
            "beta": self.cfg.train.beta,
            "max_length": self.cfg.data.max_length,
            # the batch a forward pass pads to can move its log-probs in the last bits
            "batch_size": self.cfg.train.per_device_batch_size,
        }

    def heldout_agreement(self, t: int, model: Any) -> dict[str, Any] | None:
        """The annotator's agreement with gold on ``judge.agreement_pairs``, with the policy round ``t`` starts from."""
        from sgpo.pipeline.annotator import heldout_agreement
        from sgpo.pipeline.data import load_table, pairs_from_table

        source = self.cfg.judge.agreement_pairs
        if source is None:
            return None
        path = self.round_dir(t) / "agreement.json"
        pairs = pairs_from_table(load_table(source, kind="seed_pairs"), self.cfg.data, source)
        entry = self.shared("agreement", t, [path.name], lambda: {"pairs": pairs, **self.judging_settings()})
        if not self.done(path):
            result = heldout_agreement(self.annotator(model), pairs).to_dict()
            if self.main:
                files.write_json(path, result)
                self.keep(entry, t, [path.name])
            self.barrier()
        return files.read_json(path)

    def annotate(self, t: int, model: Any, prompts: list[Any], responses: list[list[str]]) -> list[dict[str, Any]]:
        """Stage 2: the judge picks chosen and rejected among each prompt's samples (SPA's self-annotation)."""
        from sgpo.pipeline.judges import choose_pair, win_probabilities

        path = self.round_dir(t) / "annotations.jsonl"
        # the counts first: the annotations mark the stage done
        names = ["annotation_counts.json", path.name]
        evaluation = self.cfg.evaluate.judge
        entry = self.shared(
            "annotate",
            t,
            names,
            lambda: {
                "prompts": prompts,
                "responses": responses,
                "method": self.cfg.method,
                "gold": cache.judge_identity(evaluation.name, dict(evaluation.options), "evaluate.judge.name"),
                **self.judging_settings(),
            },
        )
        if self.done(path):
            self.drop_parts(self.round_dir(t) / "annotate_parts")
            return files.read_jsonl(path)
        # log pi_t of every response the judge scores, kept with the pairs: pi_t is also the leader's reference, so
        # update reuses them instead of a second forward pass
        seen: dict[tuple[str, str], float] = {}

        def policy_logps(p: Any, r: Any) -> np.ndarray:
            values = self.logps(model, list(p), list(r))
            seen.update(((json.dumps(x), y), float(v)) for x, y, v in zip(p, r, values, strict=True))
            return values

        judge = self.annotator(model, policy_logps)
        per_chunk = max(1, self.cfg.train.per_device_batch_size)
        n_chunks = (len(prompts) + per_chunk - 1) // per_chunk
        sppo = self.cfg.method == "sppo"

        def compute(c: int) -> list[dict[str, Any]]:
            lo, hi = c * per_chunk, min(len(prompts), (c + 1) * per_chunk)
            out = []
            flat_prompts = [prompts[i] for i in range(lo, hi) for _ in responses[i]]
            flat_responses = [r for i in range(lo, hi) for r in responses[i]]
            scores = None if sppo else np.asarray(judge.scores(flat_prompts, flat_responses), dtype=np.float64)
            gate = getattr(judge, "admissible", None)
            flags = None if sppo or gate is None else gate(flat_prompts, flat_responses)
            offset = 0
            for i in range(lo, hi):
                k = len(responses[i])
                record: dict[str, Any] = {}
                if sppo:
                    record["win_probs"] = [float(x) for x in win_probabilities(judge, prompts[i], responses[i])]
                else:
                    record["scores"] = [float(x) for x in scores[offset : offset + k]]
                    if flags is not None:
                        record["admissible"] = [bool(x) for x in flags[offset : offset + k]]
                keys = [(json.dumps(prompts[i]), r) for r in responses[i]]
                if all(key in seen for key in keys):
                    record["policy_logps"] = [seen[key] for key in keys]
                offset += k
                out.append(record)
            return out

        parts = self.round_dir(t) / "annotate_parts"
        judged = [r for part in self.chunked(parts, n_chunks, compute, f"annotate r{t}") for r in part]
        counts: dict[str, Any] = {}
        if not sppo and getattr(judge, "calibrated", False):
            # a judge fitted on the whole round (the length-debiased implicit reward); raw scores are kept
            lengths = judge.lengths(
                [p for p, rs in zip(prompts, responses) for _ in rs], [r for rs in responses for r in rs]
            )
            sizes = np.split(np.asarray(lengths), np.cumsum([len(rs) for rs in responses])[:-1])
            raw = [np.asarray(record["scores"]) for record in judged]
            for record, calibrated, n in zip(judged, judge.calibrate(raw, sizes), sizes, strict=True):
                record.update(raw_scores=record["scores"], scores=calibrated.tolist(), lengths=n.tolist())
            counts["length_alpha"] = float(getattr(judge, "alpha", 0.0))
        pairs, identical = [], 0
        for prompt, samples, record in zip(prompts, responses, judged, strict=True):
            values = np.asarray(record["win_probs"] if sppo else record["scores"])
            # ties keep the earlier sample, so a pair never depends on float noise between equal values
            w, lo_ = choose_pair(values, record.get("admissible"))
            if w == lo_ or samples[w] == samples[lo_]:
                identical += 1
                continue
            pair = {"prompt": prompt, "chosen": samples[w], "rejected": samples[lo_], **record}
            if "policy_logps" in record:
                pair["ref_chosen_logps"] = record["policy_logps"][w]
                pair["ref_rejected_logps"] = record["policy_logps"][lo_]
            pair["margin"] = float(values[w] - values[lo_])
            if sppo:
                pair["chosen_win_prob"], pair["rejected_win_prob"] = float(values[w]), float(values[lo_])
            pairs.append(pair)
        if not pairs:
            raise ValueError(
                f"judge.name: every pair of round {t} was a tie under {self.cfg.judge.name!r}; nothing to train on"
            )
        if self.main:
            # the stage's output file is written last: its presence marks the stage done
            counts.update(pairs=len(pairs), ties=identical)
            gold = self.gold_judge()
            if gold is not None:
                from sgpo.pipeline.annotator import round_agreement

                measured = round_agreement(gold, pairs)
                if measured is not None:
                    counts["gold_agreement"] = measured.to_dict()
            files.write_json(self.round_dir(t) / "annotation_counts.json", counts)
            files.write_jsonl(path, pairs)
            _remove(parts)
            self.keep(entry, t, names)
        self.barrier()
        return pairs

    def gold_judge(self) -> Any:
        """The evaluation's judge where it can score outside a run (the gold preference), else None."""
        from sgpo.pipeline.judges import build_judge, judge_class

        name = self.cfg.evaluate.judge.name
        if hasattr(judge_class(name, "evaluate.judge.name"), "from_pipeline"):
            return None
        return build_judge(name, dict(self.cfg.evaluate.judge.options), None, option="evaluate.judge.name")

    def solve(self, t: int, pairs: list[dict[str, Any]]) -> dict[str, Any]:
        """Stage 3: the follower's worst case in the epsilon-Wasserstein ball over all new margins (DESIGN 1.2)."""
        from safetensors.numpy import load_file, save_file

        import sgpo
        from sgpo.follower import follower_inputs, moved_mass

        f = self.cfg.follower
        path = self.round_dir(t) / "worst_case.safetensors"
        if not self.done(path):
            margins = np.asarray([p["margin"] for p in pairs], dtype=np.float64)
            xi = follower_inputs(margins, f.space, f.gamma, self.cfg.train.beta)
            if self.main:
                start = time.perf_counter()
                result = sgpo.worst_case(
                    xi,
                    f.epsilon,
                    pieces=f.pieces,
                    space=f.space,
                    group_size=f.group_size,
                    max_shift=f.max_shift,
                    backend=f.backend,
                )
                seconds = time.perf_counter() - start
                weights, shifts = np.asarray(result.weights), np.asarray(result.shifts)
                moved = moved_mass(weights, shifts)
                summary = {
                    "epsilon": f.epsilon,
                    "backend": f.backend,
                    "pairs": len(xi),
                    "value": np.atleast_1d(np.asarray(result.value, dtype=np.float64)).tolist(),
                    "dual": np.atleast_1d(np.asarray(result.dual, dtype=np.float64)).tolist(),
                    "mass_moved": float(moved.sum() / len(xi)),
                    "transport": float((weights * np.abs(shifts)).sum() / len(xi)),
                    "seconds": seconds,
                }
                files.write_json(self.round_dir(t) / "worst_case.json", summary)
                with files.atomic_path(path) as tmp:
                    save_file({"xi": xi, "weights": weights, "shifts": shifts}, str(tmp))
            self.barrier()
        tensors = load_file(str(path))
        return {**files.read_json(self.round_dir(t) / "worst_case.json"), **tensors}

    def update(
        self,
        t: int,
        model: Any,
        pairs: list[dict[str, Any]],
        spec_extra: dict[str, Any],
        step_context: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """Stage 4: one round of the leader from the reference pi_t (SSAPO Alg. 1 step 4)."""
        from safetensors.numpy import load_file, save_file

        from sgpo.pipeline.leader import LossSpec, TrainSettings, TrainState, train_round

        round_dir = self.round_dir(t)
        summary_path = round_dir / "train_summary.json"
        if self.done(summary_path, round_dir / "checkpoint"):
            return files.read_json(summary_path)
        train = self.cfg.train
        r0 = self.cfg.round0
        first = t == 0
        loss_type = r0.loss_type if first else train.loss_type

        def round_value(name: str) -> Any:
            # round 0's own value where its config sets one, else the rounds' value
            own = getattr(r0, name) if first else None
            return own if own is not None else getattr(train, name)

        beta = round_value("beta")
        settings = TrainSettings(
            learning_rate=round_value("learning_rate"),
            epochs=round_value("epochs"),
            batch_size=train.batch_size,
            per_device_batch_size=train.per_device_batch_size,
            optimizer=train.optimizer,
            weight_decay=train.weight_decay,
            scheduler=train.scheduler,
            warmup_ratio=train.warmup_ratio,
            max_grad_norm=train.max_grad_norm,
            seed=self.cfg.seed * 1000 + t,
        )
        prompts = [p["prompt"] for p in pairs]
        chosen = self.rows(prompts, [p["chosen"] for p in pairs])
        rejected = self.rows(prompts, [p["rejected"] for p in pairs])
        ref_path = round_dir / "reference_logps.safetensors"
        if not self.done(ref_path):
            # reference log-probs once per round, from the policy before its first step (precompute_ref_log_probs)
            if all("ref_chosen_logps" in p for p in pairs):
                ref = np.array([[p["ref_chosen_logps"] for p in pairs], [p["ref_rejected_logps"] for p in pairs]])
            else:
                ref = self.sharded_logps(model, chosen + rejected).reshape(2, len(pairs))
            if self.main:
                with files.atomic_path(ref_path) as tmp:
                    save_file({"ref_logps": ref}, str(tmp))
            self.barrier()
        ref = load_file(str(ref_path))["ref_logps"]
        spec = LossSpec(
            loss_type=loss_type,
            beta=beta,
            label_smoothing=0.0 if not first and loss_type in ("ssapo", "sppo") else train.label_smoothing,
            space=self.cfg.follower.space,
            **spec_extra,
        )
        step_context = step_context or {}
        partial = round_dir / "train_log.partial.jsonl"
        # a training state saved mid-round (train.save_steps) is resumed from; the step rows up to it are kept
        every = train.save_steps
        if every and self.accelerator.distributed_type.value == "DEEPSPEED":
            # ZeRO's partitioned state is saved through its engine, which this loop does not drive; a round reruns
            every = None
        if distributed.is_sharded(self.accelerator):
            state: Any = distributed.ShardedTrainState(round_dir / "train_state", every=every, main=self.main)
        else:
            state = TrainState(round_dir / "train_state.safetensors", every=every, main=self.main)
        saved_step = state.saved_step()
        steps: list[dict[str, Any]] = []
        if saved_step and partial.is_file():
            steps = [row for row in files.read_jsonl(partial) if row["step"] <= saved_step]
        if self.main:
            files.write_jsonl(partial, steps)
        self.barrier()
        offset = self.global_step(t)

        def log(metrics: dict[str, Any]) -> None:
            row = {"round": t, "global_step": offset + metrics["step"], **metrics, **step_context}
            steps.append(row)
            if self.main:
                with open(partial, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                self.accelerator.log({f"train/{k}": v for k, v in metrics.items()}, step=row["global_step"])

        import torch

        torch.manual_seed(settings.seed)
        summary = train_round(
            self.accelerator,
            model,
            list(zip(chosen, rejected, strict=True)),
            ref,
            spec,
            settings,
            pad_id=self.tokenizer.pad_token_id,
            log=log,
            progress=self.cfg.logging.progress,
            state=state,
        )
        summary.update(loss_type=loss_type, beta=beta, pairs=len(pairs), learning_rate=settings.learning_rate)
        self.save_checkpoint(model, t)
        if self.main:
            files.write_jsonl(round_dir / "train_log.jsonl", steps)
            partial.unlink(missing_ok=True)
            files.write_json(summary_path, summary)
            state.remove()
        self.barrier()
        return summary

    def sharded_logps(self, model: Any, rows: list[tuple[list[int], list[int]]]) -> np.ndarray:
        """Log-probs of ``rows`` split over the processes and gathered back in order."""
        from accelerate.utils import gather_object

        from sgpo.pipeline.scoring import SequenceScorer, score_rows

        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        mine = list(range(rank, len(rows), world))
        values = score_rows(
            SequenceScorer(self.accelerator.unwrap_model(model)),
            [rows[i] for i in mine],
            pad_id=self.tokenizer.pad_token_id,
            batch_size=2 * self.cfg.train.per_device_batch_size,
            device=self.accelerator.device,
        )
        out = np.zeros(len(rows), dtype=np.float64)
        for i, v in gather_object(list(zip(mine, values.tolist(), strict=True))):
            out[i] = v
        return out

    def global_step(self, t: int) -> int:
        total = 0
        for previous in range(t):
            path = self.round_dir(previous) / "train_summary.json"
            if path.is_file():
                total += int(files.read_json(path)["steps"])
        return total

    def evaluate(self, t: int, model: Any) -> dict[str, Any]:
        """Stage 5: the judge's win rate of this round's policy against the starting model on held-out prompts."""
        cfg = self.cfg.evaluate
        if cfg.prompts is None:
            return {}
        from sgpo.evaluation.sources import TRACKS, load_prompts
        from sgpo.generation import generate_responses
        from sgpo.pipeline.data import load_table, prompts_from_table
        from sgpo.pipeline.judges import build_judge

        if cfg.prompts in TRACKS:
            # a generated track's held-out split (the hidden track's open prompts, or verifiable instructions)
            prompts = load_prompts(cfg.prompts, cfg.num_prompts, split="test", option="evaluate.prompts")
        else:
            prompts = prompts_from_table(load_table(cfg.prompts), self.cfg.data, cfg.prompts)[: cfg.num_prompts]
        g = self.cfg.generation

        def sample(path: Path, policy: Any) -> list[str]:
            if self.done(path):
                self.drop_parts(path.parent / f"{path.stem}_parts")
            else:
                per_chunk = max(1, g.batch_size)
                n_chunks = (len(prompts) + per_chunk - 1) // per_chunk

                def compute(c: int) -> list[str]:
                    lo, hi = c * per_chunk, min(len(prompts), (c + 1) * per_chunk)
                    out = generate_responses(
                        policy,
                        self.tokenizer,
                        prompts[lo:hi],
                        prompt_indices=list(range(lo, hi)),
                        max_new_tokens=cfg.max_new_tokens or g.max_new_tokens,
                        temperature=0.0,
                        batch_size=g.batch_size,
                        system_prompt=self.cfg.model.system_prompt,
                    )
                    return [r[0] for r in out]

                parts = path.parent / f"{path.stem}_parts"
                responses = [
                    r for part in self.chunked(parts, n_chunks, compute, f"evaluate {path.stem}") for r in part
                ]
                if self.main:
                    files.write_jsonl(
                        path, [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]
                    )
                    _remove(parts)
                self.barrier()
            return [r["response"] for r in files.read_jsonl(path)]

        baseline_path = self.out / "eval_baseline.jsonl"
        if not self.done(baseline_path):
            if self.cfg.model.lora:
                with self.accelerator.unwrap_model(model).disable_adapter():
                    baseline = sample(baseline_path, self.accelerator.unwrap_model(model))
            else:
                baseline = sample(baseline_path, self.sft_model())
        baseline = [r["response"] for r in files.read_jsonl(baseline_path)]
        candidates = sample(self.round_dir(t) / "eval_responses.jsonl", self.accelerator.unwrap_model(model))
        judge = build_judge(cfg.judge.name, dict(cfg.judge.options), None)
        if hasattr(judge, "compare"):
            result, cand_scores, base_scores = judge.compare(prompts, candidates, baseline)
            report = {k: float(v) for k, v in vars(result).items() if isinstance(v, (int, float))}
        else:
            cand_scores = np.asarray(judge.scores(prompts, candidates))
            base_scores = np.asarray(judge.scores(prompts, baseline))
            report = {"win_rate": float(np.mean((cand_scores > base_scores) + 0.5 * (cand_scores == base_scores)))}
        report.update(mean_score=float(np.mean(cand_scores)), baseline_mean_score=float(np.mean(base_scores)))
        return report

    def prepare(self) -> None:
        from sgpo.models import load_tokenizer, resolve_model
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
        self.data: RunData = prepare_data(cfg.data, rounds=cfg.rounds, needs_pairs=needs_pairs, seed=cfg.seed)
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

    def run_round(self, t: int) -> dict[str, Any]:
        round_dir = self.round_dir(t)
        metrics_path = round_dir / "metrics.json"
        if self.done(metrics_path):
            return files.read_json(metrics_path)
        started = time.perf_counter()
        model = self.load_policy(self.checkpoint(t))
        metrics: dict[str, Any] = {"round": t}
        # seconds per stage in this call (a stage finished by an earlier call counts ~0)
        timings: dict[str, float] = {}
        metrics["timings"] = timings
        self.cached = []
        if t == 0:
            seed = self.data.seed_pairs
            prompts, kept, counts = fit_prompts(
                self.tokenizer, [p["prompt"] for p in seed], self.cfg.data, self.cfg.model.system_prompt
            )
            if not prompts:
                raise ValueError("data.max_prompt_length: every seed pair's prompt is too long and was skipped")
            pairs = [{**seed[i], "prompt": prompt} for i, prompt in zip(kept, prompts, strict=True)]
            metrics["data"] = counts
            self.say(
                f"round 0: {self.cfg.round0.loss_type} on {len(pairs)} seed pairs "
                f"({counts['truncated']} prompts truncated, {counts['skipped']} skipped)"
            )
            clock = time.perf_counter()
            metrics["train"] = self.update(0, model, pairs, {})
            timings["update"] = time.perf_counter() - clock
        else:
            prompts, counts = self.round_prompts(t)
            self.say(
                f"round {t}: {len(prompts)} prompts ({counts['truncated']} truncated, {counts['skipped']} skipped)"
            )
            held = self.heldout_agreement(t, model)
            if held is not None:
                metrics["annotator"] = {"heldout": held}
                if held["agreement"] is not None:
                    self.say(
                        f"round {t}: the annotator agrees with gold on {100 * held['agreement']:.1f}% "
                        f"(± {100 * held['stderr']:.1f}) of {held['pairs']} held-out pairs"
                    )
            clock = time.perf_counter()
            responses = self.generate(t, model, prompts)
            timings["generate"] = time.perf_counter() - clock
            clock = time.perf_counter()
            pairs = self.annotate(t, model, prompts, responses)
            timings["annotate"] = time.perf_counter() - clock
            annotation = files.read_json(round_dir / "annotation_counts.json")
            if "gold_agreement" in annotation:
                metrics.setdefault("annotator", {})["round"] = annotation.pop("gold_agreement")
                measured = metrics["annotator"]["round"]
                if measured["agreement"] is not None:
                    self.say(
                        f"round {t}: the gold judge agrees with {100 * measured['agreement']:.1f}% of the "
                        f"{measured['pairs']} round labels it decides ({measured['ties']} ties)"
                    )
            metrics["data"] = {**counts, **annotation, "mean_margin": float(np.mean([p["margin"] for p in pairs]))}
            extra: dict[str, Any] = {}
            if self.cfg.method == "ssapo":
                worst = self.solve(t, pairs)
                extra["worst_case_weights"] = worst.pop("weights")
                extra["worst_case_shifts"] = worst.pop("shifts")
                worst.pop("xi")
                metrics["follower"] = worst
                if self.cfg.refinement.enabled:
                    r = self.cfg.refinement
                    margins = np.asarray([p["margin"] for p in pairs], dtype=np.float64)
                    extra["refinement_smoothing"] = spa_smoothing(margins, self.cfg.train.beta, r.alpha, r.quantile)
            else:
                extra["chosen_win_prob"] = np.asarray([p["chosen_win_prob"] for p in pairs])
                extra["rejected_win_prob"] = np.asarray([p["rejected_win_prob"] for p in pairs])
            clock = time.perf_counter()
            # the round's follower answer repeated on each step row, so one metrics file tells the whole story
            follower = metrics.get("follower", {})
            context = {f"follower_{k}": float(follower[k]) for k in ("mass_moved", "transport") if k in follower}
            if follower.get("value"):
                context["follower_value"] = float(np.mean(follower["value"]))
            metrics["train"] = self.update(t, model, pairs, extra, context)
            timings["update"] = time.perf_counter() - clock
        if self.cfg.evaluate.prompts is not None:
            # the trained policy as saved, whether this call trained it or an earlier one did
            del model
            metrics["eval"] = self.evaluate(t, self.load_policy(round_dir / "checkpoint"))
        metrics["seconds"] = time.perf_counter() - started
        if self.cached:
            # stages this call copied from cache_dir; their timings are the copy's
            metrics["cached"] = list(self.cached)
        if self.main:
            files.write_json(metrics_path, metrics)
        self.barrier()
        self.accelerator.free_memory()
        return metrics

    def report(self, rounds: list[dict[str, Any]], seconds: float) -> Path:
        rows = []
        for m in rounds:
            train = m.get("train", {})
            follower = m.get("follower", {})
            rows.append(
                {
                    "round": m["round"],
                    "pairs": train.get("pairs"),
                    "loss": train.get("loss"),
                    "reward_accuracy": train.get("reward_accuracy"),
                    "follower_value": (follower.get("value") or [None])[0],
                    "mass_moved": follower.get("mass_moved"),
                    "win_rate": m.get("eval", {}).get("win_rate"),
                    "seconds": m.get("seconds"),
                }
            )
        report = {
            "method": self.cfg.method,
            "output_dir": str(self.out),
            "processes": self.accelerator.num_processes,
            "rounds": rows,
            "seconds": seconds,
        }
        steps = []
        for m in rounds:
            log_path = self.round_dir(m["round"]) / "train_log.jsonl"
            if log_path.is_file():
                steps.extend(files.read_jsonl(log_path))
        if self.main:
            files.write_jsonl(self.out / "metrics.jsonl", steps)
            files.write_json(self.out / "report.json", report)
            header = "| round | pairs | loss | reward acc. | follower value | mass moved | win rate | seconds |"
            lines = [f"# sgpo run: {self.cfg.method}", "", header, "|" + "---|" * 8]
            for r in rows:
                cells = [r["round"], r["pairs"], r["loss"], r["reward_accuracy"], r["follower_value"]]
                cells += [r["mass_moved"], r["win_rate"], r["seconds"]]
                lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
            from sgpo.evaluation.report import run_plots

            lines += ["", *run_plots(self.out, rounds)]
            with files.atomic_path(self.out / "report.md") as tmp:
                tmp.write_text("\n".join(lines) + "\n")
        self.barrier()
        return self.out / "report.md"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _remove(path: Path) -> None:
    import shutil

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


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run (or continue) every round of ``cfg``; returns the report as a dict."""
    started = time.perf_counter()
    state = Run(cfg)
    state.prepare()
    first = 0 if cfg.round0.enabled or cfg.method == "dpo" else 1
    rounds = [state.run_round(t) for t in range(first, cfg.rounds + 1)]
    path = state.report(rounds, time.perf_counter() - started)
    report = files.read_json(cfg.output_dir + "/report.json")
    if state.main:
        for row in report["rounds"]:
            loss = _cell(row["loss"])
            acc = _cell(row["reward_accuracy"])
            extra = f", mass moved {_cell(row['mass_moved'])}" if row["mass_moved"] is not None else ""
            win = f", win rate {_cell(row['win_rate'])}" if row["win_rate"] is not None else ""
            print(f"[sgpo] round {row['round']}: {row['pairs']} pairs, loss {loss}, reward acc. {acc}{extra}{win}")
        print(f"[sgpo] done in {time.perf_counter() - started:.0f} s; report: {path}")
    if cfg.logging.report_to:
        state.accelerator.end_training()
    return report


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="run SSAPO / SPPO / DPO rounds end to end (resumable)",
        description=(
            "Run a recipe end to end: round 0 on the seed pairs, then generate -> annotate -> solve -> update -> "
            f"evaluate each round. Bundled configs: {', '.join(bundled_configs())}. Calling it again continues "
            "where it stopped. Under accelerate: accelerate launch -m sgpo run CONFIG."
        ),
    )
    parser.add_argument("config", help="a bundled config name or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. rounds=1")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    run(load_config(args.config, args.overrides))
    return 0
