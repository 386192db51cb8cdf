"""``sgpo run``: rounds of generate -> annotate -> solve -> update -> evaluate, with files between the stages.

Run directory layout (every file written atomically; a stage whose output exists is skipped on the next call)::

    output_dir/config.yaml            the resolved config (a later call must match it)
    output_dir/round_0/               round 0: DPO on the gold seed pairs
    output_dir/round_<t>/prompts.jsonl, generations.jsonl     stages.generate
                         agreement.json, annotations.jsonl    stages.annotate
                         worst_case.safetensors + .json       stages.solve
                         reference_logps.safetensors, checkpoint/, train_log.jsonl, train_summary.json
                                                              stages.update (train_state.safetensors and
                                                              train_log.partial.jsonl while it trains)
                         eval_responses.jsonl                 stages.evaluate
                         metrics.json                         the round is done
    output_dir/metrics.jsonl, report.json, report.md          stages.report

A round reads like SSAPO's Algorithm 1 (:func:`run_round`); each stage's module names the files it reads and
writes, and :class:`~sgpo.pipeline.context.RunContext` holds what they share.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from sgpo.pipeline import distributed, files
from sgpo.pipeline.config import RunConfig
from sgpo.pipeline.context import RunContext
from sgpo.pipeline.policy import load_policy
from sgpo.pipeline.recipes import bundled_configs, load_config
from sgpo.pipeline.stages import annotate, evaluate, generate, report, solve, update
from sgpo.pipeline.tracking import round_scalars


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run (or continue) every round of ``cfg``; returns the report as a dict."""
    started = time.perf_counter()
    ctx = RunContext(cfg)
    ctx.prepare()
    first = 0 if cfg.round0.enabled or cfg.method == "dpo" else 1
    rounds = [run_round(ctx, t) for t in range(first, cfg.rounds + 1)]
    path = report.write_report(ctx, rounds, time.perf_counter() - started)
    summary = files.read_json(cfg.output_dir + "/report.json")
    if ctx.main:
        for row in summary["rounds"]:
            loss, acc = report.cell(row["loss"]), report.cell(row["reward_accuracy"])
            extra = f", mass moved {report.cell(row['mass_moved'])}" if row["mass_moved"] is not None else ""
            print(f"[sgpo] round {row['round']}: {row['pairs']} pairs, loss {loss}, reward acc. {acc}{extra}")
        for line in report.gold_summary(cfg, rounds):
            print(f"[sgpo] {line}")
        print(f"[sgpo] done in {time.perf_counter() - started:.0f} s; report: {path}")
    if cfg.logging.report_to:
        ctx.accelerator.end_training()
    return summary


def run_round(ctx: RunContext, t: int) -> dict[str, Any]:
    """Round ``t``: SSAPO Alg. 1 steps 2-4 from the policy pi_t (round 0: DPO on the gold seed pairs)."""
    metrics_path = ctx.round_dir(t) / "metrics.json"
    if ctx.done(metrics_path):
        return files.read_json(metrics_path)
    started = time.perf_counter()
    ctx.cached = []
    # seconds per stage in this call (a stage finished by an earlier call counts ~0)
    timings: dict[str, float] = {}
    metrics: dict[str, Any] = {"round": t, "timings": timings}
    pi_t = load_policy(ctx, ctx.checkpoint(t))
    if t == 0:
        pairs = seed_pairs(ctx, metrics)
        with timed(timings, "update"):
            metrics["train"] = update.update(ctx, 0, pi_t, pairs, {})
    else:
        prompts = new_prompts(ctx, t, metrics)
        heldout_agreement(ctx, t, pi_t, metrics)
        # step 2: sample K responses per new prompt from pi_t, and let the judge label each prompt's pair
        with timed(timings, "generate"):
            responses = generate.generate(ctx, t, pi_t, prompts)
        with timed(timings, "annotate"):
            pairs = annotate.annotate(ctx, t, pi_t, prompts, responses)
        record_annotation(ctx, t, pairs, metrics)
        # step 3: the follower's worst case in the epsilon-Wasserstein ball around the round's margins
        worst = None
        if ctx.cfg.method == "ssapo":
            worst = solve.solve(ctx, t, pairs)
            metrics["follower"] = {k: v for k, v in worst.items() if k not in ("xi", "weights", "shifts")}
        # step 4: the leader's update against that worst case, with pi_t as the reference
        extra, step_context = update.loss_inputs(ctx, pairs, worst)
        with timed(timings, "update"):
            metrics["train"] = update.update(ctx, t, pi_t, pairs, extra, step_context)
    if ctx.cfg.evaluate.prompts is not None:
        # the trained policy as saved, whether this call trained it or an earlier one did; the training engine (a
        # ZeRO-3 or FSDP model's partitions, the optimizer's state) is released first, not beside the reloaded policy
        del pi_t
        ctx.accelerator.free_memory()
        metrics["eval"] = evaluate.evaluate(ctx, t, load_policy(ctx, ctx.round_dir(t) / "checkpoint"))
    metrics["seconds"] = time.perf_counter() - started
    if ctx.cached:
        # stages this call copied from cache_dir; their timings are the copy's
        metrics["cached"] = list(ctx.cached)
    if ctx.main:
        files.write_json(metrics_path, metrics)
        if ctx.cfg.logging.report_to:
            # the round's line of report.json, at the global step where its training ended
            scalars = round_scalars(report.summary_row(metrics))
            ctx.accelerator.log(scalars, step=update.global_step(ctx, t + 1))
    ctx.barrier()
    ctx.accelerator.free_memory()
    return metrics


