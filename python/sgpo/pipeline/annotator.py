"""How good the self-annotator is: its agreement with a gold judge, before a round trains on its labels.

Two numbers per self-annotating round (DESIGN 5: below about 65%, self-annotation trains on noise):

- **held-out**: on gold-labelled pairs that no run trains on (``judge.agreement_pairs``), how often the round's
  annotator scores the gold-chosen response above the gold-rejected one; measured at the start of the round, with
  the policy the round starts from;
- **round**: on the round's own pairs, how often the gold judge (``evaluate.judge``) prefers the response the
  annotator chose, pairs that gold scores equal left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sgpo.evaluation.statistics import Agreement, agreement


def heldout_agreement(judge: Any, pairs: Sequence[dict[str, Any]]) -> Agreement:
    """The annotator ``judge`` on gold pairs (``prompt``, ``chosen``, ``rejected``; chosen is gold's choice).

    A judge with ``calibrate`` (the length-debiased implicit reward) fits itself on these pairs first, as it does on
    a round's pairs; no gold label enters that fit. A gated judge (``admissible``) orders a pair by its gate where
    the gate separates the two responses, as it does when it picks a round's pairs.
    """
    if not pairs:
        raise ValueError("judge.agreement_pairs: expected at least one gold pair, got none")
    prompts = [p["prompt"] for p in pairs]
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    scores = np.asarray(judge.scores(prompts + prompts, responses), dtype=np.float64).reshape(2, len(pairs))
    if getattr(judge, "calibrated", False):
        lengths = judge.lengths(prompts + prompts, responses)
        lengths = np.asarray(lengths, dtype=np.float64).reshape(2, len(pairs))
        scores = np.stack(judge.calibrate(list(scores.T), list(lengths.T))).T
    gate = getattr(judge, "admissible", None)
    flags = None if gate is None else gate(prompts + prompts, responses)
    return gated_agreement(scores, None if flags is None else np.asarray(flags, dtype=bool).reshape(2, len(pairs)))


def gated_agreement(scores: np.ndarray, flags: np.ndarray | None) -> Agreement:
    """Agreement with gold of an annotator's (2, n) scores (row 0 gold's chosen): where gate ``flags`` (same shape)
    separate a pair's two responses, the gate orders them, as a gated judge does when it picks a round's pairs."""
    from sgpo.pipeline.judges import gated_difference

    if flags is None:
        return agreement(scores[0], scores[1])
    diff = gated_difference(scores[0], scores[1], flags[0], flags[1])
    return agreement(diff, np.zeros_like(diff))


def round_agreement(gold: Any, pairs: Sequence[dict[str, Any]]) -> Agreement | None:
    """How often ``gold`` prefers each pair's chosen response to its rejected one (gold ties left out).

    A gold judge with ``accepts(prompt)`` (the verifiable judge reads its constraints from the prompt's text) is
    asked only about the pairs whose prompts it can score; None where it can score none of them.
    """
    accepts = getattr(gold, "accepts", None)
    if accepts is not None:
        pairs = [p for p in pairs if accepts(p["prompt"])]
    if not pairs:
        return None
    prompts = [p["prompt"] for p in pairs]
    scores = np.asarray(
        gold.scores(prompts + prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]),
        dtype=np.float64,
    ).reshape(2, len(pairs))
    # the annotator chose "chosen": its own ordering is chosen > rejected on every pair
    return agreement(np.ones(len(pairs)), np.zeros(len(pairs)), scores[0], scores[1])


def implicit_reward_agreement(
    policy_logps: np.ndarray, reference_logps: np.ndarray, lengths: np.ndarray, admissible: np.ndarray | None = None
) -> dict[str, dict[str, Any]]:
    """Agreement with gold of every implicit-reward variant (:class:`sgpo.pipeline.judges.ImplicitRewardJudge`),
    from log-probs of gold pairs already computed.

    Each array has shape (2, n): row 0 the gold-chosen responses, row 1 the gold-rejected ones; ``reference_logps``
    are the SFT model's, ``lengths`` the response tokens. With ``admissible`` (the on-task gate's flags, same shape)
    each variant is also reported gated (``<variant>+gate``: ``judge.options.gate=on_task``).
    """
    from sgpo.pipeline.judges import length_debias_alpha

    policy, reference = np.asarray(policy_logps, np.float64), np.asarray(reference_logps, np.float64)
    sizes = np.asarray(lengths, np.float64)
    if not policy.shape == reference.shape == sizes.shape or policy.ndim != 2 or policy.shape[0] != 2:
        raise ValueError(
            f"policy_logps, reference_logps, lengths: expected three (2, n) arrays, got {policy.shape}, "
            f"{reference.shape} and {sizes.shape}"
        )
    ratio = policy - reference
    mean = ratio / np.maximum(sizes, 1.0)
    alpha = length_debias_alpha(ratio[0] - ratio[1], sizes[0] - sizes[1])
    debiased = ratio - alpha * sizes
    out = {
        "sum": agreement(ratio[0], ratio[1]).to_dict(),
        "mean": agreement(mean[0], mean[1]).to_dict(),
        "length_debiased": {**agreement(debiased[0], debiased[1]).to_dict(), "alpha": alpha},
    }
    if admissible is not None:
        flags = np.asarray(admissible, dtype=bool)
        if flags.shape != policy.shape:
            raise ValueError(f"admissible: expected shape {policy.shape}, got {flags.shape}")
        for name, values in (("sum", ratio), ("mean", mean), ("length_debiased", debiased)):
            out[f"{name}+gate"] = gated_agreement(values, flags).to_dict()
    return out
