"""Which pairs does SSAPO's follower attack, and what does the attack do to their gradient?

For every self-annotating round of the given ``sgpo run`` directories (those that solved a follower): the pairs the
exact worst case moves mass on (the attacked set), where they sit among the round's annotated margins, how often gold
agrees with their self-annotated labels against the rest, and the gradient the ``ssapo`` loss gives them at the
round's start (the policy equals the reference pi_t, so every training margin is 0) relative to epsilon = 0. In
probability space the moved mass lands on ``T = sigmoid(beta Delta) - D``; where that falls below the clamp of
``-log max(p, 1e-6)`` it has no gradient. In margin space the moved mass sees a lower margin and a larger
``-log sigmoid`` slope.

    python benchmarks/follower_attack.py bench_results/hidden_structure/runs/ssapo_prob_s1 --judge structure

With ``--seed-pairs FILE --policy CHECKPOINT`` it asks the same of a labelled seed instead (table row 9: a seed with
some labels flipped): the seed pairs' margins under the policy's implicit reward (the per-token mean of
``log pi - log pi_0``, the recipe's annotator), the exact worst case over them with the recipe's follower (as capped
by ``max_shift`` and uncapped), and how many of the flipped pairs (chosen scored below rejected by gold) fall in the
attacked set, against the hypergeometric chance of drawing as many.

Prints a markdown table; ``--out FILE.md`` also writes it, and every number to FILE.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from experiments.attack import run_attack
from sgpo.follower import ATTACKED, follower_inputs, moved_mass
from sgpo.pipeline.files import read_jsonl


def chance_at_least(hits: int, drawn: int, marked: int, total: int) -> float:
    """P(at least ``hits`` marked among ``drawn`` of ``total`` items, ``marked`` of them marked), drawn at random."""
    return sum(
        math.comb(marked, k) * math.comb(total - marked, drawn - k) for k in range(hits, min(drawn, marked) + 1)
    ) / math.comb(total, drawn)


def seed_attack(
    policy: str, baseline: str, seed_file: Path, follower: dict[str, Any], beta: float, cache_dir: Path | None
) -> list[dict[str, Any]]:
    """The follower over a labelled seed's margins under ``policy``'s implicit reward: which pairs it attacks, capped
    by the follower's ``max_shift`` and uncapped, and how many of them are flipped (gold prefers the rejected)."""
    import sgpo
    from sgpo.responses import cached_logps, response_lengths

    pairs = read_jsonl(seed_file)
    if not pairs or any("chosen_score" not in p or "rejected_score" not in p for p in pairs):
        raise ValueError(f"--seed-pairs: {seed_file} needs gold chosen_score and rejected_score on every pair")
    prompts = [p["prompt"] for p in pairs] * 2
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    (own,) = cached_logps(policy, [(prompts, responses)], cache_dir)
    (reference,) = cached_logps(baseline, [(prompts, responses)], cache_dir)
    lengths = response_lengths(baseline, prompts, responses)
    reward = ((own - reference) / np.maximum(lengths, 1.0)).reshape(2, -1)
    margins = reward[0] - reward[1]
    flipped = np.array([p["chosen_score"] < p["rejected_score"] for p in pairs])
    space = follower["space"]
    xi = follower_inputs(margins, space, follower["gamma"], beta)
    rows = []
    for cap in (follower.get("max_shift"), None):
        result = sgpo.worst_case(xi, follower["epsilon"], pieces=follower["pieces"], space=space, max_shift=cap)
        moved = moved_mass(result.weights, result.shifts)
        attacked = moved > ATTACKED
        hits = int((attacked & flipped).sum())
        rows.append(
            {
                "policy": policy,
                "seed_pairs": str(seed_file),
                "space": space,
                "epsilon": float(follower["epsilon"]),
                "max_shift": cap,
                "pairs": len(pairs),
                "flipped": int(flipped.sum()),
                "attacked": int(attacked.sum()),
                "flipped_attacked": hits,
                "attacked_pairs": np.flatnonzero(attacked).tolist(),
                "flipped_pairs": np.flatnonzero(flipped).tolist(),
                "chance_share": float(flipped.mean()),
                "p_at_least": chance_at_least(hits, int(attacked.sum()), int(flipped.sum()), len(pairs)),
                "mass_moved": float(moved.sum() / len(pairs)),
                "flipped_margin_mean": float(margins[flipped].mean()) if flipped.any() else None,
                "clean_margin_mean": float(margins[~flipped].mean()) if (~flipped).any() else None,
                "negative_margin_flipped": int((margins[flipped] < 0).sum()),
                "negative_margin_clean": int((margins[~flipped] < 0).sum()),
            }
        )
    return rows


