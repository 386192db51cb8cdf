"""Make the bundled hidden-preference data in ``python/sgpo/data/`` (fixed seeds; rerunning reproduces the files).

One ``sgpo label`` job samples 4 SmolLM2-135M-Instruct responses (48 new tokens, temperature 0.7) for each of the
first ``--pool-prompts + --heldout-prompts`` open prompts of the hidden track's train split; every rubric of
:mod:`sgpo.evaluation.rubrics` then judges the same samples, and for each rubric R the script writes

- ``hidden_R_pool.jsonl``: the gold pairs (best vs worst of 4 under R) of the first ``--pool-prompts`` prompts, in a
  seeded random order, so the first N rows are a random N-pair seed and a larger N contains a smaller one;
- ``hidden_R_heldout.jsonl``: the gold pairs of the next ``--heldout-prompts`` prompts, which nothing trains on: the
  annotator's agreement with gold is measured on them (``judge.agreement_pairs``);

and, for every rubric alike,

- ``hidden_prompts.jsonl``: unlabelled prompts for the self-annotation rounds (``round`` = 1, 2, ...), the train
  prompts after the labelled ones;
- ``hidden_dev_prompts.jsonl``: ``--dev-prompts`` train prompts after the rounds' ones, which neither labelling nor
  any round sees: the pilot (``benchmarks/pilot_hidden.py``) chooses settings on them, so the test split stays unseen
  until the tables;
- ``hidden_manifest.json``: the settings and counts.

    python scripts/make_hidden_data.py           # about 15 minutes on 2 idle CPU cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sgpo.evaluation.hidden import hidden_prompts
from sgpo.evaluation.rubrics import RUBRICS, RubricJudge
from sgpo.labeling import LabelSettings, best_worst_pair, label, samples_path
from sgpo.pipeline.files import read_jsonl, write_jsonl

DATA_DIR = Path(__file__).resolve().parents[1] / "python" / "sgpo" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--out", default=str(DATA_DIR))
    parser.add_argument("--work-dir", default=".cache/hidden")
    parser.add_argument("--pool-prompts", type=int, default=416)
    parser.add_argument("--heldout-prompts", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-prompts", type=int, default=128)
    parser.add_argument("--dev-prompts", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    began = time.time()
    labelled = args.pool_prompts + args.heldout_prompts
    settings = LabelSettings(
        model=args.model,
        judge="warmth",
        prompts="hidden",
        split="train",
        samples=args.samples,
        budget=labelled,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    work = Path(args.work_dir)
    label(settings, work / "pool.jsonl", threads=args.threads)
    sampled = read_jsonl(samples_path(work / "pool.jsonl"))
    out = Path(args.out)
    counts: dict[str, dict[str, int]] = {}
    for rubric in RUBRICS:
        judge = RubricJudge(rubric)
        pool, heldout = [], []
        for row in sampled:
            scores = judge.scores([row["prompt"]] * len(row["samples"]), row["samples"])
            pair = best_worst_pair(row["prompt"], row["samples"], scores)
            if pair is not None:
                (pool if row["index"] < args.pool_prompts else heldout).append({"index": row["index"], **pair})
        order = np.random.default_rng(args.seed).permutation(len(pool))
        write_jsonl(out / f"hidden_{rubric}_pool.jsonl", [pool[int(i)] for i in order])
        write_jsonl(out / f"hidden_{rubric}_heldout.jsonl", heldout)
        counts[rubric] = {"pool_pairs": len(pool), "heldout_pairs": len(heldout)}
    unlabelled = args.rounds * args.round_prompts
    train = hidden_prompts(labelled + unlabelled + args.dev_prompts, "train", seed=0)
    rounds, dev = train[labelled : labelled + unlabelled], train[labelled + unlabelled :]
    write_jsonl(
        out / "hidden_prompts.jsonl",
        [{"round": 1 + i // args.round_prompts, "prompt": p} for i, p in enumerate(rounds)],
    )
    write_jsonl(out / "hidden_dev_prompts.jsonl", [{"prompt": p} for p in dev])
    manifest = {
        "model": args.model,
        "label": {k: v for k, v in vars(settings).items() if k not in ("judge", "judge_options")},
        "pool_prompts": args.pool_prompts,
        "heldout_prompts": args.heldout_prompts,
        "round_prompts": {str(t + 1): args.round_prompts for t in range(args.rounds)},
        "dev_prompts": args.dev_prompts,
        "pairs": counts,
        "command": "python scripts/make_hidden_data.py",
    }
    (out / "hidden_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(counts), f"{time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
