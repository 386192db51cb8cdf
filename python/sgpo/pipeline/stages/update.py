"""Update (SSAPO Alg. 1 step 4): one round of the leader from the reference pi_t; round 0 is DPO on the seed pairs.

Reads the round's pairs (``round_<t>/annotations.jsonl``, or the gold seed pairs in round 0), the follower's worst
case (``worst_case.safetensors``, ssapo rounds) and the policy round ``t`` starts from. Writes, in ``round_<t>/``:

    reference_logps.safetensors   pi_t's log-probs of every chosen and rejected response, before the first step
    train_state.safetensors       while training: the training state every train.save_steps (train_state/ under
    train_log.partial.jsonl       FSDP) and the step rows so far; a killed round resumes from them
    checkpoint/                   the trained policy (adapter or full weights, with the tokenizer)
    train_log.jsonl               one row per optimizer step (round, global_step, loss, margins, ...)
    train_summary.json            the round's mean metrics: its presence with checkpoint/ marks the stage done
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from sgpo.pipeline import distributed, files, policy, zero
from sgpo.pipeline.context import RunContext


def margin_drop_weights(margins: np.ndarray, k: int) -> np.ndarray:
    """Weight 0 for the ``k`` lowest of ``margins`` (ties broken by position), 1 for the rest: the plain baseline of
    the follower as a detector of wrong labels, which ranks pairs by margin and solves nothing."""
    if not 0 <= k <= margins.size:
        raise ValueError(f"k: expected an integer in [0, {margins.size}] (the number of margins), got {k!r}")
    weights = np.ones(margins.size)
    weights[np.argsort(margins, kind="stable")[:k]] = 0.0
    return weights


def loss_inputs(
    ctx: RunContext, pairs: list[dict[str, Any]], worst: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, float]]:
    """What the round's loss needs per pair (the follower's worst case and SPA's smoothing, or SPPO's win
    probabilities), and the follower's answer to repeat on every step row of the training log."""
    from sgpo.follower import ATTACKED, moved_mass
    from sgpo.pipeline.leader import spa_smoothing

    if worst is None:
        chosen = np.asarray([p["chosen_win_prob"] for p in pairs])
        return {"chosen_win_prob": chosen, "rejected_win_prob": np.asarray([p["rejected_win_prob"] for p in pairs])}, {}
    moved = moved_mass(worst["weights"], worst["shifts"])
    # the pairs the worst case moves mass on: the training log follows their share of the loss's gradient
    extra: dict[str, Any] = {"attacked": moved > ATTACKED}
    if ctx.cfg.follower.apply == "soft_trim":
        # the follower's reweighting without its shifts: each pair's loss times the mass the worst case leaves it
        extra["pair_weights"] = np.clip(1.0 - moved, 0.0, 1.0)
    elif ctx.cfg.follower.apply == "margin_drop":
        margins = np.asarray([p["margin"] for p in pairs], dtype=np.float64)
        extra["pair_weights"] = margin_drop_weights(margins, int(extra["attacked"].sum()))
        extra["attacked"] = extra["pair_weights"] == 0.0
    else:
        extra.update(worst_case_weights=worst["weights"], worst_case_shifts=worst["shifts"])
    r = ctx.cfg.refinement
    if r.enabled:
        margins = np.asarray([p["margin"] for p in pairs], dtype=np.float64)
        extra["refinement_smoothing"] = spa_smoothing(margins, ctx.cfg.train.beta, r.alpha, r.quantile)
    # the round's follower answer repeated on each step row, so one metrics file tells the whole story
    context = {f"follower_{k}": float(worst[k]) for k in ("mass_moved", "transport") if k in worst}
    if worst.get("value"):
        context["follower_value"] = float(np.mean(worst["value"]))
    return extra, context


