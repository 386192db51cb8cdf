"""Offline benchmarks of preference alignment: generated prompts, gold judges, the comparison with a baseline, reports.

Two tracks of generated prompts, each with its gold judge:

- verifiable instructions (:mod:`~sgpo.evaluation.prompts`, :mod:`~sgpo.evaluation.constraints`): tasks with
  constraints a response can be checked against, scored exactly by :class:`~sgpo.evaluation.judge.VerifiableJudge`;
- hidden preferences (:mod:`~sgpo.evaluation.hidden`, :mod:`~sgpo.evaluation.rubrics`): open tasks judged by a rubric
  over a property of the response that the prompt never asks for (warmth, concreteness, structure).

:mod:`~sgpo.evaluation.sources` gives either track's prompts, or a file's. :mod:`~sgpo.evaluation.comparison` compares
a candidate with a baseline on the same prompts (win rate with ties as 1/2, the length-controlled win rate, the paired
difference) and turns a judge's scores into preference and SPPO win probabilities; :mod:`~sgpo.evaluation.statistics`
holds the paired bootstrap and the annotator's agreement with gold; :mod:`~sgpo.evaluation.report` writes the tables
and plots, and :mod:`~sgpo.evaluation.runs` reads what a ``sgpo run`` directory holds. ``sgpo eval``
(:mod:`sgpo.eval_cli`) and ``sgpo run``'s evaluate stage use them; this package imports neither.
"""

from sgpo.evaluation.comparison import Comparison, WinRate, compare_responses, compare_scores, win_rate_from_outcomes
from sgpo.evaluation.constraints import CONSTRAINT_KINDS, Constraint, addresses_task
from sgpo.evaluation.judge import VerifiableJudge
from sgpo.evaluation.prompts import TASK_TEMPLATES, TOPICS, PromptSpec, generate_prompts, parse_prompt

__all__ = [
    "CONSTRAINT_KINDS",
    "TASK_TEMPLATES",
    "TOPICS",
    "Comparison",
    "Constraint",
    "PromptSpec",
    "VerifiableJudge",
    "WinRate",
    "addresses_task",
    "compare_responses",
    "compare_scores",
    "generate_prompts",
    "parse_prompt",
    "win_rate_from_outcomes",
]
