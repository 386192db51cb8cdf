"""The experiments behind the results pages, as a package the scripts in ``benchmarks/`` run.

- ``paper_table.py``: the claims of SGPO/SSAPO at small scale, one row per method (:mod:`.table`);
- ``pilot_hidden.py``: DPO's learning curve on a hidden rubric's gold pairs (:mod:`.pilot`);
- ``annotator_sweep.py``: the implicit reward's held-out agreement while DPO trains (:mod:`.sweep`).

What they share: :mod:`.rows` (the table's rows), :mod:`.bundle` (seed and gold files cut from the bundled data),
:mod:`.tasks` (the track a table runs), :mod:`.launch` (commands side by side, one thread each), :mod:`.store`
(results.json and what a run directory measured), :mod:`.render` (markdown), :mod:`.plots` (pictures) and
:mod:`.options` (command lines). Every markdown file is rendered from stored results alone, so ``--table-only``
rewrites it without training anything.
"""
