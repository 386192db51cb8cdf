"""Annotate (SSAPO Alg. 1 step 2): the judge picks a chosen and a rejected response among each prompt's samples.

With the default judge this is SPA's self-annotation, r(y) = log pi_t(y|x) - log pi_SFT(y|x); any judge of
:mod:`sgpo.pipeline.judges` fits (``judge.name``). SPPO rounds keep each response's win probability instead.
Reads ``round_<t>/generations.jsonl`` (through :mod:`generate <sgpo.pipeline.stages.generate>`) and the gold pairs of
``judge.agreement_pairs``. Writes, in ``round_<t>/``:

    agreement.json           the annotator's agreement with gold on judge.agreement_pairs, with the policy the round
                             starts from (before the round; shared through cache_dir)
    annotate_parts/          one part file per chunk of prompts while the stage runs (removed at the end)
    annotation_counts.json   pairs, all-tie prompts, the fitted length alpha, and how often the gold judge
                             (evaluate.judge) agrees with the round's labels
    annotations.jsonl        one pair per prompt: prompt, chosen, rejected, margin, the judge's scores (or the win
                             probabilities), pi_t's log-probs of both responses (the leader's reference log-probs):
                             the stage's output, shared through cache_dir
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from sgpo.pipeline import cache, files, policy
from sgpo.pipeline.context import RunContext


def annotator(ctx: RunContext, model: Any, policy_logps: Any = None) -> Any:
    """The round's judge (``judge.name``); a ``from_pipeline`` judge scores with ``model`` and the SFT model."""
    from sgpo.pipeline.judges import JudgeContext, build_judge

    context = JudgeContext(
        policy_logps=policy_logps or (lambda p, r: policy.logps(ctx, model, list(p), list(r))),
        sft_logps=lambda p, r: policy.logps(ctx, model, list(p), list(r), sft=True),
        beta=ctx.cfg.train.beta,
        lengths=lambda p, r: policy.response_lengths(ctx, list(p), list(r)),
    )
    return build_judge(ctx.cfg.judge.name, dict(ctx.cfg.judge.options), context)


def judging_settings(ctx: RunContext) -> dict[str, Any]:
    """What a judge's scores depend on besides the policy and the base model (part of a shared stage's key)."""
    return {
        "judge": cache.judge_identity(ctx.cfg.judge.name, dict(ctx.cfg.judge.options)),
        "beta": ctx.cfg.train.beta,
        "max_length": ctx.cfg.data.max_length,
        # the batch a forward pass pads to can move its log-probs in the last bits
        "batch_size": ctx.cfg.train.per_device_batch_size,
    }


def heldout_agreement(ctx: RunContext, t: int, model: Any) -> dict[str, Any] | None:
    """The annotator's agreement with gold on ``judge.agreement_pairs``, with the policy round ``t`` starts from."""
    from sgpo.pipeline.annotator import heldout_agreement as measure
    from sgpo.tables import load_table, pairs_from_table

    source = ctx.cfg.judge.agreement_pairs
    if source is None:
        return None
    path = ctx.round_dir(t) / "agreement.json"
    pairs = pairs_from_table(load_table(source, kind="seed_pairs"), ctx.cfg.data, source)
    inputs = lambda: {"pairs": pairs, **judging_settings(ctx)}  # noqa: E731 - hashed only with a cache_dir
    with ctx.stage([path], shared_as="agreement", t=t, inputs=inputs) as done:
        if not done:
            result = measure(annotator(ctx, model), pairs).to_dict()
            if ctx.main:
                files.write_json(path, result)
    return files.read_json(path)


def annotate(ctx: RunContext, t: int, model: Any, prompts: list[Any], responses: list[list[str]]) -> list[dict]:
    """The round's pairs, judged once (resumed, or copied from ``cache_dir``)."""
    round_dir = ctx.round_dir(t)
    path = round_dir / "annotations.jsonl"
    # the counts first: the annotations mark the stage done
    outputs = [round_dir / "annotation_counts.json", path]
    gold = ctx.cfg.evaluate.judge
    inputs = lambda: {  # noqa: E731 - hashed only with a cache_dir
        "prompts": prompts,
        "responses": responses,
        "method": ctx.cfg.method,
        "gold": cache.judge_identity(gold.name, dict(gold.options), "evaluate.judge.name"),
        **judging_settings(ctx),
    }
    parts = round_dir / "annotate_parts"
    with ctx.stage(outputs, parts=parts, shared_as="annotate", t=t, inputs=inputs) as done:
        if done:
            return files.read_jsonl(path)
        judge, judged = _judge(ctx, t, model, prompts, responses)
        counts: dict[str, Any] = {}
        if ctx.cfg.method != "sppo" and getattr(judge, "calibrated", False):
            counts["length_alpha"] = _calibrate(judge, prompts, responses, judged)
        pairs, identical = _pairs(prompts, responses, judged, sppo=ctx.cfg.method == "sppo")
        if not pairs:
            raise ValueError(
                f"judge.name: every pair of round {t} was a tie under {ctx.cfg.judge.name!r}; nothing to train on"
            )
        if ctx.main:
            counts.update(pairs=len(pairs), ties=identical)
            measured = _gold_agreement(ctx, pairs)
            if measured is not None:
                counts["gold_agreement"] = measured
            files.write_json(outputs[0], counts)
            files.write_jsonl(path, pairs)
    return pairs


