"""Throughput of VerifiableJudge: judgements per second on the bundled gold responses (or synthetic ones).

    python benchmarks/judge_throughput.py            # prints one markdown table row per mode

A judgement is one ``score(prompt, response)``; "pairwise" times ``preference_probs`` (two scores per pair) and
"cold" clears the prompt-parse cache first, so it includes parsing each distinct prompt once.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from sgpo.evaluation import VerifiableJudge, generate_prompts
from sgpo.evaluation.prompts import parse_prompt


def workload() -> tuple[list[str], list[str]]:
    pool = Path(str(resources.files("sgpo") / "data" / "gold_pool.jsonl"))
    if pool.is_file():
        rows = [json.loads(line) for line in pool.read_text().splitlines() if line.strip()]
        prompts = [r["prompt"] for r in rows for _ in (0, 1)]
        responses = [r[key] for r in rows for key in ("chosen", "rejected")]
        # repeated up to a few thousand judgements so the timing is not dominated by noise
        reps = max(1, 4000 // len(prompts))
        return prompts * reps, responses * reps
    specs = generate_prompts(500, "train", seed=0)
    prompts = [s.text for s in specs]
    responses = [f"Here is a short answer about {s.topic}, written plainly in a few sentences." for s in specs]
    return prompts, responses


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    prompts, responses = workload()
    judge = VerifiableJudge()
    n = len(prompts)

    def cold() -> None:
        parse_prompt.cache_clear()
        judge.scores(prompts, responses)

    warm = best_of(lambda: judge.scores(prompts, responses))
    cold_t = best_of(cold)
    half = n // 2
    pair = best_of(lambda: judge.preference_probs(prompts[:half], responses[:half], responses[half : 2 * half]))
    print("| mode | judgements | seconds | judgements / s |")
    print("|---|---|---|---|")
    print(f"| score (warm parse cache) | {n} | {warm:.3f} | {n / warm:,.0f} |")
    print(f"| score (cold) | {n} | {cold_t:.3f} | {n / cold_t:,.0f} |")
    print(f"| pairwise probability | {half} | {pair:.3f} | {half / pair:,.0f} |")


if __name__ == "__main__":
    main()
