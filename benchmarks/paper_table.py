"""The claims of SGPO/SSAPO tested at small scale: SmolLM2-135M-Instruct, the bundled gold data, a gold judge.

Each row is one or more ``sgpo run`` calls (the task's recipe with the overrides listed in
:func:`experiments.rows.variants`), then ``sgpo eval`` of the last round's policy against the initial model on the
held-out prompts. Prints the markdown table of the results pages (docs/results-*.md) and writes it, with every number,
to ``--out``.
Three kinds of task (``--task``):

- ``verifiable``: the ``default`` recipe, verifiable instructions judged by :class:`sgpo.evaluation.VerifiableJudge`;
- ``hidden:<rubric>``: the ``hidden`` recipe, open prompts judged by a rubric of :mod:`sgpo.evaluation.rubrics`; the
  seed of table seed s is the s-th block of ``--seed-size`` pairs of the bundled pool, the 100% gold row adds the
  gold pairs of every prompt the rounds see (made once with ``sgpo label`` and cached), and evaluations report paired
  score differences with bootstrap intervals, KL and the annotator's agreement with held-out gold pairs;
- ``package.module:Class``: any judge (a rubric or reward model of your own) on the hidden track's prompts; its gold
  pool and held-out pairs are labelled once with ``sgpo label`` (``--pool-prompts``, ``--heldout-prompts``; cached
  under ``--out``/gold), then the table runs as on a bundled rubric.

Rows: 1 initial model; 2 DPO on the seed; 3 DPO on 100% gold; 4 iterative self-annotated DPO (epsilon = 0); 5 SSAPO,
exact follower, probability and margin space; 6 SSAPO with the paper's follower; 7 SPPO with the self-annotator's and
with the gold judge's win probabilities; 8 the epsilon ablation; 9 25% of the seed flipped (DPO, rDPO, cDPO, SSAPO);
10 half and twice the seed (DPO, SSAPO); 11 rows 4 and 5 with the on-task gate on the annotator. Every round 0
trains the same number of optimizer steps as the recipe's seed does, whatever its pairs, so rows differ in labels, not
in compute. The reward-vs-KL picture of every row goes to ``frontier.png``, row 10's to ``seed_size.png``.

    python benchmarks/paper_table.py --task hidden:structure          # every row, seeds 1-3, 2 jobs
    python benchmarks/paper_table.py --task hidden:structure --quick  # an install check: rows 1-5, seed 1, smaller
    python benchmarks/paper_table.py --rows 2 5 8 --seeds 1 2 3        # the verifiable track
    python benchmarks/paper_table.py --task hidden:structure --table-only  # table.md and plots from results.json

Jobs run side by side as separate processes with one thread each. Runs resume: a finished run directory and its
evaluation are reused, so an interrupted table continues where it stopped. Runs share ``--out``/cache: every iterative
run on a seed starts round 1 from the same round 0, so the first samples and labels that round and the others copy it;
a run whose weights come out identical to another's (the same files) reuses its evaluation too.
"""

from __future__ import annotations

import sys

from experiments.options import table_args
from experiments.table import Table


def main(argv: list[str] | None = None) -> None:
    Table(table_args(argv, __doc__.split("\n\n")[0])).run()


if __name__ == "__main__":
    main(sys.argv[1:])