def seed_pairs(ctx: RunContext, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Round 0's gold seed pairs, their prompts fitted to ``data.max_prompt_length``."""
    from sgpo.pipeline.data import fit_prompts

    seed = ctx.data.seed_pairs
    prompts, kept, counts = fit_prompts(
        ctx.tokenizer, [p["prompt"] for p in seed], ctx.cfg.data, ctx.cfg.model.system_prompt
    )
    if not prompts:
        raise ValueError("data.max_prompt_length: every seed pair's prompt is too long and was skipped")
    pairs = [{**seed[i], "prompt": prompt} for i, prompt in zip(kept, prompts, strict=True)]
    metrics["data"] = counts
    ctx.say(
        f"round 0: {ctx.cfg.round0.loss_type} on {len(pairs)} seed pairs "
        f"({counts['truncated']} prompts truncated, {counts['skipped']} skipped)"
    )
    return pairs


def new_prompts(ctx: RunContext, t: int, metrics: dict[str, Any]) -> list[Any]:
    """Round ``t``'s new prompts; their counts go to the round's ``data`` metrics."""
    prompts, counts = generate.round_prompts(ctx, t)
    ctx.say(f"round {t}: {len(prompts)} prompts ({counts['truncated']} truncated, {counts['skipped']} skipped)")
    metrics["data"] = counts
    return prompts


def heldout_agreement(ctx: RunContext, t: int, model: Any, metrics: dict[str, Any]) -> None:
    """The annotator's agreement with held-out gold pairs before it labels the round (DESIGN 5: below about 65%,
    self-annotation trains on noise)."""
    held = annotate.heldout_agreement(ctx, t, model)
    if held is None:
        return
    metrics["annotator"] = {"heldout": held}
    if held["agreement"] is not None:
        ctx.say(
            f"round {t}: the annotator agrees with gold on {100 * held['agreement']:.1f}% "
            f"(± {100 * held['stderr']:.1f}) of {held['pairs']} held-out pairs"
        )


def record_annotation(ctx: RunContext, t: int, pairs: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """The round's labels in its metrics: counts, mean margin, and the gold judge's agreement with them."""
    annotation = files.read_json(ctx.round_dir(t) / "annotation_counts.json")
    if "gold_agreement" in annotation:
        measured = annotation.pop("gold_agreement")
        metrics.setdefault("annotator", {})["round"] = measured
        if measured["agreement"] is not None:
            ctx.say(
                f"round {t}: the gold judge agrees with {100 * measured['agreement']:.1f}% of the "
                f"{measured['pairs']} round labels it decides ({measured['ties']} ties)"
            )
    metrics["data"] = {**metrics["data"], **annotation, "mean_margin": float(np.mean([p["margin"] for p in pairs]))}


@contextlib.contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Record the seconds the block takes as ``timings[stage]``."""
    clock = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - clock


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
    distributed.leave_together()
    return 0
