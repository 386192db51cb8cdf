"""The experiments' command lines, with each task's defaults filled in."""

from __future__ import annotations

import argparse

from sgpo.pipeline.files import read_jsonl

from experiments import bundle
from experiments.rows import track_budget, variants
from experiments.tasks import Task

# flags that rewrite a table from stored results: the table states the command that made the results, without them
RENDER_ONLY = ("--table-only", "--summary-only")


def stated_command(argv: list[str]) -> str:
    """The command a results file states: ``argv`` without the flags that only rewrite it."""
    return " ".join(a for a in argv if a not in RENDER_ONLY)


def table_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    """``paper_table.py``'s command line, with the task's defaults filled in (``--quick``'s included)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--rows", type=int, nargs="*", default=list(range(1, 12)), help="rows to run, in this order (DPO runs first)"
    )
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="NAME",
        help="run only these runs of --rows (e.g. dpo_seed iter_dpo); the results go to results.json and no table "
        "is written (render it with --table-only)",
    )
    parser.add_argument("--out", default=None, help="default: bench_results/paper (verifiable), bench_results/<task>")
    parser.add_argument(
        "--num-prompts", type=int, default=None, help="held-out test prompts judged per model (64; hidden: 256)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts-per-round", type=int, default=None, help="32; hidden: the recipe's (64)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="the rounds' sampling and the evaluation (80; hidden: 48)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    parser.add_argument(
        "--task",
        default="verifiable",
        help="verifiable | hidden:warmth|concreteness|structure | package.module:Class (any judge; its gold pool and "
        "held-out pairs are labelled once with sgpo label)",
    )
    parser.add_argument(
        "--pool-prompts", type=int, default=192, help="a judge class's task: prompts whose gold pairs make its pool"
    )
    parser.add_argument(
        "--heldout-prompts", type=int, default=64, help="a judge class's task: prompts of its held-out gold pairs"
    )
    parser.add_argument(
        "--seed-size",
        type=int,
        default=None,
        help="gold seed pairs (hidden: hidden.yaml's; verifiable: the bundled 16)",
    )
    parser.add_argument(
        "--table-only", action="store_true", help="print the table and plots of the results so far; run nothing"
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="with --table-only on the hidden track: rewrite the generated blocks of README.md, "
        "docs/results-hidden.md and docs/follower.md (run from the repository root) from results.json",
    )
    parser.add_argument(
        "--train-settings",
        choices=("track", "hidden"),
        default="track",
        help="the verifiable track's training settings: its own, or the hidden recipe's (learning rates, round 0's "
        "steps, the annotator's options) to compare the tracks side by side",
    )
    parser.add_argument(
        "--round0-epochs",
        type=int,
        default=None,
        help="round 0's epochs on the recipe's seed (default the recipe's); every other seed trains the same steps",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="an install check: rows 1-5 on seed 1, 64 test prompts, rounds of half the recipe's prompts and round 0 "
        "at half its steps, into its own --out (<task>_quick)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs: expected an integer >= 1")
    try:
        task = Task.parse(args.task)
    except ValueError as err:
        parser.error(str(err))
    known = [v.name for v in variants(task.judge) if v.row in args.rows]
    unknown = [name for name in args.variants or [] if name not in known]
    if unknown:
        parser.error(f"--variants: {' '.join(unknown)} not among the runs of --rows {args.rows}; expected of {known}")
    from sgpo.pipeline import load_config

    recipe = load_config(task.config, [])
    if args.round0_epochs is not None and args.round0_epochs < 1:
        parser.error("--round0-epochs: expected an integer >= 1")
    args.prompts_per_round = args.prompts_per_round or (recipe.data.prompts_per_round if task.hidden else 32)
    out = "bench_results/paper" if not task.hidden else f"bench_results/{args.task.replace(':', '_')}"
    if args.quick:
        # its own output: a clone's committed full-size results are never mistaken for the check's
        args.rows, args.seeds = [r for r in args.rows if r <= 5], args.seeds[:1]
        args.num_prompts = args.num_prompts or 64
        args.prompts_per_round = max(1, args.prompts_per_round // 2)
        round0 = (recipe if task.hidden else load_config(task.config, track_budget(args.train_settings))).round0.epochs
        args.round0_epochs = args.round0_epochs or max(1, round0 // 2)
        out += "_quick"
    args.num_prompts = args.num_prompts or (256 if task.hidden else 64)
    args.out = args.out or out
    if args.seed_size is None:
        args.seed_size = (
            recipe.data.max_seed_pairs if task.hidden else len(read_jsonl(bundle.bundled("default_seed_pairs.jsonl")))
        )
    return args


def pilot_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    """``pilot_hidden.py``'s command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rubric", default="warmth")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompts", default=None, help="evaluation prompts (default: the bundled dev prompts)")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--steps", type=int, default=128, help="optimizer steps of every run (4 pairs a step)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=None, help="default: bench_results/pilot_hidden_<rubric>")
    parser.add_argument("--runs", default="runs/pilot_hidden", help="run directories, logs and the response cache")
    parser.add_argument(
        "--table-only",
        "--summary-only",
        dest="table_only",
        action="store_true",
        help="rewrite pilot.md and the plot from results.json, run nothing",
    )
    parser.add_argument(
        "--compare", nargs="+", metavar="DIR", help="tabulate the results.json of these pilots into --out/compare.md"
    )
    args = parser.parse_args(argv)
    args.out = args.out or f"bench_results/pilot_hidden_{args.rubric}"
    return args


def sweep_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    """``annotator_sweep.py``'s command line."""
    parser = argparse.ArgumentParser(description=description)
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
    parser.add_argument("--table-only", action="store_true", help="rewrite sweep.md from sweep.json, run nothing")
    parser.add_argument("--job", nargs=3, metavar=("RUBRIC", "SIZE", "SEED"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)
