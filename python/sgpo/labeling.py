"""``sgpo label``: gold preference pairs from any judge.

Samples ``K`` responses per prompt from a model (each (prompt, sample) row with its own seed,
:func:`sgpo.generation.row_seed`), scores them with the judge and writes one pair per prompt, the best-scored sample
as ``chosen`` and the worst as ``rejected`` (prompts whose samples all score equal give none), as JSONL::

    {"index": 17, "prompt": ..., "chosen": ..., "rejected": ..., "chosen_score": 0.82, "rejected_score": 0.1,
     "scores": [...], "judge": "warmth"}

Work is done in chunks of prompts, each written atomically under ``OUT.parts/`` with the sampling settings it was made
with, so a killed ``sgpo label`` resumes without resampling a finished chunk (a changed judge or budget rescores or
extends what is there); the parts are removed once ``OUT`` is written.
Every sample and its score also go to ``OUT.samples.jsonl`` (``OUT`` without ``.jsonl``), so the same responses can
be judged again by another judge, and a summary to ``OUT.json``.
Every option is checked before any model loads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sgpo.pipeline import files


@dataclass(frozen=True)
class LabelSettings:
    """What a labelling run samples and how; the parts of a run made with other settings are not reused."""

    model: str
    judge: str
    judge_options: dict[str, Any] = field(default_factory=dict)
    prompts: str = "hidden"
    split: str = "train"
    samples: int = 4
    budget: int = 256
    max_new_tokens: int = 48
    temperature: float = 0.7
    seed: int = 0
    batch_size: int = 32
    chunk: int = 32

    def validate(self) -> LabelSettings:
        if self.samples < 2:
            raise ValueError(f"--samples: expected K >= 2 (a pair needs two responses), got {self.samples!r}")
        if self.budget < 1:
            raise ValueError(f"--budget: expected a number of prompts >= 1, got {self.budget!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens: expected an integer >= 1, got {self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature: expected a number > 0 (K samples must differ), got {self.temperature!r}")
        if self.batch_size < 1 or self.chunk < 1:
            raise ValueError(f"--batch-size, --chunk: expected integers >= 1, got {self.batch_size}, {self.chunk}")
        return self

    def sample_key(self, prompts: Sequence[Any], start: int) -> str:
        """What a chunk's samples depend on: the sampling settings and the chunk's prompts with their indices."""
        sampling = {k: getattr(self, k) for k in ("model", "samples", "max_new_tokens", "temperature", "seed")}
        sampling["batch_size"] = self.batch_size
        return _digest([sampling, start, list(prompts)])

    def judge_key(self) -> str:
        return _digest([self.judge, self.judge_options])


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def best_worst_pair(prompt: Any, samples: Sequence[str], scores: Sequence[float]) -> dict[str, Any] | None:
    """The gold pair of one prompt: its best- and worst-scored samples (the earlier one on ties), or None."""
    values = np.asarray(scores, dtype=np.float64)
    best, worst = int(np.argmax(values)), int(np.argmin(values))
    if values[best] == values[worst] or samples[best] == samples[worst]:
        return None
    return {
        "prompt": prompt,
        "chosen": samples[best],
        "rejected": samples[worst],
        "chosen_score": float(values[best]),
        "rejected_score": float(values[worst]),
    }


def label(settings: LabelSettings, out: str | Path, *, progress: bool = True, threads: int | None = None) -> dict:
    """Run (or resume) a labelling job; returns the summary also written to ``OUT`` + ``.json``."""
    from sgpo.evaluation.sources import load_prompts
    from sgpo.pipeline.judges import build_judge

    settings.validate()
    out = Path(out)
    if out.suffix != ".jsonl":
        raise ValueError(f"--out: expected a .jsonl file, got {str(out)!r}")
    prompts = load_prompts(settings.prompts, settings.budget, split=settings.split)
    judge = build_judge(settings.judge, dict(settings.judge_options), None, option="--judge")
    from sgpo.models import resolve_model

    resolve_model(settings.model)
    summary_path = out.with_name(out.name[: -len(".jsonl")] + ".json")
    if out.is_file() and summary_path.is_file() and files.read_json(summary_path).get("settings") == asdict(settings):
        # a finished job with these settings: nothing to redo
        return files.read_json(summary_path)
    parts = out.with_name(out.name + ".parts")
    n_chunks = (len(prompts) + settings.chunk - 1) // settings.chunk
    # samples of an earlier finished job with the same sampling settings (a smaller budget, another judge)
    known: dict[int, tuple[Any, list[str]]] = {}
    if summary_path.is_file() and samples_path(out).is_file():
        earlier = LabelSettings(**files.read_json(summary_path)["settings"])
        if earlier.sample_key([], 0) == settings.sample_key([], 0):
            known = {r["index"]: (r["prompt"], r["samples"]) for r in files.read_jsonl(samples_path(out))}
    model = tokenizer = None
    from tqdm.auto import tqdm

    chunks = []
    for c in tqdm(range(n_chunks), desc="label", unit="chunk", disable=not progress):
        path = parts / f"part_{c:05d}.json"
        lo, hi = c * settings.chunk, min(len(prompts), (c + 1) * settings.chunk)
        key = settings.sample_key(prompts[lo:hi], lo)
        part = files.read_json(path) if path.is_file() else {}
        if part.get("sample_key") != key:
            reused = {i: known[i][1] for i in range(lo, hi) if i in known and known[i][0] == prompts[i]}
            missing = [i for i in range(lo, hi) if i not in reused]
            if missing:
                if model is None:
                    model, tokenizer = _load(settings.model, threads)
                from sgpo.generation import generate_responses

                # per-row seeds: sampling only the missing prompts gives what sampling the whole chunk would
                fresh = generate_responses(
                    model,
                    tokenizer,
                    [prompts[i] for i in missing],
                    prompt_indices=missing,
                    num_samples=settings.samples,
                    max_new_tokens=settings.max_new_tokens,
                    temperature=settings.temperature,
                    seed=settings.seed,
                    batch_size=settings.batch_size,
                )
                reused.update(zip(missing, fresh, strict=True))
            # the samples are saved before the judge runs: a judge that fails does not cost the sampling
            part = {"sample_key": key, "samples": [reused[i] for i in range(lo, hi)]}
            files.write_json(path, part)
        if part.get("judge_key") != settings.judge_key():
            part.update(judge_key=settings.judge_key(), scores=_score(judge, settings, prompts[lo:hi], part["samples"]))
            files.write_json(path, part)
        chunks.append(part)
    rows, ties, all_scores, sampled = [], 0, [], []
    for c, part in enumerate(chunks):
        for offset, (samples, scores) in enumerate(zip(part["samples"], part["scores"], strict=True)):
            index = c * settings.chunk + offset
            all_scores.extend(scores)
            sampled.append({"index": index, "prompt": prompts[index], "samples": samples, "scores": scores})
            pair = best_worst_pair(prompts[index], samples, scores)
            if pair is None:
                ties += 1
                continue
            rows.append({"index": index, **pair, "scores": scores, "judge": settings.judge})
    # every sample, so the same responses can be scored again by another judge without sampling anew
    files.write_jsonl(samples_path(out), sampled)
    files.write_jsonl(out, rows)
    values = np.asarray(all_scores)
    summary = {
        "settings": asdict(settings),
        "prompts": len(prompts),
        "pairs": len(rows),
        "ties": ties,
        "mean_score": float(values.mean()),
        "mean_gap": float(np.mean([r["chosen_score"] - r["rejected_score"] for r in rows])) if rows else 0.0,
    }
    files.write_json(summary_path, summary)
    import shutil

    shutil.rmtree(parts, ignore_errors=True)
    return summary


def _score(judge: Any, settings: LabelSettings, prompts: Sequence[Any], samples: list[list[str]]) -> list[list[float]]:
    flat_prompts = [p for p, s in zip(prompts, samples, strict=True) for _ in s]
    scores = np.asarray(judge.scores(flat_prompts, [r for s in samples for r in s]), dtype=np.float64)
    if scores.shape != (len(flat_prompts),) or not np.all(np.isfinite(scores)):
        raise ValueError(
            f"--judge: {settings.judge} gave {scores.shape} scores (or non-finite ones) for "
            f"{len(flat_prompts)} responses"
        )
    return scores.reshape(len(samples), settings.samples).tolist()


def samples_path(out: str | Path) -> Path:
    """Where ``sgpo label --out OUT`` keeps every sample with its scores: ``OUT`` with ``.samples.jsonl``."""
    out = Path(out)
    return out.with_name(out.name[: -len(".jsonl")] + ".samples.jsonl")


def _load(model_name: str, threads: int | None) -> tuple[Any, Any]:
    import torch

    from sgpo.models import load_model, load_tokenizer

    if threads is not None:
        torch.set_num_threads(threads)
    return load_model(model_name, dtype="float32"), load_tokenizer(model_name)


def json_options(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as err:
        raise ValueError(f"--judge-options: expected a JSON object, got {text!r}: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"--judge-options: expected a JSON object, got {text!r}")
    return value


def _run(args: argparse.Namespace) -> int:
    settings = LabelSettings(
        model=args.model,
        judge=args.judge,
        judge_options=json_options(args.judge_options),
        prompts=args.prompts,
        split=args.split,
        samples=args.samples,
        budget=args.budget,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        chunk=args.chunk,
    )
    summary = label(settings, args.out, progress=not args.quiet, threads=args.threads)
    print(
        f"{summary['pairs']} pairs from {summary['prompts']} prompts ({summary['ties']} all-tie prompts skipped); "
        f"mean score {summary['mean_score']:.3f}, mean chosen-rejected gap {summary['mean_gap']:.3f} -> {args.out}"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "label",
        help="gold preference pairs from any judge: K samples per prompt, best vs worst (resumable)",
        description=__doc__.split("\n\n")[0] + " Best vs worst of K samples per prompt, as JSONL; resumable.",
    )
    parser.add_argument("model", metavar="MODEL", help="a model directory, hub id or SmolLM2-135M-Instruct")
    parser.add_argument("--judge", required=True, help="warmth | concreteness | structure | verifiable | "
                        "reward_model | package.module:Class (anything with scores(prompts, responses))")  # fmt: skip
    parser.add_argument("--judge-options", default=None, help="the judge's keyword arguments as a JSON object")
    parser.add_argument("--prompts", default="hidden", help="hidden | verifiable | a file with a 'prompt' field")
    parser.add_argument("--split", default="train", choices=("train", "test"), help="split of a generated track")
    parser.add_argument("--samples", type=int, default=LabelSettings.samples, help="K responses per prompt (>= 2)")
    parser.add_argument("--budget", type=int, default=LabelSettings.budget, help="prompts to label: the first N")
    parser.add_argument("--out", required=True, help="the pairs, FILE.jsonl (a summary goes to FILE.json)")
    parser.add_argument("--max-new-tokens", type=int, default=LabelSettings.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=LabelSettings.temperature)
    parser.add_argument("--seed", type=int, default=LabelSettings.seed)
    parser.add_argument("--batch-size", type=int, default=LabelSettings.batch_size)
    parser.add_argument("--chunk", type=int, default=LabelSettings.chunk, help="prompts per resumable part")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
