"""The leader: one round of preference training with accelerate (SSAPO Alg. 1 step 4, and round 0's DPO).

The reference is the policy as it stands when the round starts (pi_t, the paper's code; the SFT model in round 0), so
its log-probs are computed once, before the first step, and no second copy of the model is kept for them. Every global
batch of ``train.batch_size`` pairs is split over the processes and then into micro-batches; each micro-batch's loss is
scaled so that the accumulated, all-reduced gradient is exactly the mean over the global batch, whatever the number of
processes: a 2-process run takes the same steps as a 1-process run.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import sgpo.ops
from sgpo.pipeline import zero
from sgpo.pipeline.scoring import SequenceScorer, collate, pack_rows


@dataclass
class LossSpec:
    """What the round trains: the loss of DESIGN 1.1 and its per-pair inputs."""

    loss_type: str
    beta: float
    label_smoothing: float = 0.0
    space: str = "probability"
    # per pair: SPPO win probabilities, the follower's (weights, shifts) rows, SPA's smoothing e_i
    chosen_win_prob: np.ndarray | None = None
    rejected_win_prob: np.ndarray | None = None
    worst_case_weights: np.ndarray | None = None
    worst_case_shifts: np.ndarray | None = None
    refinement_smoothing: np.ndarray | None = None
    # per pair: a weight on its loss (the follower's soft trim), and whether the worst case moved its mass (logged)
    pair_weights: np.ndarray | None = None
    attacked: np.ndarray | None = None


def spa_smoothing(margins: np.ndarray, beta: float, alpha: float, quantile: float) -> np.ndarray:
    """SPA's per-pair smoothing e_i = a (1 - c_i), c_i = 1[beta h_i > tau], tau the ``quantile`` of beta h (DESIGN 1.5).

    ``margins`` are the self-annotation margins h of the round's pairs, the confidence of the judge in each label.
    """
    scaled = beta * np.asarray(margins, dtype=np.float64)
    tau = float(np.quantile(scaled, quantile))
    return alpha * (1.0 - (scaled > tau).astype(np.float64))


def pair_losses(
    spec: LossSpec,
    idx: np.ndarray,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
) -> sgpo.ops.PreferenceLosses:
    """Per-pair losses of pairs ``idx`` (rows of the spec's arrays) from stacked chosen-over-rejected log-probs."""
    m = len(idx)
    chosen, rejected = logps[:m], logps[m:]
    ref_chosen, ref_rejected = ref_logps[:m], ref_logps[m:]
    kwargs: dict[str, Any] = {"loss_type": spec.loss_type, "beta": spec.beta, "label_smoothing": spec.label_smoothing}
    if spec.chosen_win_prob is not None:
        kwargs["chosen_win_prob"] = torch.as_tensor(spec.chosen_win_prob[idx], dtype=torch.float32)
        kwargs["rejected_win_prob"] = torch.as_tensor(spec.rejected_win_prob[idx], dtype=torch.float32)
    if spec.worst_case_weights is not None:
        weights = torch.as_tensor(spec.worst_case_weights[idx], dtype=torch.float32)
        shifts = torch.as_tensor(spec.worst_case_shifts[idx], dtype=torch.float32)
        kwargs["worst_case"] = (weights.to(logps.device), shifts.to(logps.device))
        kwargs["space"] = spec.space
    weights = torch.ones(m, dtype=torch.float32, device=logps.device)
    if spec.pair_weights is not None:
        weights = torch.as_tensor(spec.pair_weights[idx], dtype=torch.float32, device=logps.device)
    if spec.refinement_smoothing is None:
        if spec.pair_weights is not None:
            kwargs["weights"] = weights
        return sgpo.ops.preference_losses(chosen, rejected, ref_chosen, ref_rejected, **kwargs)
    # SPA refinement (DESIGN 1.5): (1 - e_i) * loss(y_w > y_l) + e_i * DPO loss with the pair flipped
    e = torch.as_tensor(spec.refinement_smoothing[idx], dtype=torch.float32, device=logps.device)
    kept = sgpo.ops.preference_losses(chosen, rejected, ref_chosen, ref_rejected, weights=weights * (1 - e), **kwargs)
    flipped = sgpo.ops.preference_losses(
        rejected, chosen, ref_rejected, ref_chosen, loss_type="sigmoid", beta=spec.beta, weights=weights * e
    )
    return sgpo.ops.PreferenceLosses(kept.losses + flipped.losses, kept.chosen_rewards, kept.rejected_rewards)


@dataclass
class TrainSettings:
    learning_rate: float
    epochs: int
    batch_size: int
    per_device_batch_size: int
    optimizer: str
    weight_decay: float
    scheduler: str
    warmup_ratio: float
    max_grad_norm: float | None
    seed: int
    packed: bool = True


class TrainState:
    """A round's training state at an optimizer-step boundary, in one safetensors file (nothing is unpickled).

    It holds the trainable parameters, the optimizer's per-parameter tensors and the torch RNG states; the metadata
    holds the step, the running metric sums and the shape of the round. The scheduler is not stored: it is a pure
    function of the step and is stepped forward on resume.
    """

    def __init__(self, path: str | Path, *, every: int | None, main: bool = True) -> None:
        self.path = Path(path)
        self.every = every
        self.main = main

    def saved_step(self) -> int | None:
        """The step the saved state was taken after, or None when none is saved."""
        if not self.path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return int(json.loads(f.metadata()["sgpo_train_state"])["step"])

    def due(self, step: int, total_steps: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step < total_steps

    def save(
        self, model: nn.Module, optimizer: Any, *, step: int, totals: dict[str, float], shape: dict[str, int]
    ) -> None:
        if not self.main:
            return
        from safetensors.torch import save_file

        from sgpo.pipeline.files import atomic_path

        tensors = {f"param.{name}": p.detach().cpu().contiguous() for name, p in _trainable(model)}
        extras: dict[str, dict[str, Any]] = {}
        for index, values in optimizer.state_dict()["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    extras.setdefault(str(index), {})[key] = value
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = state
        meta = {"step": step, "totals": totals, "shape": shape, "optim_extras": extras}
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata={"sgpo_train_state": json.dumps(meta)})

    def load(self, model: nn.Module, optimizer: Any, *, shape: dict[str, int]) -> tuple[int, dict[str, float]] | None:
        """Restore a saved state into ``model`` and ``optimizer``: (step, totals), or None when there is none."""
        if not self.path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            meta = json.loads(f.metadata()["sgpo_train_state"])
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        if meta["shape"] != shape:
            raise ValueError(
                f"{self.path}: saved for a round of {meta['shape']}, this round is {shape}; delete the file to retrain"
            )
        with torch.no_grad():
            for name, p in _trainable(model):
                p.copy_(tensors[f"param.{name}"].to(p.device, p.dtype))
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        for index, values in meta["optim_extras"].items():
            state.setdefault(int(index), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
        torch.set_rng_state(tensors["rng.cpu"])
        if torch.cuda.is_available():
            cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
        return int(meta["step"]), {k: float(v) for k, v in meta["totals"].items()}

    def remove(self) -> None:
        if self.main:
            self.path.unlink(missing_ok=True)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def make_optimizer(params: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    return torch.optim.RMSprop(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def global_batches(n: int, settings: TrainSettings, epoch: int) -> list[np.ndarray]:
    """The epoch's shuffled global batches of pair indices (the last may be smaller); the same on every process."""
    generator = torch.Generator().manual_seed(settings.seed * 1009 + epoch)
    order = torch.randperm(n, generator=generator).numpy()
    return [order[i : i + settings.batch_size] for i in range(0, n, settings.batch_size)]


def local_part(batch: np.ndarray, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's share of a global batch and the weight of each of its pairs in the gradient.

    A process left without a pair (a last batch smaller than the number of processes) still runs one with weight 0,
    because every process must take part in the gradient all-reduce.
    """
    part = np.array_split(batch, world)[rank]
    if len(part) == 0:
        return batch[:1], np.zeros(1)
    return part, np.ones(len(part))


def attacked_sums(spec: LossSpec, idx: np.ndarray, logps: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
    """After the backward of a micro-batch: its attacked pairs (weighted as in the batch), and the summed
    |d loss / d log pi| of the chosen and rejected responses of its attacked pairs and of all its pairs.

    A pair's gradient on the parameters is that derivative times the gradient of its log-probs, so its share of the
    summed derivatives is its share of the step's gradient, before the log-probs' own gradients weigh in."""
    zero = torch.zeros((), device=logps.device)
    if spec.attacked is None or logps.grad is None:
        return [zero, zero, zero]
    m = len(idx)
    per_pair = logps.grad[:m].abs() + logps.grad[m:].abs()
    attacked = torch.as_tensor(spec.attacked[idx], dtype=torch.float32, device=logps.device)
    return [(attacked * w).sum(), (per_pair * attacked).sum(), per_pair.sum()]


def train_round(
    accelerator: Any,
    model: nn.Module,
    pairs: Sequence[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]],
    ref_logps: np.ndarray,
    spec: LossSpec,
    settings: TrainSettings,
    *,
    pad_id: int,
    log: Callable[[dict[str, float]], None],
    progress: bool = True,
    state: TrainState | None = None,
) -> dict[str, float]:
    """Train ``model`` for ``settings.epochs`` over ``pairs`` ((chosen row, rejected row) encodings).

    ``ref_logps`` (2, n) holds the reference log-probs of the chosen and rejected responses. ``log`` receives each
    step's metrics (already reduced over processes). Returns the mean of each metric over the round. With ``state``,
    the training state is saved every ``state.every`` steps, and a saved state is resumed from: the steps after it
    are those an uninterrupted round takes.
    """
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    n = len(pairs)
    world, rank = accelerator.num_processes, accelerator.process_index
    steps_per_epoch = math.ceil(n / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, settings)
    scheduler = get_scheduler(
        settings.scheduler,
        optimizer,
        num_warmup_steps=math.ceil(settings.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    scorer = SequenceScorer(model)
    packed = settings.packed
    if packed and (reason := scorer.cannot_pack()):
        warnings.warn(f"train.packed: {reason}; one padded row per response instead", stacklevel=2)
        packed = False
    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    # DeepSpeed steps (and clips) inside the backward of a step's last micro-batch; optimizer.step() is then a no-op
    deepspeed = zero.is_deepspeed(accelerator)
    scorer.train()
    device = accelerator.device
    ref = torch.as_tensor(ref_logps, dtype=torch.float32)
    totals: dict[str, float] = {}
    step = 0
    shape = {"pairs": n, "total_steps": total_steps, "processes": world}
    resumed = state.load(model, optimizer, shape=shape) if state is not None else None
    if resumed is not None:
        step, totals = resumed
        with warnings.catch_warnings():
            # the schedule is a function of the step: replay it without optimizer steps
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                scheduler.step()
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="train",
        disable=not (progress and accelerator.is_main_process),
        unit="step",
    )
    for epoch in range(settings.epochs):
        for index, batch in enumerate(global_batches(n, settings, epoch)):
            if epoch * steps_per_epoch + index < step:
                continue
            part, weight = local_part(batch, rank, world)
            sums = torch.zeros(8, dtype=torch.float64)
            micro = [
                np.arange(i, min(i + settings.per_device_batch_size, len(part)))
                for i in range(0, len(part), settings.per_device_batch_size)
            ]
            for j, positions in enumerate(micro):
                idx, w = part[positions], torch.as_tensor(weight[positions], dtype=torch.float32, device=device)
                chosen, rejected = [pairs[i][0] for i in idx], [pairs[i][1] for i in idx]
                # one forward of the micro-batch with each prompt once (DESIGN 6), else one row per sequence
                rows = pack_rows(chosen, rejected, pad_id) if packed else None
                inputs = {k: v.to(device) for k, v in (rows or collate(chosen + rejected, pad_id)).items()}
                sync = j == len(micro) - 1
                context = accelerator.no_sync(scorer) if not (sync or deepspeed) else contextlib.nullcontext()
                with context, accelerator.autocast():
                    logps = scorer(**inputs).float()
                    if spec.attacked is not None:
                        logps.retain_grad()
                    ref_batch = torch.cat([ref[0, idx], ref[1, idx]]).to(device)
                    out = pair_losses(spec, idx, logps, ref_batch)
                    # sum over pairs / global batch size, times world: DDP's mean over processes then gives the mean
                    loss = (out.losses * w).sum() * world / len(batch)
                    if deepspeed:
                        zero.backward(accelerator, loss, last=sync)
                    else:
                        accelerator.backward(loss)
                margin = (out.chosen_rewards - out.rejected_rewards).float()
                sums += (
                    torch.stack(
                        [
                            (out.losses.detach().float() * w).sum(),
                            ((margin > 0).float() * w).sum(),
                            (margin * w).sum(),
                            (out.chosen_rewards.float() * w).sum(),
                            (out.rejected_rewards.float() * w).sum(),
                            *attacked_sums(spec, idx, logps, w),
                        ]
                    )
                    .double()
                    .cpu()
                )
            # clipping at infinity measures the norm without changing the gradient
            clip = settings.max_grad_norm if settings.max_grad_norm is not None else math.inf
            grad_norm = accelerator.clip_grad_norm_(scorer.parameters(), clip)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            reduced = accelerator.reduce(sums.to(device), reduction="sum").cpu() / len(batch)
            step += 1
            metrics = {
                "step": step,
                "epoch": epoch,
                "loss": float(reduced[0]),
                "reward_accuracy": float(reduced[1]),
                "reward_margin": float(reduced[2]),
                "chosen_reward": float(reduced[3]),
                "rejected_reward": float(reduced[4]),
                "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
                "learning_rate": float(lr),
            }
            if spec.attacked is not None:
                # the attacked pairs' share of the step's pairs, and of the loss's gradient on the log-probs
                metrics["attacked_pairs"] = float(reduced[5])
                metrics["attacked_grad_share"] = float(reduced[6] / reduced[7]) if reduced[7] > 0 else math.nan
            log(metrics)
            for key in (
                "loss",
                "reward_accuracy",
                "reward_margin",
                "grad_norm",
                "attacked_pairs",
                "attacked_grad_share",
            ):
                # a step without gradient (every pair trimmed away) has no share and adds nothing to the round mean
                if key in metrics and (key != "attacked_grad_share" or math.isfinite(metrics[key])):
                    totals[key] = totals.get(key, 0.0) + metrics[key] / total_steps
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['reward_accuracy']:.2f}")
            if state is not None and state.due(step, total_steps):
                state.save(model, optimizer, step=step, totals=totals, shape=shape)
                accelerator.wait_for_everyone()
    bar.close()
    accelerator.wait_for_everyone()
    totals["steps"] = step
    return totals
