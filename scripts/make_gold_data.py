"""Make the bundled benchmark data in ``python/sgpo/data/`` (fixed seeds; rerunning reproduces the same files).

Samples responses from SmolLM2-135M-Instruct with :func:`sgpo.generation.generate_responses` on generated train prompts,
scores them with :class:`sgpo.evaluation.VerifiableJudge`, and writes

- ``prompts_test.jsonl``: the held-out evaluation prompts (test split of the task pairs);
- ``gold_pool.jsonl``: every gold-labelled pair, one per prompt: the best-scored sample is chosen, the worst rejected
  (prompts whose samples all tie give no pair). ``round`` 0 is the labelled pool the seed is drawn from; ``round`` t
  labels the first ``--gold-round-prompts`` prompts of round t, which the self-annotating runs see unlabelled: the
  "100% gold labels" baseline trains on the seed plus these;
- ``default_seed_pairs.jsonl``: the gold seed (the pipeline's ``data.seed_pairs: default``): 16 pairs drawn from
  the round-0 pool, 3.6% of the 448 train prompts (pool and rounds), as in the SSAPO paper (2K gold labels of
  UltraFeedback's 60K prompts, 3.3%);
- ``default_prompts.jsonl``: train prompts without labels for the self-annotation rounds (``round`` = 1, 2, ...; the
  pipeline's default ``data.prompts``);
- ``manifest.json``: the settings and counts.

Generation is resumable: finished chunks of samples are kept in ``--work-dir`` and reused.

    python scripts/make_gold_data.py            # the bundled data (about 15 minutes on one CPU core)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sgpo.evaluation import VerifiableJudge, generate_prompts
from sgpo.pipeline.files import write_jsonl

DATA_DIR = Path(__file__).resolve().parents[1] / "python" / "sgpo" / "data"


def sample_pool(args: argparse.Namespace, prompts: list[str], indices: list[int]) -> list[list[str]]:
    """Samples for each prompt (seeded by its index in the train prompts), in chunks that are cached on disk."""
    import torch
    from sgpo.generation import generate_responses
    from sgpo.models import load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model = tokenizer = None
    samples: list[list[str]] = []
    for start in range(0, len(prompts), args.chunk):
        chunk_file = work / f"samples_{args.seed}_{args.max_new_tokens}_{args.samples}_{indices[start]:05d}.json"
        chunk = prompts[start : start + args.chunk]
        if chunk_file.is_file() and json.loads(chunk_file.read_text())["prompts"] == chunk:
            samples.extend(json.loads(chunk_file.read_text())["samples"])
            continue
        if model is None:
            tokenizer = load_tokenizer(args.model)
            model = load_model(args.model, dtype="float32")
        began = time.time()
        out = generate_responses(
            model,
            tokenizer,
            chunk,
            num_samples=args.samples,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
            batch_size=args.batch_size,
            prompt_indices=indices[start : start + len(chunk)],
        )
        chunk_file.write_text(json.dumps({"prompts": chunk, "samples": out}))
        print(f"prompts {indices[start]}..{indices[start] + len(chunk)}: {time.time() - began:.0f} s", flush=True)
        samples.extend(out)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--out", default=str(DATA_DIR))
    parser.add_argument("--work-dir", default=".cache/gold")
    parser.add_argument("--pool-prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="samples per pool prompt")
    parser.add_argument("--seed-fraction", type=float, default=0.03)
    parser.add_argument("--min-seed", type=int, default=16, help="at least this many seed pairs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-prompts", type=int, default=128, help="unlabelled prompts per round")
    parser.add_argument("--gold-round-prompts", type=int, default=64, help="of which gold-labelled, per round")
    parser.add_argument("--gold-rounds", type=int, default=2, help="rounds whose first prompts are gold-labelled")
    parser.add_argument("--test-prompts", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    judge = VerifiableJudge()
    train = generate_prompts(args.pool_prompts + args.rounds * args.round_prompts, "train", args.seed)
    pool_prompts = [s.text for s in train[: args.pool_prompts]]
    round_prompts = [s.text for s in train[args.pool_prompts :]]
    test = generate_prompts(args.test_prompts, "test", args.seed)

    began = time.time()
    # (round, index in the train prompts): round 0 is the pool, round t the first gold_round_prompts of round t
    labelled = [(0, i) for i in range(args.pool_prompts)]
    for t in range(1, args.gold_rounds + 1):
        first = args.pool_prompts + (t - 1) * args.round_prompts
        labelled += [(t, first + j) for j in range(min(args.gold_round_prompts, args.round_prompts))]
    samples = sample_pool(args, [train[i].text for _, i in labelled], [i for _, i in labelled])
    pool, all_scores = [], []
    for (t, i), responses in zip(labelled, samples, strict=True):
        prompt = train[i].text
        scores = judge.scores([prompt] * len(responses), responses)
        all_scores.extend(scores.tolist())
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        if scores[best] > scores[worst]:
            pool.append(
                {
                    "round": t,
                    "prompt": prompt,
                    "chosen": responses[best],
                    "rejected": responses[worst],
                    "chosen_score": float(scores[best]),
                    "rejected_score": float(scores[worst]),
                }
            )
    # the seed: a share of all the prompts a run draws from, taken from the round-0 pool's pairs
    seed_pool = [pair for pair in pool if pair["round"] == 0]
    n_seed = max(args.min_seed, int(round(args.seed_fraction * (args.pool_prompts + args.rounds * args.round_prompts))))
    order = np.random.default_rng(args.seed).permutation(len(seed_pool))
    seed = [seed_pool[int(i)] for i in sorted(order[:n_seed])]

    write_jsonl(out / "prompts_test.jsonl", [{"id": f"test-{i}", "prompt": s.text} for i, s in enumerate(test)])
    write_jsonl(out / "gold_pool.jsonl", pool)
    write_jsonl(out / "default_seed_pairs.jsonl", seed)
    write_jsonl(
        out / "default_prompts.jsonl",
        [{"round": 1 + i // args.round_prompts, "prompt": p} for i, p in enumerate(round_prompts)],
    )
    manifest = {
        "model": args.model,
        "generation": {
            "samples_per_prompt": args.samples,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "seed": args.seed,
        },
        "judge": {"name": judge.name, "temperature": judge.temperature},
        "counts": {
            "pool_prompts": len(pool_prompts),
            "gold_pool_pairs": {str(t): sum(p["round"] == t for p in pool) for t in range(args.gold_rounds + 1)},
            "gold_round_prompts": args.gold_round_prompts,
            "seed_pairs": len(seed),
            "round_prompts": {str(r + 1): args.round_prompts for r in range(args.rounds)},
            "test_prompts": len(test),
        },
        "labelled_sample_scores": {
            "mean": float(np.mean(all_scores)),
            "fraction_zero": float(np.mean(np.array(all_scores) == 0)),
            "fraction_one": float(np.mean(np.array(all_scores) == 1)),
        },
        "command": "python scripts/make_gold_data.py",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest["counts"]), f"{time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
