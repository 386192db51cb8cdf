"""The annotator sweep: DPO on a rubric's gold seed (the pilot's training), with the policy's implicit reward probed
as an annotator on the rubric's held-out gold pairs every ``--every`` optimizer steps.

Each job runs in its own process (the script again, with ``--job``) and writes its curve to the runs directory;
``sweep.json`` gathers the curves of every setting so far and ``sweep.md`` shows them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import bundle, render
from experiments.launch import Job, Launcher, launch
from experiments.options import stated_command, sweep_args
from experiments.pilot import BATCH_PAIRS, entry_name, epochs_for
from experiments.store import Results


def train_with_probes(args: argparse.Namespace, rubric: str, size: int, seed: int, path: Path) -> None:
    """One job: DPO on the seed, with the annotator's held-out agreement every ``args.every`` steps."""
    from sgpo.pipeline.annotator import implicit_reward_agreement
    from sgpo.pipeline.context import RunContext
    from sgpo.pipeline.data import fit_prompts
    from sgpo.pipeline.files import read_jsonl, write_json
    from sgpo.pipeline.policy import load_policy, logps, response_lengths
    from sgpo.pipeline.recipes import load_config
    from sgpo.pipeline.stages.update import update

    runs = Path(args.runs)
    pool = read_jsonl(bundle.bundled(f"hidden_{rubric}_pool.jsonl"))
    seed_path = bundle.write_seed(pool, size, seed, runs / "seeds" / f"{entry_name(rubric, size, seed)}.jsonl")
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
    heldout = read_jsonl(bundle.bundled(f"hidden_{rubric}_heldout.jsonl"))
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
            "all": {v: every[v]["agreement"] for v in render.AGREEMENT_VARIANTS},
            "on_task": {v: task[v]["agreement"] for v in render.AGREEMENT_VARIANTS},
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

    # the trainer logs every optimizer step through the accelerator: the probe rides on it
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


def settings(args: argparse.Namespace) -> str:
    """The training settings in a job's name: jobs of other settings are kept beside each other."""
    return f"steps{args.steps}_lr{args.learning_rate:g}_beta{args.beta:g}"


def summarise(entries: list[dict[str, Any]], out: Path, command: str) -> None:
    text = render.sweep_markdown(entries, command)
    (out / "sweep.md").write_text(text + "\n")
    print(text)


def main(argv: list[str], description: str = "") -> None:
    """``annotator_sweep.py``: ``argv`` is the whole command line, its script first (a job runs the script again)."""
    args = sweep_args(argv[1:], description)
    out, runs = Path(args.out), Path(args.runs)
    store = Results(out / "sweep.json")
    if args.table_only:
        summarise(list(store.data.values()), out, stated_command(argv))
        return
    (runs / "jobs").mkdir(parents=True, exist_ok=True)
    (runs / "seeds").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    tag = settings(args)
    if args.job:
        rubric, size, seed = args.job[0], int(args.job[1]), int(args.job[2])
        train_with_probes(args, rubric, size, seed, runs / "jobs" / f"{entry_name(rubric, size, seed)}_{tag}.json")
        return
    launcher = Launcher()
    jobs = [(r, n, s) for n in sorted(args.sizes) for r in args.rubrics for s in args.seeds]

    def path(rubric: str, size: int, seed: int) -> Path:
        return runs / "jobs" / f"{entry_name(rubric, size, seed)}_{tag}.json"

    def one(rubric: str, size: int, seed: int) -> None:
        command = [sys.executable, argv[0], "--job", rubric, str(size), str(seed)]
        command += [f"--steps={args.steps}", f"--every={args.every}", f"--learning-rate={args.learning_rate}"]
        command += [f"--beta={args.beta}", f"--runs={runs}", f"--out={out}"]
        launcher.call(command, runs / "jobs" / f"{path(rubric, size, seed).stem}.log")

    launch([Job(path(*j).stem, None, None if path(*j).is_file() else lambda _, j=j: one(*j)) for j in jobs], args.jobs)
    entries = [{**json.loads(path(*j).read_text()), "settings": tag} for j in jobs]
    store.save({f"{entry_name(e['rubric'], e['size'], e['seed'])}_{e['settings']}": e for e in entries})
    summarise(list(store.data.values()), out, stated_command(argv))
