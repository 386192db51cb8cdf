"""What docs/integrations.md says SGPODPOConfig accepts and refuses is what it does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="TRL is not installed; pip install 'sgpo[trl]' (the dev extra includes it)")

from sgpo.integrations.trl_config import SGPODPOConfig  # noqa: E402

PAGE = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"

# a valid non-default value of each option the page may list as accepted
ACCEPTED = {
    "ld_alpha": {"ld_alpha": 0.5},
    "f_divergence_type": {"f_divergence_type": "js_divergence"},
    "f_alpha_divergence_coef": {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
    "use_weighting": {"use_weighting": True},
    "loss_weights": {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]},
    "discopop_tau": {"loss_type": "discopop", "discopop_tau": 0.3},
    "sync_ref_model": {"sync_ref_model": True},
    "precompute_ref_log_probs": {"precompute_ref_log_probs": True},
}
# the combination the page names for each option it lists as refused
REFUSED = {
    "use_weighting": {"loss_type": "aot", "label_smoothing": 0.1, "use_weighting": True},
    "sync_ref_model": {"sync_ref_model": True, "precompute_ref_log_probs": True},
    "pair_by_pair": {"pair_by_pair": True, "logps_backend": "trl"},
    "ld_alpha": {"ld_alpha": 1.5},
}


FIELDS = set(SGPODPOConfig.__dataclass_fields__)


def options_in(text: str) -> set[str]:
    """The SGPODPOConfig options a text names in backticks (loss types and quoted values are not options)."""
    return {name for name in re.findall(r"`([a-z_]+)`", text) if name in FIELDS}


def sentences(needle: str) -> list[str]:
    text = re.sub(r"\s+", " ", PAGE.read_text())
    return [s for s in re.split(r"(?<=[.!?]) (?=[A-Z`*(-])", text) if needle.lower() in s.lower()]


def build(tmp_path: Path, **options: object) -> SGPODPOConfig:
    base = {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True, "bf16": False, "loss_type": "sigmoid"}
    return SGPODPOConfig(**{**base, **options})


def test_every_option_the_page_accepts_is_accepted(tmp_path: Path) -> None:
    (bullet,) = sentences("Accepted with TRL's meaning")
    names = options_in(bullet)
    assert {"ld_alpha", "f_divergence_type", "use_weighting"} <= names
    for name in sorted(names):
        assert name in ACCEPTED, f"docs/integrations.md accepts {name!r}: give the test a valid value for it"
        assert getattr(build(tmp_path, **ACCEPTED[name]), name) == ACCEPTED[name][name]


def test_every_option_the_page_refuses_is_refused(tmp_path: Path) -> None:
    names = set().union(*(options_in(s) for s in sentences("refused")))
    assert {"use_weighting", "sync_ref_model", "pair_by_pair"} <= names
    companions = {key for combination in REFUSED.values() for key in combination}
    for name in sorted(names):
        assert name in REFUSED or name in companions, (
            f"docs/integrations.md says {name!r} is refused: give the test the combination it names"
        )
        if name in REFUSED:
            with pytest.raises(ValueError, match=rf"^{name}: "):
                build(tmp_path, **REFUSED[name])
