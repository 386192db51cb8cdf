"""Cost of sgpo inside TRL's DPOTrainer: step time of SGPODPOTrainer configurations against trl.DPOTrainer.

    python benchmarks/bench_trl.py [--model tiny|SmolLM2-135M-Instruct|DIR] [--steps 12] [--batch 4] [--threads 1]

Every row trains the same model on the same pairs with the same seed; the time is the median optimizer step after the
first (warm-up) step, and the ratio is against ``trl.DPOTrainer`` with ``loss_type="sigmoid"`` in the same run. The
rows are run in turn, ``--repeats`` rounds, and each row keeps its best median, which damps a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sgpo
import torch
from datasets import Dataset
from sgpo.integrations.trl import SGPODPOConfig, SGPODPOTrainer
from sgpo.models import build_tiny_model, resolve_model
from transformers import AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hum old tunes".split()


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.times.append(time.perf_counter() - self.start)


def pairs(n: int, length: int) -> Dataset:
    """n pairs of ``length``-word responses; win probabilities and the follower's columns for the sppo/ssapo rows."""
    prompt = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8)) + ": " for i in range(n)]
    chosen = [" ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(length)) for i in range(n)]
    rejected = [" ".join(WORDS[(5 * i + 2 * j) % len(WORDS)] for j in range(length)) for i in range(n)]
    win = [0.5 + 0.4 * ((i * 7) % n) / n for i in range(n)]
    return Dataset.from_dict(
        {
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            "chosen_probs_win": win,
            "chosen_probs_lose": [1 - p for p in win],
            "worst_case_weights": [[1.0, 0.0] for _ in range(n)],
            "worst_case_shifts": [[0.01, 0.0] for _ in range(n)],
        }
    )


def run(make: Callable[[str], tuple[type, object]], model: str, data: Dataset, steps: int) -> float:
    trainer_cls, args = make(tempfile.mkdtemp(prefix="sgpo-bench-trl-"))
    args.max_steps = steps
    timer = StepTimer()
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(model),
        callbacks=[timer],
    )
    trainer.train()
    return statistics.median(timer.times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (a random Llama, hidden 128, 2 layers) or a model")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=24, help="words per response")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)

    if options.model == "tiny":
        model = str(build_tiny_model(tempfile.mkdtemp(prefix="sgpo-bench-model-"), hidden_size=128, num_layers=2))
        label = "tiny random Llama (hidden 128, 2 layers)"
    else:
        model = resolve_model(options.model)
        label = Path(model).name
    data = pairs(options.batch * options.steps, options.length)
    on_gpu = torch.cuda.is_available()
    common = dict(
        per_device_train_batch_size=options.batch,
        max_steps=options.steps,
        learning_rate=1e-5,
        logging_steps=options.steps,
        save_strategy="no",
        report_to=[],
        use_cpu=not on_gpu,
        bf16=on_gpu,
        disable_tqdm=True,
        seed=0,
    )

    def sgpo_row(**extra: object) -> Callable[[str], tuple[type, object]]:
        return lambda out: (SGPODPOTrainer, SGPODPOConfig(output_dir=out, **common, **extra))

    rows: dict[str, Callable[[str], tuple[type, object]]] = {
        "trl.DPOTrainer sigmoid (baseline)": lambda out: (DPOTrainer, DPOConfig(output_dir=out, **common)),
        "SGPODPOTrainer sigmoid": sgpo_row(loss_type="sigmoid"),
        "SGPODPOTrainer sigmoid, logps_backend=sgpo": sgpo_row(loss_type="sigmoid", logps_backend="sgpo"),
        "SGPODPOTrainer sppo (columns)": sgpo_row(loss_type="sppo"),
        "SGPODPOTrainer ssapo, follower per batch": sgpo_row(loss_type="ssapo"),
        "SGPODPOTrainer ssapo, worst case from columns": sgpo_row(loss_type="ssapo", ssapo_worst_case="columns"),
    }
    # one unmeasured pass of every row first: the first run in a process pays one-time costs (imports, allocator)
    for make in rows.values():
        run(make, model, data, 2)
    best: dict[str, float] = {}
    for _ in range(options.repeats):
        for name, make in rows.items():
            seconds = run(make, model, data, options.steps)
            best[name] = min(best.get(name, float("inf")), seconds)

    baseline = best["trl.DPOTrainer sigmoid (baseline)"]
    device = torch.cuda.get_device_name() if on_gpu else f"CPU ({platform.processor() or platform.machine()})"
    lines = [
        f"Model {label}, batch {options.batch} pairs, {options.length}-word responses, {device}, "
        f"torch {torch.__version__}, sgpo {sgpo.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores.",
        "",
        "| configuration | median step (ms) | ratio vs trl.DPOTrainer |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {1000 * t:.1f} | {t / baseline:.2f}x |" for name, t in best.items()]
    table = "\n".join(lines)
    print(table)
    if options.out:
        Path(options.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
