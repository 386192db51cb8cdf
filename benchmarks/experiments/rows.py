"""The paper table's rows: each row's runs, as overrides of the task's recipe, and which runs rows share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

INITIAL = "SmolLM2-135M-Instruct"
FLIP_FRACTION = 0.25

# iterative runs: the paper's self-annotation by the implicit reward; the paper's code sets max_shift = epsilon
SSAPO = ["method=ssapo", "train.loss_type=ssapo", "judge.name=implicit_reward"]
DPO = ["method=dpo", "rounds=0", "train.loss_type=sigmoid"]

# a fixed training budget for every method: the default recipe's LoRA at learning rates that move a 135M model within
# the few optimizer steps that 16 seed pairs and a few dozen prompts per round give (batches of 4 pairs)
TRAIN_BUDGET = [
    "train.batch_size=4",
    "train.per_device_batch_size=4",
    "train.learning_rate=2e-4",
    "round0.learning_rate=5e-4",
    "round0.epochs=3",
]

EPSILONS = (0.0, 0.005, 0.01, 0.03, 0.05, 0.1)
# row 12's sweep of the uncapped follower, and its control
UNCAPPED_PROBABILITY = (0.01, 0.05, 0.1)
UNCAPPED_MARGIN = (0.05, 0.1)
SOFT_TRIM = ["method=ssapo", "train.loss_type=sigmoid", "judge.name=implicit_reward", "follower.apply=soft_trim"]
MARGIN_DROP = ["method=ssapo", "train.loss_type=sigmoid", "judge.name=implicit_reward", "follower.apply=margin_drop"]
SWEEP_ROW = 12
GATE = "judge.options.gate=on_task"
# row 10: half, the chosen and twice the chosen seed size (hidden: 1.9%, 3.8% and 7.7% of the 416 pool prompts)
SEED_SCALES = (0.5, 1.0, 2.0)
# the same runs appear in several rows; each is trained once
SAME_RUN = {"eps_0": "iter_dpo", "eps_0.01": "ssapo_prob", "size_dpo_x1": "dpo_seed", "size_ssapo_x1": "ssapo_prob"}


def hidden_budget() -> list[str]:
    """The hidden recipe's training settings as overrides of the default recipe (``--train-settings hidden``): learning
    rates, batches, round 0's epochs and the annotator's options, so the verifiable track runs side by side with the
    hidden one."""
    from sgpo.pipeline import load_config

    h = load_config("hidden", [])
    return [
        f"train.learning_rate={h.train.learning_rate}",
        f"train.batch_size={h.train.batch_size}",
        f"train.per_device_batch_size={h.train.per_device_batch_size}",
        f"round0.learning_rate={h.round0.learning_rate}",
        f"round0.epochs={h.round0.epochs}",
        f"judge.options={json.dumps(dict(h.judge.options))}",
    ]


def track_budget(train_settings: str) -> list[str]:
    """The verifiable track's training settings: its own (``--train-settings track``) or the hidden recipe's."""
    return hidden_budget() if train_settings == "hidden" else TRAIN_BUDGET


def ssapo(epsilon: float, *extra: str) -> list[str]:
    return [*SSAPO, f"follower.epsilon={epsilon}", f"follower.max_shift={epsilon}", *extra]


@dataclass(frozen=True)
class Variant:
    row: int
    name: str
    label: str
    overrides: tuple[str, ...]
    # "default" (the seed), "flipped" (25% of it swapped) or "gold" (the seed plus the rounds' gold labels)
    seed_pairs: str = "default"
    # the seed's size as a multiple of --seed-size (row 10): its first pairs, a subset of every larger seed
    seed_scale: float = 1.0

    @property
    def iterative(self) -> bool:
        return "method=dpo" not in self.overrides

    @property
    def donor(self) -> str | None:
        """The DPO run whose round 0 an iterative run starts from (round 0 is the same for every such run)."""
        if not self.iterative or "round0.enabled=false" in self.overrides:
            return None
        if self.seed_pairs == "flipped":
            return "flip_dpo"
        return "dpo_seed" if self.seed_scale == 1.0 else f"size_dpo_x{self.seed_scale:g}"


def variants(gold_judge: str = "verifiable") -> list[Variant]:
    """Every row of the table: which runs it needs and how each differs from the task's recipe."""
    sppo = ("method=sppo", "train.loss_type=sppo", "generation.num_samples=5")
    v = [
        Variant(2, "dpo_seed", "DPO, seed only", tuple(DPO)),
        Variant(3, "dpo_gold", "DPO, 100% gold labels (seed + the rounds' prompts)", tuple(DPO), seed_pairs="gold"),
        Variant(4, "iter_dpo", "iterative self-annotated DPO (eps = 0)", tuple(ssapo(0.0))),
        Variant(5, "ssapo_prob", "SSAPO eps = 0.01, K = 6, probability space", tuple(ssapo(0.01))),
        Variant(
            5, "ssapo_margin", "SSAPO eps = 0.01, K = 6, margin space", tuple(ssapo(0.01, "follower.space=margin"))
        ),
        Variant(
            6,
            "ssapo_paper",
            "SSAPO eps = 0.01, K = 6, the paper's inexact follower",
            tuple(ssapo(0.01, "follower.backend=paper")),
        ),
        Variant(
            7,
            "sppo_self",
            "SPPO, win probabilities from the self-annotator (implicit reward, K = 5), after DPO on the seed",
            (*sppo, "judge.name=implicit_reward"),
        ),
        Variant(
            7,
            "sppo",
            f"SPPO, the gold judge ({gold_judge}) as preference model on every sample (K = 5): sees gold labels",
            # SPPO on gold starts from the instruct model itself, as in its paper: no DPO round on the seed
            (*sppo, f"judge.name={gold_judge}", "judge.options={}", "round0.enabled=false"),
        ),
    ]
    v += [Variant(8, f"eps_{e:g}", f"SSAPO eps = {e:g}", tuple(ssapo(e))) for e in EPSILONS]
    # row 11: rows 4 and 5 with the on-task gate on the annotator (judge.options.gate=on_task)
    v += [
        Variant(11, "iter_dpo_gate", "iterative self-annotated DPO (eps = 0), annotator with the on-task gate",
                tuple(ssapo(0.0, GATE))),
        Variant(11, "ssapo_prob_gate", "SSAPO eps = 0.01, probability space, annotator with the on-task gate",
                tuple(ssapo(0.01, GATE))),
    ]  # fmt: skip
    v += [
        Variant(9, "flip_dpo", "25% seed labels flipped: DPO", tuple(DPO), seed_pairs="flipped"),
        Variant(
            9,
            "flip_rdpo",
            "25% seed labels flipped: rDPO (robust, flip rate 0.25)",
            (*DPO[:2], "train.loss_type=robust", "round0.loss_type=robust", f"train.label_smoothing={FLIP_FRACTION}"),
            seed_pairs="flipped",
        ),
        Variant(
            9,
            "flip_cdpo",
            "25% seed labels flipped: cDPO (label smoothing 0.25)",
            (*DPO, f"train.label_smoothing={FLIP_FRACTION}"),
            seed_pairs="flipped",
        ),
        Variant(9, "flip_ssapo", "25% seed labels flipped: SSAPO eps = 0.01", tuple(ssapo(0.01)), seed_pairs="flipped"),
    ]
    # row 12: the follower without the paper's cap (max_shift null), and the capped follower's soft trim without its
    # shifts: each round pair's DPO loss weighted by the mass the worst case at epsilon 0.1 leaves it (a control)
    v.append(
        Variant(
            12,
            "soft_trim_0.1",
            "soft trim: DPO on the rounds, each pair weighted by the mass the capped follower (eps = 0.1) leaves it",
            (*SOFT_TRIM, "follower.epsilon=0.1", "follower.max_shift=0.1"),
        )
    )
    v += [
        Variant(12, f"uncapped_{space}_{e:g}", f"SSAPO eps = {e:g}, {space} space, uncapped",
                (*SSAPO, f"follower.epsilon={e}", "follower.max_shift=null", f"follower.space={space}"))
        for space, epsilons in (("probability", UNCAPPED_PROBABILITY), ("margin", UNCAPPED_MARGIN))
        for e in epsilons
    ]  # fmt: skip
    # the uncapped follower's trim: its attacked pairs (lowest margins, whole mass moved) weighted out of the DPO loss
    v.append(
        Variant(
            12,
            "trim_uncapped_0.1",
            "trim: DPO on the rounds, each pair weighted by the mass the uncapped follower (eps = 0.1) leaves it",
            (*SOFT_TRIM, "follower.epsilon=0.1", "follower.max_shift=null"),
        )
    )
    # the plain baseline of that detector: as many of each round's lowest-margin pairs as the uncapped follower
    # (eps = 0.1) attacks, dropped from the DPO loss without solving anything else
    v.append(
        Variant(
            12,
            "margin_drop_0.1",
            "margin drop: DPO on the rounds without the k lowest-margin pairs, k = the uncapped follower's (eps = 0.1)",
            (*MARGIN_DROP, "follower.epsilon=0.1", "follower.max_shift=null"),
        )
    )
    for scale in SEED_SCALES:
        # at x1 these are rows 2 and 5's runs (SAME_RUN)
        v += [
            Variant(10, f"size_dpo_x{scale:g}", f"seed x{scale:g}: DPO", tuple(DPO), seed_scale=scale),
            Variant(
                10, f"size_ssapo_x{scale:g}", f"seed x{scale:g}: SSAPO eps = 0.01", tuple(ssapo(0.01)), seed_scale=scale
            ),
        ]
    return v


def run_name(name: str, seed: int) -> str:
    """The run directory (and evaluation) of row ``name`` on ``seed``: another row's when the two share a run."""
    return f"{SAME_RUN.get(name, name)}_s{seed}"


def lookup(results: dict[str, Any], name: str, seed: int) -> dict[str, Any] | None:
    """A row's results on ``seed``; a row that is another row's run (SAME_RUN) reads that run's."""
    return results.get(f"{name}_s{seed}") or results.get(f"{SAME_RUN.get(name)}_s{seed}")