def _judge(
    ctx: RunContext, t: int, model: Any, prompts: list[Any], responses: list[list[str]]
) -> tuple[Any, list[dict[str, Any]]]:
    """The judge and, per prompt, its scores (or SPPO's win probabilities), gate flags and pi_t's log-probs."""
    from sgpo.pipeline.judges import win_probabilities

    # log pi_t of every response the judge scores, kept with the pairs: pi_t is also the leader's reference, so
    # update reuses them instead of a second forward pass
    seen: dict[tuple[str, str], float] = {}

    def policy_logps(p: Any, r: Any) -> np.ndarray:
        values = policy.logps(ctx, model, list(p), list(r))
        seen.update(((json.dumps(x), y), float(v)) for x, y, v in zip(p, r, values, strict=True))
        return values

    judge = annotator(ctx, model, policy_logps)
    sppo = ctx.cfg.method == "sppo"

    def compute(lo: int, hi: int) -> list[dict[str, Any]]:
        flat_prompts = [prompts[i] for i in range(lo, hi) for _ in responses[i]]
        flat_responses = [r for i in range(lo, hi) for r in responses[i]]
        scores = None if sppo else np.asarray(judge.scores(flat_prompts, flat_responses), dtype=np.float64)
        gate = getattr(judge, "admissible", None)
        flags = None if sppo or gate is None else gate(flat_prompts, flat_responses)
        out, offset = [], 0
        for i in range(lo, hi):
            k = len(responses[i])
            record: dict[str, Any] = {}
            if sppo:
                record["win_probs"] = [float(x) for x in win_probabilities(judge, prompts[i], responses[i])]
            else:
                record["scores"] = [float(x) for x in scores[offset : offset + k]]
                if flags is not None:
                    record["admissible"] = [bool(x) for x in flags[offset : offset + k]]
            keys = [(json.dumps(prompts[i]), r) for r in responses[i]]
            if all(key in seen for key in keys):
                record["policy_logps"] = [seen[key] for key in keys]
            offset += k
            out.append(record)
        return out

    per_chunk = max(1, ctx.cfg.train.per_device_batch_size)
    parts = ctx.round_dir(t) / "annotate_parts"
    return judge, ctx.chunked(parts, len(prompts), per_chunk, compute, f"annotate r{t}")


def _calibrate(judge: Any, prompts: list[Any], responses: list[list[str]], judged: list[dict[str, Any]]) -> float:
    """Fit a judge on the whole round (the length-debiased implicit reward); the raw scores are kept."""
    lengths = judge.lengths([p for p, rs in zip(prompts, responses) for _ in rs], [r for rs in responses for r in rs])
    sizes = np.split(np.asarray(lengths), np.cumsum([len(rs) for rs in responses])[:-1])
    raw = [np.asarray(record["scores"]) for record in judged]
    for record, calibrated, n in zip(judged, judge.calibrate(raw, sizes), sizes, strict=True):
        record.update(raw_scores=record["scores"], scores=calibrated.tolist(), lengths=n.tolist())
    return float(getattr(judge, "alpha", 0.0))


def _pairs(
    prompts: list[Any], responses: list[list[str]], judged: list[dict[str, Any]], *, sppo: bool
) -> tuple[list[dict[str, Any]], int]:
    """One pair per prompt whose chosen and rejected responses differ, and how many prompts gave none."""
    from sgpo.pipeline.judges import choose_pair

    pairs, identical = [], 0
    for prompt, samples, record in zip(prompts, responses, judged, strict=True):
        values = np.asarray(record["win_probs"] if sppo else record["scores"])
        # ties keep the earlier sample, so a pair never depends on float noise between equal values
        w, lo = choose_pair(values, record.get("admissible"))
        if w == lo or samples[w] == samples[lo]:
            identical += 1
            continue
        pair = {"prompt": prompt, "chosen": samples[w], "rejected": samples[lo], **record}
        if "policy_logps" in record:
            pair["ref_chosen_logps"] = record["policy_logps"][w]
            pair["ref_rejected_logps"] = record["policy_logps"][lo]
        pair["margin"] = float(values[w] - values[lo])
        if sppo:
            pair["chosen_win_prob"], pair["rejected_win_prob"] = float(values[w]), float(values[lo])
        pairs.append(pair)
    return pairs, identical


def _gold_agreement(ctx: RunContext, pairs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How often the evaluation's judge (the gold preference, where it can score outside a run) agrees with the
    round's labels; None where it cannot judge them."""
    from sgpo.pipeline.annotator import round_agreement
    from sgpo.pipeline.judges import build_judge, judge_class

    name = ctx.cfg.evaluate.judge.name
    if hasattr(judge_class(name, "evaluate.judge.name"), "from_pipeline"):
        return None
    gold = build_judge(name, dict(ctx.cfg.evaluate.judge.options), None, option="evaluate.judge.name")
    measured = round_agreement(gold, pairs)
    return None if measured is None else measured.to_dict()
