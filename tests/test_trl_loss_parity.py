"""Every loss type and option of TRL 1.16's DPOTrainer through SGPODPOTrainer: the same tiny model, data and seed
trained for three AdamW steps by ``trl.DPOTrainer`` and by ``SGPODPOTrainer`` give the same logged losses and metrics
(rel 1e-5) and the same parameters (1e-4, 1% of a step), with TRL's log-prob head and with sgpo's (which forwards
each prompt once and, for per-pair losses, runs one pair at a time). Also: the bad settings TRL's table invites are
refused, naming the option, before a model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl", reason="TRL is not installed; pip install 'sgpo[trl]' (the dev extra includes it)")

from sgpo.integrations.trl import SGPODPOConfig, SGPODPOTrainer  # noqa: E402
from sgpo.loss_args import TRL_LOSS_TYPES  # noqa: E402
from test_integration_trl import (  # noqa: E402
    assert_same_logged,
    assert_same_training,
    config,
    pairs,
    step_logs,
    train,
)
from trl import DPOConfig, DPOTrainer  # noqa: E402

# label_smoothing for the losses that read it in TRL 1.16 (EXO needs one > 0)
SMOOTHING = {"exo_pair": 1e-3, "robust": 0.2, "aot": 0.1, "aot_unpaired": 0.1}
# TRL's metrics besides the loss: the logits and token accuracy come from TRL's head only
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen")
HEAD_METRICS = ("logits/chosen", "logits/rejected", "mean_token_accuracy", "entropy")

CASES: dict[str, dict] = {
    **{name: {"loss_type": name, "label_smoothing": SMOOTHING.get(name, 0.0)} for name in TRL_LOSS_TYPES},
    "ld_alpha": {"loss_type": "sigmoid", "ld_alpha": 0.3},
    "ld_alpha=0": {"loss_type": "ipo", "ld_alpha": 0.0},
    "forward_kl": {"loss_type": "sigmoid", "f_divergence_type": "forward_kl"},
    "js_divergence": {"loss_type": "hinge", "f_divergence_type": "js_divergence"},
    "alpha_divergence": {
        "loss_type": "sigmoid_norm",
        "f_divergence_type": "alpha_divergence",
        "f_alpha_divergence_coef": 0.3,
    },
    "wpo": {"loss_type": "sigmoid", "use_weighting": True},
    "discopop_tau": {"loss_type": "discopop", "discopop_tau": 0.3},
    # TRL's TR-DPO: the reference model moves towards the policy every step (the model given as a string id)
    "sync_ref_model": {
        "loss_type": "sigmoid",
        "sync_ref_model": True,
        "ref_model_sync_steps": 1,
        "ref_model_mixup_alpha": 0.5,
    },
    # TRL's documented combinations: RPO and MPO
    "rpo": {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]},
    "mpo": {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
    # (TRL 1.16 itself fails on sft with use_weighting: it scales an expanded tensor in place)
    "rpo+ld": {"loss_type": ["sigmoid", "sft"], "ld_alpha": 0.5},
    "wpo+ld+f": {
        "loss_type": "exo_pair",
        "label_smoothing": 0.01,
        "use_weighting": True,
        "ld_alpha": 0.5,
        "f_divergence_type": "js_divergence",
    },
}

_theirs: dict[str, DPOTrainer] = {}


def trl_run(case: str, model_dir: Path, tmp_path: Path) -> DPOTrainer:
    """TRL's run of a case, shared by both of sgpo's log-prob backends."""
    if case not in _theirs:
        _theirs[case] = train(DPOTrainer, config(DPOConfig, tmp_path, **CASES[case]), model_dir, pairs())
    return _theirs[case]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _theirs.clear()


@pytest.mark.parametrize("logps_backend", ["trl", "sgpo"])
@pytest.mark.parametrize("case", list(CASES))
def test_trains_like_trl(tiny_model_dir: Path, tmp_path: Path, case: str, logps_backend: str) -> None:
    theirs = trl_run(case, tiny_model_dir, tmp_path)
    args = config(SGPODPOConfig, tmp_path, logps_backend=logps_backend, **CASES[case])
    ours = train(SGPODPOTrainer, args, tiny_model_dir, pairs())
    assert_same_training(ours, theirs, tolerance=1e-5, param_tolerance=1e-4)
    keys = METRICS + (HEAD_METRICS if logps_backend == "trl" else ())
    for step, (a, b) in enumerate(zip(step_logs(ours), step_logs(theirs)), start=1):
        for key in keys:
            assert_same_logged(ours, a, b, step, key, 1e-5)


def test_each_option_changes_the_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The options are not silently dropped: each case's loss differs from plain DPO's at some step."""
    plain = [entry["loss"] for entry in step_logs(trl_run("sigmoid", tiny_model_dir, tmp_path))]
    for case in ("ld_alpha", "forward_kl", "wpo", "rpo", "sync_ref_model"):
        losses = [entry["loss"] for entry in step_logs(trl_run(case, tiny_model_dir, tmp_path))]
        assert max(abs(a - b) for a, b in zip(losses, plain)) > 1e-4, case


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"loss_type": "dpo"}, r"loss_type: \['dpo'\] are not loss types; expected some of sigmoid, hinge"),
        (
            {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]},
            r"loss_weights: got 1 weights \[1.0\] for 2 loss types \['sigmoid', 'sft'\]; expected one weight per",
        ),
        ({"ld_alpha": 1.5}, r"ld_alpha: .*expected None or a number in \[0, 1\], got 1.5"),
        ({"ld_alpha": -0.1}, r"ld_alpha: .*got -0.1"),
        ({"f_divergence_type": "kl"}, r"f_divergence_type: unknown value 'kl'; expected one of reverse_kl, forward_kl"),
        (
            {"loss_type": "bco_pair", "f_divergence_type": "forward_kl"},
            r"f_divergence_type: 'forward_kl' is defined only for .*got loss_type='bco_pair'",
        ),
        ({"loss_type": "discopop", "discopop_tau": 0.0}, r"discopop_tau: expected a finite number > 0, got 0.0"),
        ({"discopop_tau": -1.0}, r"discopop_tau: expected a finite number > 0, got -1.0"),
        ({"loss_type": "aot", "use_weighting": True}, r"use_weighting: WPO weighs each pair, but \['aot'\] sort"),
        (
            {"loss_type": "exo_pair"},
            r"label_smoothing must be > 0 for loss_type='exo_pair' \(EXO's epsilon\), got 0.0",
        ),
        (
            {"loss_type": "robust", "label_smoothing": 0.5},
            r"label_smoothing must lie in \[0.0, 0.5\) for loss_type='robust'",
        ),
        ({"loss_type": "hinge", "label_smoothing": 0.1}, r"label_smoothing: only .* use it; got 0.1"),
        (
            {"sync_ref_model": True, "precompute_ref_log_probs": True},
            r"sync_ref_model: True moves the reference .*precompute_ref_log_probs",
        ),
    ],
)
def test_bad_settings_fail_in_the_config(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(SGPODPOConfig, tmp_path, **options)


def test_sync_ref_model_with_peft_fails_before_the_model_loads(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    args = config(SGPODPOConfig, tmp_path, sync_ref_model=True)
    # a model path that does not exist: the error must come before anything tries to load it
    with pytest.raises(ValueError, match="sync_ref_model: True needs a reference model to move"):
        SGPODPOTrainer(
            str(tmp_path / "no-such-model"), args=args, train_dataset=pairs(), peft_config=peft.LoraConfig(r=4)
        )
