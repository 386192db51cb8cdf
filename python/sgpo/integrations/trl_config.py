"""``SGPODPOConfig``: TRL's ``DPOConfig`` with sgpo's options, every setting checked before a model loads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from packaging.specifiers import SpecifierSet

from sgpo.follower import EPSILON_CAP
from sgpo.loss_args import BATCH_COUPLED, LOSS_TYPES, SMOOTHING, SPACES, check_label_smoothing, check_loss_options

try:
    import trl
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.utils import use_adapter
except ImportError as err:
    raise ImportError("sgpo.integrations.trl needs TRL: pip install 'sgpo[trl]'") from err

# The overridden surface (compute_loss, compute_ref_log_probs, the fused_lm_head forward, _metrics,
# _set_signature_columns_if_needed) is TRL 1.x's; keep in step with the `trl` extra in pyproject.toml.
SUPPORTED_TRL = ">=1.0,<2"

if not SpecifierSet(SUPPORTED_TRL).contains(trl.__version__, prereleases=True):
    raise ImportError(
        f"sgpo.integrations.trl supports trl{SUPPORTED_TRL}; trl {trl.__version__} is installed "
        f"(pip install 'trl{SUPPORTED_TRL}')"
    )

__all__ = ["LOGPS_BACKENDS", "SSAPO_WORST_CASE_MODES", "SUPPORTED_TRL", "DPOTrainer", "SGPODPOConfig", "use_adapter"]

SSAPO_WORST_CASE_MODES: tuple[str, ...] = ("batch", "columns")
LOGPS_BACKENDS: tuple[str, ...] = ("trl", "sgpo")


@dataclass
class SGPODPOConfig(DPOConfig):
    """TRL's ``DPOConfig`` plus sgpo's options.

    ``loss_type`` takes every loss of :data:`sgpo.ops.LOSS_TYPES` (TRL 1.16's fifteen, sgpo's ``sppo`` and ``ssapo``,
    the reference-free ``simpo``, ``cpo`` and ``orpo``); several combine with ``loss_weights`` as in TRL, and
    ``ld_alpha``, ``f_divergence_type``, ``use_weighting`` and ``discopop_tau`` mean what they mean there. Two meanings
    differ from TRL 1.x: ``sigmoid`` with ``label_smoothing > 0`` is conservative DPO (TRL 1.x ignores it), and
    ``ipo`` is length-normalised like TRL's only while ``ipo_length_normalized`` is true (the default).
    """

    logps_backend: str = field(
        default="trl",
        metadata={
            "help": "Op computing the log-probs: 'trl' (TRL's fused LM head) or 'sgpo' "
            "(sgpo.ops.fused_linear_token_logps on response tokens only, each prompt forwarded once per pair, "
            "and for per-pair losses forward and backward one pair at a time).",
            "choices": list(LOGPS_BACKENDS),
        },
    )
    pair_by_pair: bool | None = field(
        default=None,
        metadata={
            "help": "With logps_backend='sgpo': True runs forward and backward one pair at a time, each prompt through "
            "a key/value cache (one process, no gradient checkpointing, a loss that is a mean of per-pair terms); "
            "False packs every pair of the batch as [prompt, chosen, rejected] into one forward with a "
            "prefix-sharing attention mask (any number of processes, DDP, FSDP2, gradient checkpointing). "
            "Default: pair by pair where it applies, packed elsewhere."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward. Default: on with logps_backend='trl' (TRL's default), off "
            "with 'sgpo', whose step holds one pair's activations at a time and needs the cache checkpointing disables "
            "to forward each prompt once."
        },
    )
    ipo_length_normalized: bool = field(
        default=True,
        metadata={"help": "ipo divides each log-ratio by its completion's token count, as TRL's ipo does."},
    )
    simpo_gamma: float = field(
        default=0.5, metadata={"help": "SimPO's target margin gamma (loss_type 'simpo'), as in TRL's CPOConfig."}
    )
    ssapo_worst_case: str = field(
        default="batch",
        metadata={
            "help": "Where ssapo's worst case comes from: 'batch' solves the follower on each step's all-gathered "
            "margins; 'columns' reads a worst case precomputed over the whole dataset from its columns.",
            "choices": list(SSAPO_WORST_CASE_MODES),
        },
    )
    ssapo_epsilon: float = field(
        default=0.01, metadata={"help": "Radius of the follower's Wasserstein ball (the paper's epsilon)."}
    )
    ssapo_pieces: int = field(default=6, metadata={"help": "Tangent pieces K of the follower's loss."})
    ssapo_space: str = field(
        default="probability",
        metadata={"help": "Space of the follower and the ssapo loss.", "choices": list(SPACES)},
    )
    ssapo_group_size: int | None = field(
        default=None, metadata={"help": "Solve the follower in consecutive groups of this many margins."}
    )
    ssapo_max_shift: float | str | None = field(
        default=EPSILON_CAP,
        metadata={
            "help": "Cap on each point's displacement: 'epsilon' (the default, the paper's code's cap: "
            "ssapo_epsilon), a number, or None for the uncapped program (from the command line: none)."
        },
    )
    ssapo_backend: str = field(default="auto", metadata={"help": "Backend of sgpo.worst_case."})
    worst_case_weights_column: str = field(
        default="worst_case_weights",
        metadata={"help": "Dataset column with each pair's K worst-case weights (ssapo_worst_case='columns')."},
    )
    worst_case_shifts_column: str = field(
        default="worst_case_shifts",
        metadata={"help": "Dataset column with each pair's K worst-case shifts (ssapo_worst_case='columns')."},
    )

    def __post_init__(self) -> None:
        if self.gradient_checkpointing is None:
            self.gradient_checkpointing = self.logps_backend == "trl"
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        # checked before DPOConfig's own checks, so each message names the value and what is expected
        self._check_losses()
        super().__post_init__()
        if self.logps_backend not in LOGPS_BACKENDS:
            raise ValueError(f"logps_backend: expected one of {', '.join(LOGPS_BACKENDS)}, got {self.logps_backend!r}")
        if self.pair_by_pair is not None and self.logps_backend != "sgpo":
            raise ValueError(
                f"pair_by_pair: {self.pair_by_pair} chooses between sgpo's two forwards, which need "
                f"logps_backend='sgpo', got logps_backend={self.logps_backend!r}"
            )
        if self.pair_by_pair and self.gradient_checkpointing:
            raise ValueError(
                "pair_by_pair: True forwards each prompt once through a key/value cache, which gradient checkpointing "
                "turns off; expected gradient_checkpointing=False, or pair_by_pair=False/None (the packed forward)"
            )
        if self.sync_ref_model and self.precompute_ref_log_probs:
            raise ValueError(
                "sync_ref_model: True moves the reference during training, which makes precompute_ref_log_probs=True "
                "stale; expected sync_ref_model=False or precompute_ref_log_probs=False"
            )
        self._check_ssapo()

    def _check_losses(self) -> None:
        unknown = [name for name in self.loss_type if name not in LOSS_TYPES]
        if unknown:
            raise ValueError(f"loss_type: {unknown} are not loss types; expected some of {', '.join(LOSS_TYPES)}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"loss_weights: got {len(self.loss_weights)} weights {list(self.loss_weights)} for "
                f"{len(self.loss_type)} loss types {self.loss_type}; expected one weight per loss type"
            )
        for loss_type in self.loss_type:
            check_loss_options(
                loss_type,
                f_divergence_type=self.f_divergence_type,
                f_alpha_divergence_coef=self.f_alpha_divergence_coef,
                discopop_tau=self.discopop_tau,
                simpo_gamma=self.simpo_gamma,
            )
        if self.ld_alpha is not None and not (isinstance(self.ld_alpha, (int, float)) and 0.0 <= self.ld_alpha <= 1.0):
            raise ValueError(
                f"ld_alpha: LD-DPO's weight of the longer response's tail; expected None or a number "
                f"in [0, 1], got {self.ld_alpha!r}"
            )
        coupled = [name for name in self.loss_type if name in BATCH_COUPLED]
        if self.use_weighting and coupled:
            raise ValueError(
                f"use_weighting: WPO weighs each pair, but {coupled} sort the batch so no loss term belongs to a pair; "
                "expected use_weighting=False with these losses"
            )
        smoothed = [name for name in self.loss_type if name in SMOOTHING]
        if self.label_smoothing != 0.0 and not smoothed:
            raise ValueError(
                f"label_smoothing: only {', '.join(SMOOTHING)} use it; got {self.label_smoothing!r} "
                f"with loss_type={self.loss_type}"
            )
        for name in smoothed:
            check_label_smoothing(name, self.label_smoothing)

    def _check_ssapo(self) -> None:
        if self.ssapo_worst_case not in SSAPO_WORST_CASE_MODES:
            raise ValueError(
                f"ssapo_worst_case: expected one of {', '.join(SSAPO_WORST_CASE_MODES)}, got {self.ssapo_worst_case!r}"
            )
        if self.ssapo_space not in SPACES:
            raise ValueError(f"ssapo_space: expected one of {', '.join(SPACES)}, got {self.ssapo_space!r}")
        if not (math.isfinite(self.ssapo_epsilon) and self.ssapo_epsilon >= 0):
            raise ValueError(f"ssapo_epsilon: expected a finite number >= 0, got {self.ssapo_epsilon!r}")
        if self.ssapo_pieces < 1:
            raise ValueError(f"ssapo_pieces: expected an integer >= 1, got {self.ssapo_pieces!r}")
        self.ssapo_max_shift = _max_shift(self.ssapo_max_shift)
        if self.ssapo_group_size is not None and self.ssapo_group_size < 1:
            raise ValueError(f"ssapo_group_size: expected None or an integer >= 1, got {self.ssapo_group_size!r}")


def _max_shift(value: float | str | None) -> float | str | None:
    """``ssapo_max_shift`` as :func:`sgpo.worst_case` takes it; TRL's command line hands every value over as text."""
    if value is None or value == EPSILON_CAP:
        return value
    if isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number >= 0:
        raise ValueError(
            f"ssapo_max_shift: expected {EPSILON_CAP!r} (cap at ssapo_epsilon), a number >= 0, or None (uncapped), "
            f"got {value!r}"
        )
    return number
