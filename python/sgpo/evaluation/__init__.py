"""An offline alignment benchmark: generated instructions with verifiable constraints and an exact judge."""

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
