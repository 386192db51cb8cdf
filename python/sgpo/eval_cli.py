"""``sgpo eval``: sample models on held-out prompts with fixed seeds, judge them against a baseline, write a report.

Every model is sampled with the same per-row seeds (:func:`sgpo.generation.row_seed`), so two models that agree on a
prompt give the same response and tie; responses are cached in ``OUTPUT/responses/`` keyed by the model's files and
the sampling settings, so a second ``sgpo eval`` (or the next round's) samples only what is new.

For each model against the baseline on the same prompts the report gives the mean gold score and the paired
per-prompt difference with a bootstrap 95% interval, the win rate with its interval (ties count 1/2), the LC win
rate, and the policy's KL from the baseline estimated on its own samples: the mean over prompts of
``log pi(y|x) - log pi_0(y|x)`` for the sampled ``y`` (sampled at the evaluation temperature, so it estimates the KL of
the tempered policies), with the reward-vs-KL frontier as ``frontier.png``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sgpo.evaluation.comparison import compare_responses
from sgpo.evaluation.report import ModelResult, RoundArtifacts, write_report
from sgpo.responses import EvalSettings, cached_logps, response_lengths, sample_model

DEFAULT_BASELINE = "SmolLM2-135M-Instruct"
DEFAULT_HIDDEN_JUDGE = "structure"


def load_eval_prompts(source: str, limit: int) -> list[object]:
    """``hidden``: the first ``limit`` open prompts of the hidden track's test split; ``test`` / ``train``: the first
    ``limit`` verifiable prompts of that split (seed 0, the same ones as the bundled ``prompts_test.jsonl``); otherwise
    a prompt file (its first ``limit`` prompts, or all of them if it holds fewer)."""
    from sgpo.evaluation.sources import TRACKS, load_prompts

    if source in TRACKS or source in ("train", "test"):
        return load_prompts(source, limit, split="test")
    return load_prompts(source, None)[:limit]


def annotator_agreement(
    candidates: Sequence[str],
    baseline: str,
    pairs: Sequence[dict],
    cache_dir: Path | None,
    settings: EvalSettings | None = None,
) -> list[dict[str, dict]]:
    """Each candidate as a self-annotator: the agreement with gold ``pairs`` of its implicit reward against
    ``baseline`` (the reference), for every variant of :class:`sgpo.pipeline.judges.ImplicitRewardJudge`, without
    and with the on-task gate."""
    from sgpo.evaluation.rubrics import on_task
    from sgpo.pipeline.annotator import implicit_reward_agreement

    prompts = [p["prompt"] for p in pairs] * 2
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    (reference,) = cached_logps(baseline, [(prompts, responses)], cache_dir, settings)
    lengths = response_lengths(baseline, prompts, responses).reshape(2, -1)
    # the on-task gate (judge.options.gate) reads the text alone: the same flags for every candidate
    flags = np.array([on_task(p, r) for p, r in zip(prompts, responses, strict=True)]).reshape(2, -1)
    out = []
    for model in candidates:
        (own,) = cached_logps(model, [(prompts, responses)], cache_dir, settings)
        out.append(implicit_reward_agreement(own.reshape(2, -1), reference.reshape(2, -1), lengths, flags))
    return out


def judge_responses(
    label: str,
    model: str,
    prompts: Sequence[object],
    responses: Sequence[str],
    baseline_responses: Sequence[str],
    judge: object | None = None,
    kl: np.ndarray | None = None,
) -> ModelResult:
    """Gold scores of both sides, their paired comparison, the win rate with its LC form, and the KL estimate."""
    from sgpo.evaluation.judge import VerifiableJudge

    judge = judge or VerifiableJudge()
    compared = compare_responses(judge, prompts, responses, baseline_responses)
    return ModelResult(
        label=label,
        model=str(model),
        win=compared.win,
        mean_score=float(compared.candidate_scores.mean()),
        baseline_mean_score=float(compared.baseline_scores.mean()),
        mean_chars=float(np.mean([len(r) for r in responses])),
        comparison=compared.paired,
        kl=None if kl is None else float(np.mean(kl)),
        kl_stderr=None if kl is None or len(kl) < 2 else float(np.std(kl, ddof=1) / np.sqrt(len(kl))),
        scores=compared.candidate_scores,
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
    judge: str | None = None,
    judge_options: dict | None = None,
    kl: bool = True,
    agreement_pairs: Sequence[dict] | None = None,
) -> list[ModelResult]:
    """Judge each ``(label, model)`` against ``baseline``; write ``report.md``, ``eval.json`` and the PNGs.

    ``judge`` is any judge name or ``package.module:Class`` (default: ``verifiable``, or ``structure`` on the hidden
    track). Responses (and their log-probs, for the KL estimate) are cached under ``cache_dir`` (default
    ``output_dir/responses``), keyed by the model's files, the prompts and the settings: evaluations that share a cache
    sample each model, the baseline included, once.
    """
    from sgpo.pipeline.judges import build_judge

    settings = (settings or EvalSettings()).validate()
    output_dir = Path(output_dir)
    judge = judge or (DEFAULT_HIDDEN_JUDGE if settings.prompts == "hidden" else "verifiable")
    gold = build_judge(judge, dict(judge_options or {}), None, option="--judge")
    prompts = load_eval_prompts(settings.prompts, settings.num_prompts)
    from sgpo.models import resolve_model

    # fail on a missing candidate before spending minutes sampling the baseline
    for _, model in candidates:
        resolve_model(model)
    cache_dir = Path(cache_dir) if cache_dir is not None else output_dir / "responses"
    baseline_responses = sample_model(baseline, prompts, settings, cache_dir)
    sampled = [sample_model(model, prompts, settings, cache_dir, logps=kl) for _, model in candidates]
    own = [s[1] for s in sampled] if kl else [None] * len(sampled)
    responses = [s[0] if kl else s for s in sampled]
    pairs = [(prompts, r) for r in responses]
    base = cached_logps(baseline, pairs, cache_dir, settings) if kl else [None] * len(sampled)
    results = [
        judge_responses(
            label,
            model,
            prompts,
            r,
            baseline_responses,
            gold,
            None if o is None else np.asarray(o) - b,
        )
        for (label, model), r, o, b in zip(candidates, responses, own, base, strict=True)
    ]
    if agreement_pairs:
        found = annotator_agreement([m for _, m in candidates], baseline, agreement_pairs, cache_dir, settings)
        for result, value in zip(results, found, strict=True):
            result.agreement = value
    write_report(
        output_dir,
        title=title,
        results=results,
        rounds=rounds,
        settings={**asdict(settings), "prompts used": len(prompts), "judge": judge},
        baseline=baseline,
        judge=judge,
    )
    summary = {
        "baseline": baseline,
        "judge": judge,
        "settings": asdict(settings),
        "baseline_mean_score": results[0].baseline_mean_score if results else None,
        "results": [r.to_dict() for r in results],
    }
    (output_dir / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    return results


def _run(args: argparse.Namespace) -> int:
    from sgpo.evaluation.runs import discover
    from sgpo.labeling import json_options
    from sgpo.pipeline.judges import check_judge_class

    settings = EvalSettings.for_prompts(
        args.prompts,
        num_prompts=args.num_prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
    ).validate()
    options = json_options(args.judge_options)
    if args.judge is not None:
        check_judge_class(args.judge, "--judge")
    load_eval_prompts(settings.prompts, settings.num_prompts)
    pairs = None
    if args.agreement_pairs is not None:
        from sgpo.tables import DefaultColumns, load_table, pairs_from_table

        try:
            pairs = pairs_from_table(load_table(args.agreement_pairs, kind="seed_pairs"), DefaultColumns(), "pairs")
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"--agreement-pairs: {err}") from err
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
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
        judge=args.judge,
        judge_options=options,
        kl=not args.no_kl,
        agreement_pairs=pairs,
    )
    for r in results:
        c = r.comparison
        kl = f"  KL {r.kl:.2f}" if r.kl is not None else ""
        if r.agreement:
            kl += f"  annotator agreement {100 * (r.agreement['sum']['agreement'] or 0):.1f}%"
        print(
            f"{r.label}: score {c.mean_score:.3f} vs {c.baseline_mean_score:.3f} (diff {c.difference.mean:+.3f} "
            f"[{c.difference.low:+.3f}, {c.difference.high:+.3f}])  win rate {100 * r.win.win_rate:.1f}% "
            f"[{100 * c.win_rate.low:.1f}, {100 * c.win_rate.high:.1f}]  LC {100 * r.win.lc_win_rate:.1f}%{kl}  "
            f"(n={r.win.n})"
        )
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
    parser.add_argument(
        "--prompts",
        default="test",
        help="hidden | test | train | a prompt file (JSONL/JSON/parquet/CSV, 'prompt' column)",
    )
    parser.add_argument(
        "--judge",
        default=None,
        help="the gold judge: verifiable | warmth | concreteness | structure | reward_model | package.module:Class "
        "(default: verifiable; structure for --prompts hidden)",
    )
    parser.add_argument("--judge-options", default=None, help="the judge's keyword arguments as a JSON object")
    parser.add_argument("--num-prompts", type=int, default=None, help="default 64; 256 for --prompts hidden")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 80; 48 for --prompts hidden")
    parser.add_argument("--no-kl", action="store_true", help="skip the KL estimate (no log-prob passes)")
    parser.add_argument(
        "--agreement-pairs",
        default=None,
        help="gold pairs (prompt, chosen, rejected): also score each model's implicit reward against the baseline "
        "as an annotator on them",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--temperature", type=float, default=EvalSettings.temperature)
    parser.add_argument("--seed", type=int, default=EvalSettings.seed)
    parser.add_argument(
        "--batch-size", type=int, default=EvalSettings.batch_size, help="prompts per batched generate call"
    )
    parser.add_argument(
        "--device", default=EvalSettings.device, help="auto (cuda when a GPU is present, else cpu) | cpu | cuda[:N]"
    )
    parser.add_argument(
        "--dtype",
        default=EvalSettings.dtype,
        help="auto (bfloat16 on a GPU, float32 on the CPU) | float32 | bfloat16 | float16",
    )
    parser.add_argument("--output", default=None, help="default: RUN_DIR/eval, or eval/<model name> for a model")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where sampled responses are kept (default OUTPUT/responses); share it to "
        "sample the baseline once across evaluations",
    )
    parser.set_defaults(func=_run)
