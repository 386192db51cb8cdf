"""How good a self-annotator does a gold seed make? Held-out agreement of the implicit reward while DPO trains.

For each rubric, seed size N and seed s: DPO on the first N pairs of a seeded permutation of the rubric's bundled
gold pool (the recipe ``hidden`` with round 0 only, as ``benchmarks/pilot_hidden.py`` trains it), and every
``--every`` optimizer steps the policy's implicit reward ``log pi - log pi_0`` (summed, per-token mean and
length-debiased) as an annotator on the rubric's held-out gold pairs: on all of them, and on the pairs whose both
answers pass the on-task gate (gold score > 0), so a low number can be told apart from gate failures the implicit
reward does not see. It chooses the rubric, seed size and steps of the hidden track before any evaluation runs.
Writes ``sweep.json`` and ``sweep.md`` to ``--out``.

    python benchmarks/annotator_sweep.py --rubrics structure concreteness --sizes 16 256 --seeds 1
    python benchmarks/annotator_sweep.py --table-only   # sweep.md from sweep.json, nothing trained

Jobs run side by side as separate processes with one thread each; a finished job is reused.
"""

from __future__ import annotations

import sys

from experiments import sweep

if __name__ == "__main__":
    sweep.main(sys.argv, __doc__.split("\n\n")[0])
