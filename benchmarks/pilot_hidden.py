"""Does the hidden-preference benchmark tell methods apart? DPO learning curve on gold pairs of one rubric.

For each seed-set size N and seed s: DPO (``sgpo run hidden method=dpo``, round 0 only) on the first N pairs of a
seeded permutation of the bundled gold pool, then ``sgpo eval`` of the trained policy against SmolLM2-135M-Instruct
on prompts no training saw (paired gold-score difference and win rate with bootstrap intervals, KL), and
the trained policy's implicit reward as an annotator on the held-out gold pairs. Settings are chosen here, so the
evaluation prompts are the bundled dev prompts (train-split tasks that neither labelling nor any round sees), never
the test split the tables report on. Writes ``results.json``,
``pilot.md`` and ``learning_curve.png`` to ``--out`` (default ``bench_results/pilot_hidden_<rubric>``).

    python benchmarks/pilot_hidden.py                        # warmth, N = 8..256, seeds 1 and 2, 2 jobs
    python benchmarks/pilot_hidden.py --rubric concreteness --sizes 32 256 --seeds 1
    python benchmarks/pilot_hidden.py --rubric concreteness --sizes 32 256 --seeds 1 --table-only  # from results.json
    python benchmarks/pilot_hidden.py --compare bench_results/pilot_hidden_structure_lr* --out DIR  # side by side

Jobs run side by side as separate processes with one thread each; finished runs and evaluations are reused.
"""

from __future__ import annotations

import sys

from experiments import pilot

if __name__ == "__main__":
    pilot.main(sys.argv, __doc__.split("\n\n")[0])