def seed_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| policy | space | eps | max_shift | pairs | flipped | margin < 0: flipped / clean | mean margin: flipped / "
        "clean | attacked | flipped among attacked | chance | P(at least as many by chance) | mass moved % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = r["flipped_attacked"] / r["attacked"] if r["attacked"] else float("nan")
        cap = "none" if r["max_shift"] is None else f"{r['max_shift']:g}"
        lines.append(
            f"| {Path(r['policy']).parent.parent.name}/{Path(r['policy']).parent.name} | {r['space']} | "
            f"{r['epsilon']:g} | {cap} | {r['pairs']} | "
            f"{r['flipped']} | {r['negative_margin_flipped']} / {r['negative_margin_clean']} | "
            f"{r['flipped_margin_mean']:+.3f} / {r['clean_margin_mean']:+.3f} | {r['attacked']} | "
            f"{r['flipped_attacked']} ({100 * share:.0f}%) | {100 * r['chance_share']:.0f}% | {r['p_at_least']:.2f} | "
            f"{100 * r['mass_moved']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="sgpo run directories")
    parser.add_argument("--seed-pairs", default=None, help="a labelled seed (gold chosen_score, rejected_score)")
    parser.add_argument("--policy", default=None, help="with --seed-pairs: the checkpoint trained on that seed")
    parser.add_argument("--baseline", default="SmolLM2-135M-Instruct", help="with --seed-pairs: the reference pi_0")
    parser.add_argument("--config", default="hidden", help="with --seed-pairs: the recipe whose follower runs")
    parser.add_argument("--judge", default="structure", help="the gold judge (a name or package.module:Class)")
    parser.add_argument("--out", default=None, help="write the table (.md) and the numbers (.json beside it)")
    args = parser.parse_args()
    from sgpo.pipeline.judges import build_judge

    if args.seed_pairs is not None or args.policy is not None:
        if args.seed_pairs is None or args.policy is None or args.runs:
            parser.error("--seed-pairs and --policy go together, without run directories")
        from sgpo.pipeline import load_config

        recipe = load_config(args.config, [])
        follower = {k: getattr(recipe.follower, k) for k in ("space", "gamma", "epsilon", "pieces", "max_shift")}
        cache = Path(args.out).parent / "logps" if args.out else None
        rows = seed_attack(args.policy, args.baseline, Path(args.seed_pairs), follower, recipe.train.beta, cache)
        return write(seed_table(rows), rows, args.out)
    if not args.runs:
        parser.error("runs: give sgpo run directories, or --seed-pairs with --policy")
    judge = build_judge(args.judge, {}, None, option="--judge")
    rows = []
    for run in map(Path, args.runs):
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"runs: {run} holds no config.yaml (not an sgpo run directory)")
        rows += run_attack(run, judge, yaml.safe_load((run / "config.yaml").read_text()))
    if not rows:
        sys.exit("runs: no round solved a follower (method=ssapo runs only)")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}"

    lines = [
        "| run | round | space | eps | pairs | attacked | mass moved % | moved per pair % (min / median / max) "
        "| attacked margin percentile | gold agrees: "
        "attacked / rest % | gradient vs eps = 0: attacked / rest | pairs with no gradient |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    for r in rows:
        lines.append(
            f"| {Path(r['run']).name} | {r['round']} | {r['space']} | {r['epsilon']:g} | {r['pairs']} | "
            f"{r['attacked']} | {100 * r['mass_moved']:.1f} | "
            f"{' / '.join(f'{100 * m:.1f}' for m in r['moved_per_pair'])} | {pct(r['attacked_margin_percentile'])} | "
            f"{pct(r['gold_agrees_attacked'])} / {pct(r['gold_agrees_rest'])} | "
            f"{ratio(r['gradient_ratio_attacked'])} / {ratio(r['gradient_ratio_rest'])} | {r['zero_gradient_pairs']} |"
        )
    write("\n".join(lines), rows, args.out)


def write(table: str, rows: list[dict[str, Any]], out: str | None) -> None:
    """Print ``table``; with ``out``, write it and the command that made it to ``out``, the numbers beside it."""
    print(table)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table + f"\n\nCommand: `python {' '.join(sys.argv)}`\n")
        path.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
