"""How good a self-annotator does a gold seed make? Held-out agreement of the implicit reward while DPO trains.

For each rubric, seed size N and seed s: DPO on the first N pairs of a seeded permutation of the rubric's bundled
gold pool (the recipe ``hidden`` with round 0 only, as ``benchmarks/pilot_hidden.py`` trains it), and every
``--every`` optimizer steps the policy's implicit reward ``log pi - log pi_0`` (summed, per-token mean and
length-debiased) as an annotator on the rubric's held-out gold pairs: on all of them, and on the pairs whose both
answers pass the on-task gate (gold score > 0), so a low number can be told apart from gate failures the implicit
reward does not see. It chooses the rubric, seed size and steps of the hidden track before any evaluation runs.
Writes ``sweep.json`` and ``sweep.md`` to ``--out``.

    python benchmarks/annotator_sweep.py --rubrics structure concreteness --sizes 16 256 --seeds 1

Jobs run side by side as separate processes with one thread each; a finished job is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pilot_hidden import BATCH_PAIRS, bundled, entry_name, epochs_for, write_seed  # noqa: E402

VARIANTS = ("sum", "mean", "length_debiased")


def train_with_probes(args: argparse.Namespace, rubric: str, size: int, seed: int, path: Path) -> None:
    """One job: DPO on the seed, with the annotator's held-out agreement every ``args.every`` steps."""
    from sgpo.pipeline.annotator import implicit_reward_agreement
    from sgpo.pipeline.config import load_config
    from sgpo.pipeline.context import RunContext
    from sgpo.pipeline.data import fit_prompts
    from sgpo.pipeline.files import read_jsonl, write_json
    from sgpo.pipeline.policy import load_policy, logps, response_lengths
    from sgpo.pipeline.stages.update import update

    runs = Path(args.runs)
    pool = read_jsonl(bundled(f"hidden_{rubric}_pool.jsonl"))
    seed_path = write_seed(pool, size, seed, runs / "seeds" / f"{entry_name(rubric, size, seed)}.jsonl")
    epochs = epochs_for(args.steps, size)
    overrides = [
        "method=dpo",
        "rounds=0",
        "train.loss_type=sigmoid",
        f"data.seed_pairs={seed_path}",
        "data.max_seed_pairs=null",
        f"seed={seed}",
        f"round0.learning_rate={args.learning_rate}",
        f"round0.epochs={epochs}",
        f"train.beta={args.beta}",
        f"train.batch_size={BATCH_PAIRS}",
        "evaluate.prompts=null",
        "judge.agreement_pairs=null",
        "threads=1",
        "logging.progress=false",
        f"output_dir={path.with_suffix('')}",
    ]
    run = RunContext(load_config("hidden", overrides))
    run.prepare()
    model = load_policy(run, None)
    heldout = read_jsonl(bundled(f"hidden_{rubric}_heldout.jsonl"))
    prompts = [p["prompt"] for p in heldout] * 2
    responses = [p["chosen"] for p in heldout] + [p["rejected"] for p in heldout]
    on_task = np.array([p["rejected_score"] > 0 for p in heldout])
    reference = logps(run, model, prompts, responses, sft=True).reshape(2, -1)
    lengths = response_lengths(run, prompts, responses).astype(float).reshape(2, -1)
    curve: list[dict[str, Any]] = []

    def probe(step: int) -> None:
        policy = logps(run, model, prompts, responses).reshape(2, -1)
        every = implicit_reward_agreement(policy, reference, lengths)
        task = implicit_reward_agreement(policy[:, on_task], reference[:, on_task], lengths[:, on_task])
        point = {
            "step": step,
            "all": {v: every[v]["agreement"] for v in VARIANTS},
            "on_task": {v: task[v]["agreement"] for v in VARIANTS},
            # log pi - log pi_0 on the gold-chosen held-out answers: how far the policy moved
            "mean_chosen_ratio": float(np.mean(policy[0] - reference[0])),
        }
        curve.append(point)
        print(f"{rubric} n{size} s{seed} step {step}: {point['all']} on-task {point['on_task']}", flush=True)

    logger = run.accelerator.log

    def log(values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        logger(values, step=step, **kwargs)
        done = int(values.get("train/step", 0))
        if done and (done % args.every == 0):
            probe(done)

    run.accelerator.log = log  # type: ignore[method-assign]
    probe(0)
    began = time.perf_counter()
    seed_pairs = run.data.seed_pairs
    fitted, kept, _ = fit_prompts(run.tokenizer, [p["prompt"] for p in seed_pairs], run.cfg.data, None)
    update(run, 0, model, [{**seed_pairs[i], "prompt": q} for i, q in zip(kept, fitted, strict=True)], {})
    write_json(
        path,
        {
            "rubric": rubric,
            "size": size,
            "seed": seed,
            "epochs": epochs,
            "heldout_pairs": len(heldout),
            "on_task_pairs": int(on_task.sum()),
            "train_seconds": time.perf_counter() - began,
            "curve": curve,
        },
    )


def summarise(entries: list[dict[str, Any]], out: Path) -> None:
    lines = [
        "# Annotator sweep: held-out agreement of the seed-trained implicit reward",
        "",
        "Agreement % with gold on the rubric's held-out pairs (all / pairs whose both answers are on-task), for the "
        "summed, per-token mean and length-debiased implicit reward, after each number of DPO steps.",
        "",
        "| rubric | seed pairs | seed | step | all: sum / mean / debiased | on-task: sum / mean / debiased | "
        "log-ratio of chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in sorted(entries, key=lambda e: (e["rubric"], e["size"], e["seed"])):
        for p in e["curve"]:
            cells = [" / ".join(f"{100 * (p[part][v] or 0):.0f}" for v in VARIANTS) for part in ("all", "on_task")]
            lines.append(
                f"| {e['rubric']} ({e['heldout_pairs']}, {e['on_task_pairs']} on-task) | {e['size']} | {e['seed']} | "
                f"{p['step']} | {cells[0]} | {cells[1]} | {p['mean_chosen_ratio']:+.1f} |"
            )
    lines += ["", f"Command: `{' '.join(sys.argv)}`"]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rubrics", nargs="+", default=["warmth", "concreteness", "structure"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--every", type=int, default=32, help="steps between agreement probes")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="bench_results/annotator_sweep")
    parser.add_argument("--runs", default="runs/annotator_sweep")
    parser.add_argument("--job", nargs=3, metavar=("RUBRIC", "SIZE", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    (runs / "jobs").mkdir(parents=True, exist_ok=True)
    (runs / "seeds").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"steps{args.steps}_lr{args.learning_rate:g}_beta{args.beta:g}"
    if args.job:
        rubric, size, seed = args.job[0], int(args.job[1]), int(args.job[2])
        train_with_probes(args, rubric, size, seed, runs / "jobs" / f"{entry_name(rubric, size, seed)}_{tag}.json")
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    jobs = [(r, n, s) for n in sorted(args.sizes) for r in args.rubrics for s in args.seeds]

    def one(job: tuple[str, int, int]) -> dict[str, Any]:
        rubric, size, seed = job
        path = runs / "jobs" / f"{entry_name(rubric, size, seed)}_{tag}.json"
        if not path.is_file():
            command = [sys.executable, __file__, "--job", rubric, str(size), str(seed)]
            command += [f"--steps={args.steps}", f"--every={args.every}", f"--learning-rate={args.learning_rate}"]
            command += [f"--beta={args.beta}", f"--runs={runs}", f"--out={out}"]
            with (runs / "jobs" / f"{path.stem}.log").open("a") as log:
                done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"job {job} failed; see {runs / 'jobs' / (path.stem + '.log')}")
        return {**json.loads(path.read_text()), "settings": tag}

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        entries = list(pool.map(one, jobs))
    results_path = out / "sweep.json"
    previous = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for e in entries:
        previous[f"{entry_name(e['rubric'], e['size'], e['seed'])}_{e['settings']}"] = e
    results_path.write_text(json.dumps(previous, indent=2) + "\n")
    summarise(list(previous.values()), out)


if __name__ == "__main__":
    main()