def update(
    ctx: RunContext,
    t: int,
    model: Any,
    pairs: list[dict[str, Any]],
    spec_extra: dict[str, Any],
    step_context: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Train round ``t`` (resuming a saved training state) and save its checkpoint; returns the round's summary."""
    from safetensors.numpy import load_file, save_file

    from sgpo.pipeline.leader import LossSpec, TrainSettings, TrainState, train_round

    round_dir = ctx.round_dir(t)
    summary_path = round_dir / "train_summary.json"
    if ctx.done(summary_path, round_dir / "checkpoint"):
        return files.read_json(summary_path)
    train = ctx.cfg.train
    r0 = ctx.cfg.round0
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
        seed=ctx.cfg.seed * 1000 + t,
        packed=train.packed,
    )
    prompts = [p["prompt"] for p in pairs]
    chosen = policy.encode_rows(ctx, prompts, [p["chosen"] for p in pairs])
    rejected = policy.encode_rows(ctx, prompts, [p["rejected"] for p in pairs])
    ref_path = round_dir / "reference_logps.safetensors"
    if not ctx.done(ref_path):
        # reference log-probs once per round, from the policy before its first step (precompute_ref_log_probs)
        if all("ref_chosen_logps" in p for p in pairs):
            ref = np.array([[p["ref_chosen_logps"] for p in pairs], [p["ref_rejected_logps"] for p in pairs]])
        else:
            ref = (
                policy.sharded_pair_logps(ctx, model, chosen, rejected)
                if train.packed
                else policy.sharded_logps(ctx, model, chosen + rejected).reshape(2, len(pairs))
            )
        if ctx.main:
            with files.atomic_path(ref_path) as tmp:
                save_file({"ref_logps": ref}, str(tmp))
        ctx.barrier()
    ref = load_file(str(ref_path))["ref_logps"]
    spec = LossSpec(
        loss_type=loss_type,
        beta=beta,
        label_smoothing=0.0 if not first and loss_type in ("ssapo", "sppo") else train.label_smoothing,
        space=ctx.cfg.follower.space,
        **spec_extra,
    )
    step_context = step_context or {}
    partial = round_dir / "train_log.partial.jsonl"
    # a training state saved mid-round (train.save_steps) is resumed from; the step rows up to it are kept
    every = train.save_steps
    if every and zero.is_deepspeed(ctx.accelerator):
        # ZeRO's partitioned state is saved through its engine, which this loop does not drive; a round reruns
        every = None
    if distributed.is_sharded(ctx.accelerator):
        state: Any = distributed.ShardedTrainState(round_dir / "train_state", every=every, main=ctx.main)
    else:
        state = TrainState(round_dir / "train_state.safetensors", every=every, main=ctx.main)
    saved_step = state.saved_step()
    steps: list[dict[str, Any]] = []
    if saved_step and partial.is_file():
        steps = [row for row in files.read_jsonl(partial) if row["step"] <= saved_step]
    if ctx.main:
        files.write_jsonl(partial, steps)
    ctx.barrier()
    offset = global_step(ctx, t)

    def log(metrics: dict[str, Any]) -> None:
        row = {"round": t, "global_step": offset + metrics["step"], **metrics, **step_context}
        steps.append(row)
        if ctx.main:
            with open(partial, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            ctx.accelerator.log({f"train/{k}": v for k, v in metrics.items()}, step=row["global_step"])

    import torch

    torch.manual_seed(settings.seed)
    summary = train_round(
        ctx.accelerator,
        model,
        list(zip(chosen, rejected, strict=True)),
        ref,
        spec,
        settings,
        pad_id=ctx.tokenizer.pad_token_id,
        log=log,
        progress=ctx.cfg.logging.progress,
        state=state,
    )
    summary.update(loss_type=loss_type, beta=beta, pairs=len(pairs), learning_rate=settings.learning_rate)
    policy.save_checkpoint(ctx, model, t)
    if ctx.main:
        files.write_jsonl(round_dir / "train_log.jsonl", steps)
        partial.unlink(missing_ok=True)
        files.write_json(summary_path, summary)
        state.remove()
    ctx.barrier()
    return summary


def global_step(ctx: RunContext, t: int) -> int:
    """Optimizer steps of the rounds before ``t`` (the training log counts steps over the whole run)."""
    total = 0
    for previous in range(t):
        path = ctx.round_dir(previous) / "train_summary.json"
        if path.is_file():
            total += int(files.read_json(path)["steps"])
    return total
