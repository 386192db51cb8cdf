"""``sgpo eval``: sample models on held-out prompts with fixed seeds, judge them against a baseline, write a report.

Every model is sampled with the same per-row seeds (:func:`sgpo.generation.row_seed`), so two models that agree on a
prompt give the same response and tie; responses are cached in ``OUTPUT/responses/`` keyed by the model's files and
the sampling settings, so a second ``sgpo eval`` (or the next round's) samples only what is new.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sgpo.evaluation.judge import VerifiableJudge
from sgpo.evaluation.prompts import SPLITS, generate_prompts
from sgpo.evaluation.report import ModelResult, RoundArtifacts, write_report

DEFAULT_BASELINE = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class EvalSettings:
    """How responses are sampled for evaluation (the same for every model and the baseline)."""

    prompts: str = "test"
    num_prompts: int = 64
    max_new_tokens: int = 80
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def validate(self) -> EvalSettings:
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts: expected an integer >= 1, got {self.num_prompts!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected an integer >= 1, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature: expected a number >= 0, got {self.temperature!r}")
        return self


def load_eval_prompts(source: str, limit: int) -> list[str]:
    """``test`` / ``train``: the first ``limit`` generated prompts of that split (seed 0, the same ones as the bundled
    ``prompts_test.jsonl``); otherwise a JSONL file with a ``prompt`` field per line."""
    if source in SPLITS:
        return [spec.text for spec in generate_prompts(limit, source, seed=0)]
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompts: expected 'test', 'train' or a JSONL file, got {source!r} (no such file)")
    prompts = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            record = json.loads(line)
            if not isinstance(record.get("prompt"), str):
                raise ValueError(f"prompts: line {i + 1} of {path} has no string 'prompt' field")
            prompts.append(record["prompt"])
    if not prompts:
        raise ValueError(f"prompts: {path} holds no prompts")
    return prompts[:limit]


def _fingerprint(model: str, prompts: Sequence[str], settings: EvalSettings) -> str:
    """A key that changes when the model's files, the prompts or the sampling settings change."""
    from sgpo.models import resolve_model

    digest = hashlib.sha256()
    resolved = Path(resolve_model(model))
    digest.update(str(resolved.resolve() if resolved.exists() else resolved).encode())
    if resolved.is_dir():
        for f in sorted(resolved.iterdir()):
            if f.is_file():
                stat = f.stat()
                digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(json.dumps(asdict(settings), sort_keys=True).encode())
    digest.update("\n".join(prompts).encode())
    return digest.hexdigest()[:16]


def sample_model(model: str, prompts: Sequence[str], settings: EvalSettings, cache_dir: Path | None) -> list[str]:
    """One response per prompt from ``model`` (name or path), cached in ``cache_dir`` when given."""
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"{_fingerprint(model, prompts, settings)}.json"
        if cache.is_file():
            return json.loads(cache.read_text())["responses"]
    from sgpo.generation import generate_responses
    from sgpo.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model)
    policy = load_model(model, dtype="float32")
    responses = [
        rows[0]
        for rows in generate_responses(
            policy,
            tokenizer,
            list(prompts),
            num_samples=1,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=settings.seed,
            batch_size=settings.batch_size,
        )
    ]
    if cache is not None:
        from sgpo.pipeline.files import atomic_path

        # atomic: evaluations running side by side may share the cache
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps({"model": str(model), "responses": responses}, ensure_ascii=False))
    return responses


def judge_responses(
    label: str,
    model: str,
    prompts: Sequence[str],
    responses: Sequence[str],
    baseline_responses: Sequence[str],
    judge: VerifiableJudge | None = None,
) -> ModelResult:
    judge = judge or VerifiableJudge()
    win, scores, base_scores = judge.compare(prompts, responses, baseline_responses)
    return ModelResult(
        label=label,
        model=str(model),
        win=win,
        mean_score=float(scores.mean()),
        baseline_mean_score=float(base_scores.mean()),
        mean_chars=float(np.mean([len(r) for r in responses])),
    )


def evaluate_models(
    candidates: Sequence[tuple[str, str]],
    baseline: str,
    output_dir: str | Path,
    *,
    settings: EvalSettings | None = None,
    rounds: Sequence[RoundArtifacts] = (),
    title: str = "sgpo evaluation",
    cache_dir: str | Path | None = None,
) -> list[ModelResult]:
    """Judge each ``(label, model)`` against ``baseline``; write ``report.md``, ``eval.json`` and the PNGs.

    Responses are cached under ``cache_dir`` (default ``output_dir/responses``), keyed by the model's files, the
    prompts and the settings: evaluations that share a cache sample each model, the baseline included, once.
    """
    settings = (settings or EvalSettings()).validate()
    output_dir = Path(output_dir)
    prompts = load_eval_prompts(settings.prompts, settings.num_prompts)
    from sgpo.models import resolve_model

    # fail on a missing candidate before spending minutes sampling the baseline
    for _, model in candidates:
        resolve_model(model)
    cache_dir = Path(cache_dir) if cache_dir is not None else output_dir / "responses"
    baseline_responses = sample_model(baseline, prompts, settings, cache_dir)
    judge = VerifiableJudge()
    results = [
        judge_responses(
            label, model, prompts, sample_model(model, prompts, settings, cache_dir), baseline_responses, judge
        )
        for label, model in candidates
    ]
    write_report(
        output_dir,
        title=title,
        results=results,
        rounds=rounds,
        settings={**asdict(settings), "prompts used": len(prompts)},
        baseline=baseline,
    )
    summary = {
        "baseline": baseline,
        "settings": asdict(settings),
        "results": [
            {"label": r.label, "model": r.model, "mean_score": r.mean_score, **r.win.to_dict()} for r in results
        ],
    }
    (output_dir / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    return results


def _run(args: argparse.Namespace) -> int:
    from sgpo.evaluation.runs import discover

    settings = EvalSettings(
        prompts=args.prompts,
        num_prompts=args.num_prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    found = discover(args.target)
    baseline = args.baseline or found.initial_model or DEFAULT_BASELINE
    output = Path(args.output) if args.output else found.default_output
    results = evaluate_models(
        found.candidates,
        baseline,
        output,
        settings=settings,
        rounds=found.rounds,
        title=found.title,
        cache_dir=args.cache_dir,
    )
    for r in results:
        print(f"{r.label}: win rate {100 * r.win.win_rate:.1f}%  LC {100 * r.win.lc_win_rate:.1f}%  (n={r.win.n})")
    print(f"report: {output / 'report.md'}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="judge a run's models (or one model) against a baseline on held-out prompts; writes report.md",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("target", metavar="RUN_DIR_OR_MODEL", help="a run directory of `sgpo run`, or a model")
    parser.add_argument("--baseline", default=None, help="default: the run's initial model, else SmolLM2-135M-Instruct")
    parser.add_argument("--prompts", default="test", help="test | train | a JSONL file with a 'prompt' field")
    parser.add_argument("--num-prompts", type=int, default=EvalSettings.num_prompts)
    parser.add_argument("--max-new-tokens", type=int, default=EvalSettings.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=EvalSettings.temperature)
    parser.add_argument("--seed", type=int, default=EvalSettings.seed)
    parser.add_argument("--batch-size", type=int, default=EvalSettings.batch_size)
    parser.add_argument("--output", default=None, help="default: RUN_DIR/eval, or eval/<model name> for a model")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where sampled responses are kept (default OUTPUT/responses); share it to "
        "sample the baseline once across evaluations",
    )
    parser.set_defaults(func=_run)
