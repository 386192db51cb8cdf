"""sgpo's losses inside TRL's DPOTrainer: parity with TRL's own losses, ssapo's two modes, sppo's columns.

Parity: the same tiny model, data and seed trained for three AdamW steps by ``trl.DPOTrainer`` and by
``SGPODPOTrainer`` give the same logged losses, rewards and log-probs to rel 1e-6 and the same parameters to 1e-6 (in
practice bit-identical: both compute each loss in float32 from the same log-probs); with ``logps_backend="sgpo"``
(sgpo's fused log-prob op instead of TRL's head) logged values to rel 1e-5 and parameters to 1e-4 (1% of a step).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl", reason="TRL is not installed; pip install 'sgpo[trl]' (the dev extra includes it)")

import sgpo  # noqa: E402
from conftest import launch_two_processes  # noqa: E402
from datasets import Dataset  # noqa: E402
from sgpo.integrations.trl import (  # noqa: E402
    SGPODPOConfig,
    SGPODPOTrainer,
    add_worst_case_columns,
)
from sgpo.models import build_tiny_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

PROMPTS = ["hi ", "say a word: ", "ok? ", "no. ", "2+2=", "colour: ", "name one: ", "yes or no? "]
CHOSEN = ["hello", "good", "fine", "right", "4", "blue", "Ada", "yes"]
REJECTED = ["nope!", "bad", "meh..", "wrong", "five", "??", "x", "maybe so"]
LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen")


def pairs(**columns: list) -> Dataset:
    return Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED, **columns})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model is far too small to gain from threads; on a loaded 2-core machine they cost 5-10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model (seed 1) used as an explicit reference, so margins are far from 0 at step 1."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-reference"), seed=1)


def config(cls: type, tmp_path: Path, **overrides) -> DPOConfig:
    options = dict(
        output_dir=str(tmp_path / cls.__name__),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    options.update(overrides)
    return cls(**options)


def train(trainer_cls: type, args: DPOConfig, model_dir: Path, dataset: Dataset, **kwargs) -> DPOTrainer:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = trainer_cls(model=str(model_dir), args=args, train_dataset=dataset, processing_class=tokenizer, **kwargs)
    trainer.initial_params = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    record_pair_margins(trainer)
    trainer.train()
    return trainer


def record_pair_margins(trainer: DPOTrainer) -> None:
    """Keep, per optimizer step, each logged micro-batch's per-pair reward margins and the float noise each margin
    carries (``trainer.pair_margins``: step -> list of (margins, noise)), for the sign metrics' comparison."""
    if not isinstance(trainer, SGPODPOTrainer):
        return
    trainer.pair_margins = {}
    log_metrics = trainer._log_metrics

    def recording(mode: str, inputs, outputs, seq_len: int, logps) -> None:
        chosen, rejected, ref_chosen, ref_rejected = (t.detach().double() for t in logps)
        margins = trainer.beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
        # float32 sums of log-probs carry a rounding error of about eps x their magnitude; 100 eps is far above it
        noise = (
            trainer.beta
            * 100
            * torch.finfo(torch.float32).eps
            * sum(t.abs() for t in (chosen, rejected, ref_chosen, ref_rejected))
        )
        if mode == "train":
            trainer.pair_margins.setdefault(trainer.state.global_step + 1, []).append((margins, noise))
        log_metrics(mode, inputs, outputs, seq_len, logps)

    trainer._log_metrics = recording


def step_logs(trainer: DPOTrainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def accuracy_slack(trainer: DPOTrainer, step: int) -> float:
    """How far a correct implementation's ``rewards/accuracies`` may differ from another's at ``step``: the share of
    pairs whose margin is within float noise of 0 (the sign of noise is no behaviour), averaged over the step's
    micro-batches as the logged value is. 0 when every margin is clear of noise, so the metrics must then be equal."""
    records = getattr(trainer, "pair_margins", {}).get(step)
    if not records:
        return 0.0
    shares = [float((margins.abs() <= noise).double().mean()) for margins, noise in records]
    return sum(shares) / len(shares)


def reward_rounding(trainer: DPOTrainer, step: int) -> float:
    """The float32 rounding a logged reward carries: a reward is beta times a difference of summed log-probs, so its
    error scales with those sums, not with the (much smaller) reward. A tenth of the sign metrics' noise bound, i.e.
    10 eps x beta x the summed log-probs' magnitude, averaged over the step's pairs; 0 without records."""
    records = getattr(trainer, "pair_margins", {}).get(step)
    if not records:
        return 0.0
    return sum(float(noise.mean()) for _, noise in records) / len(records) / 10


def assert_same_logged(ours: DPOTrainer, a: dict, b: dict, step: int, key: str, tolerance: float) -> None:
    """One logged metric of ``ours`` (a) against TRL's (b) at ``step``: values to ``tolerance`` (rewards also to their
    float32 rounding); reward accuracy, a count of signs, exactly, except for pairs whose margin is float noise."""
    if key == "rewards/accuracies":
        slack = accuracy_slack(ours, step)
        assert abs(a[key] - b[key]) <= slack + 1e-9, f"step {step}: {key} {a[key]} vs {b[key]}, slack {slack}"
    elif key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        rounding = reward_rounding(ours, step)
        assert a[key] == pytest.approx(b[key], rel=tolerance, abs=max(tolerance / 10, rounding)), (
            f"step {step}: {key}, rounding {rounding:.2g}"
        )
    else:
        assert a[key] == pytest.approx(b[key], rel=tolerance, abs=tolerance / 10), f"step {step}: {key}"


def assert_same_training(
    ours: DPOTrainer, theirs: DPOTrainer, tolerance: float = 1e-6, param_tolerance: float = 1e-6
) -> None:
    ours_logs, their_logs = step_logs(ours), step_logs(theirs)
    assert len(ours_logs) == len(their_logs) == 3
    for step, (a, b) in enumerate(zip(ours_logs, their_logs), start=1):
        for key in LOGGED:
            assert_same_logged(ours, a, b, step, key, tolerance)
    theirs_params = dict(theirs.model.named_parameters())
    for name, param in ours.model.named_parameters():
        torch.testing.assert_close(param, theirs_params[name], rtol=0, atol=param_tolerance, msg=name)
    moved = max((theirs_params[n] - p).abs().max().item() for n, p in theirs.initial_params.items())
    assert moved > 1e-4, "training did not move the parameters; the comparison would be vacuous"


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing", "logps_backend"),
    [
        ("sigmoid", 0.0, "trl"),
        ("hinge", 0.0, "trl"),
        ("ipo", 0.0, "trl"),
        ("robust", 0.2, "trl"),
        ("sppo_hard", 0.0, "trl"),
        ("sigmoid", 0.0, "sgpo"),
        ("ipo", 0.0, "sgpo"),
    ],
)
def test_reproduces_trl_losses_and_parameters(
    tiny_model_dir: Path, tmp_path: Path, loss_type: str, label_smoothing: float, logps_backend: str
) -> None:
    dataset = pairs()
    options = dict(loss_type=loss_type, label_smoothing=label_smoothing)
    theirs = train(DPOTrainer, config(DPOConfig, tmp_path, **options), tiny_model_dir, dataset)
    args = config(SGPODPOConfig, tmp_path, logps_backend=logps_backend, **options)
    ours = train(SGPODPOTrainer, args, tiny_model_dir, dataset)
    if logps_backend == "trl":
        assert_same_training(ours, theirs)
    else:
        # sgpo's fused op sums the same float32 terms in another order than TRL's head; AdamW's normalised steps
        # (lr 1e-2) amplify that in parameters whose gradients are near 0, so those get 1% of a step
        assert_same_training(ours, theirs, tolerance=1e-5, param_tolerance=1e-4)


@pytest.mark.parametrize(
    ("reference", "logps_backend"),
    [("peft", "trl"), ("precomputed", "trl"), ("peft", "sgpo"), ("precomputed", "sgpo")],
)
def test_reproduces_trl_with_its_reference_setups(
    tiny_model_dir: Path, tmp_path: Path, reference: str, logps_backend: str
) -> None:
    dataset = pairs()
    kwargs, overrides = {}, {}
    if reference == "peft":
        peft = pytest.importorskip("peft")
        kwargs["peft_config"] = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    else:
        overrides["precompute_ref_log_probs"] = True
    theirs = train(DPOTrainer, config(DPOConfig, tmp_path, **overrides), tiny_model_dir, dataset, **kwargs)
    args = config(SGPODPOConfig, tmp_path, logps_backend=logps_backend, **overrides)
    ours = train(SGPODPOTrainer, args, tiny_model_dir, dataset, **kwargs)
    # the reference is the adapter disabled (PEFT) or the dataset's ref_*_logps columns: no reference model is kept
    assert ours.ref_model is None
    if reference == "precomputed":
        assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(ours.train_dataset.column_names)
    if logps_backend == "trl":
        assert_same_training(ours, theirs)
    else:
        assert_same_training(ours, theirs, tolerance=1e-5, param_tolerance=1e-4)


def test_sgpo_backend_matches_trl_with_gradient_accumulation(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Pair-by-pair backward inside each micro-batch, two micro-batches per step: TRL's gradient scaling kept."""
    options = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    theirs = train(DPOTrainer, config(DPOConfig, tmp_path, **options), tiny_model_dir, pairs())
    ours = train(
        SGPODPOTrainer, config(SGPODPOConfig, tmp_path, logps_backend="sgpo", **options), tiny_model_dir, pairs()
    )
    assert_same_training(ours, theirs, tolerance=1e-5, param_tolerance=1e-4)


def test_sgpo_backend_forwards_each_prompt_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The policy's decoder sees each pair's prompt alone (one row) and then its two responses (two rows)."""
    args = config(SGPODPOConfig, tmp_path, logps_backend="sgpo", precompute_ref_log_probs=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = SGPODPOTrainer(model=str(tiny_model_dir), args=args, train_dataset=pairs(), processing_class=tokenizer)
    rows: list[int] = []
    decoder = trainer.model.get_decoder()
    handle = decoder.register_forward_pre_hook(
        lambda module, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        trainer.train()
    finally:
        handle.remove()
    steps, pairs_per_step = args.max_steps, args.per_device_train_batch_size
    assert rows.count(1) == steps * pairs_per_step
    assert set(rows) <= {1, 2} and rows.count(2) >= 1


def hand_logps(model_dir: Path, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-probs of a collated TRL batch from the plain logits and sgpo.ops.sequence_logps."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    logps = sgpo.ops.sequence_logps(logits[:, :-1], labels[:, 1:])
    return logps.chunk(2), model


def one_full_batch_step(tmp_path: Path, **overrides) -> SGPODPOConfig:
    """One plain SGD step on all eight pairs at once, so the step's loss and update can be recomputed by hand."""
    options = dict(
        per_device_train_batch_size=len(PROMPTS),
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        beta=0.5,
    )
    options.update(overrides)
    return config(SGPODPOConfig, tmp_path, **options)


@pytest.mark.parametrize(("space", "logps_backend"), [("probability", "trl"), ("margin", "trl"), ("margin", "sgpo")])
def test_ssapo_batch_mode_equals_follower_then_loss_by_hand(
    tiny_model_dir: Path, reference_dir: Path, tmp_path: Path, space: str, logps_backend: str
) -> None:
    args = one_full_batch_step(
        tmp_path,
        loss_type="ssapo",
        ssapo_epsilon=0.05,
        ssapo_pieces=4,
        ssapo_space=space,
        logps_backend=logps_backend,
    )
    reference = AutoModelForCausalLM.from_pretrained(reference_dir)
    dataset = pairs()
    trainer = train(SGPODPOTrainer, args, tiny_model_dir, dataset, ref_model=reference)
    logged = step_logs(trainer)[0]

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(dataset))])
    (chosen, rejected), policy = hand_logps(tiny_model_dir, batch)
    with torch.no_grad():
        (ref_chosen, ref_rejected), _ = hand_logps(reference_dir, batch)
    margins = args.beta * ((chosen - ref_chosen) - (rejected - ref_rejected)).detach()
    follower_input = torch.sigmoid(margins) if space == "probability" else margins
    worst = sgpo.worst_case(follower_input, 0.05, pieces=4, space=space, max_shift="epsilon")
    assert torch.as_tensor(worst.shifts).abs().max() > 1e-4, "the follower moved nothing; the check would be vacuous"
    assert logged["ssapo/worst_case_value"] == pytest.approx(float(worst.value), rel=1e-5)
    options = dict(loss_type="ssapo", beta=args.beta, space=space)
    loss = sgpo.ops.preference_loss(chosen, rejected, ref_chosen, ref_rejected, worst_case=worst, **options)
    no_follower = sgpo.ops.preference_loss(
        chosen, rejected, ref_chosen, ref_rejected, worst_case=(torch.ones(8, 1), torch.zeros(8, 1)), **options
    )
    assert abs(loss.item() - no_follower.item()) > 1e-3
    assert logged["loss"] == pytest.approx(loss.item(), rel=1e-5)
    expected_shift = (torch.as_tensor(worst.weights) * torch.as_tensor(worst.shifts)).sum(-1).mean().item()
    assert logged["ssapo/shift"] == pytest.approx(expected_shift, rel=1e-5, abs=1e-7)

    # the update is the gradient of that loss, with the follower's answer held fixed (the Stackelberg leader step)
    loss.backward()
    trained = dict(trainer.model.named_parameters())
    for name, param in policy.named_parameters():
        expected = param.detach() - args.learning_rate * param.grad
        torch.testing.assert_close(trained[name].detach(), expected, rtol=1e-4, atol=1e-6, msg=name)


def test_ssapo_columns_mode_reads_the_precomputed_worst_case(
    tiny_model_dir: Path, reference_dir: Path, tmp_path: Path
) -> None:
    generator = torch.Generator().manual_seed(3)
    weights = torch.rand(len(PROMPTS), 3, generator=generator, dtype=torch.float64)
    weights = weights / weights.sum(-1, keepdim=True)
    shifts = 0.3 * torch.rand(len(PROMPTS), 3, generator=generator, dtype=torch.float64)
    dataset = add_worst_case_columns(pairs(), (weights, shifts))
    args = one_full_batch_step(tmp_path, loss_type="ssapo", ssapo_worst_case="columns")
    reference = AutoModelForCausalLM.from_pretrained(reference_dir)
    trainer = train(SGPODPOTrainer, args, tiny_model_dir, dataset, ref_model=reference)
    logged = step_logs(trainer)[0]

    # rows collated in dataset order; the trainer saw them shuffled, so it matches only if each row kept its own W, D
    rows = [trainer.train_dataset[i] for i in range(len(PROMPTS))]
    batch = trainer.data_collator(rows)
    torch.testing.assert_close(batch["worst_case_weights"], weights.float())
    with torch.no_grad():
        (chosen, rejected), _ = hand_logps(tiny_model_dir, batch)
        (ref_chosen, ref_rejected), _ = hand_logps(reference_dir, batch)
    expected = sgpo.ops.preference_loss(
        chosen, rejected, ref_chosen, ref_rejected, loss_type="ssapo", beta=args.beta, worst_case=(weights, shifts)
    )
    swapped = sgpo.ops.preference_loss(
        chosen,
        rejected,
        ref_chosen,
        ref_rejected,
        loss_type="ssapo",
        beta=args.beta,
        worst_case=(weights.roll(1, 0), shifts.roll(1, 0)),
    )
    assert abs(expected.item() - swapped.item()) > 1e-3
    assert logged["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert logged["ssapo/shift"] == pytest.approx((weights * shifts).sum(-1).mean().item(), rel=1e-5)


@pytest.mark.parametrize("names", [("chosen_win_prob", "rejected_win_prob"), ("chosen_probs_win", "chosen_probs_lose")])
def test_sppo_reads_win_probability_columns(
    tiny_model_dir: Path, reference_dir: Path, tmp_path: Path, names: tuple[str, str]
) -> None:
    p_win = [0.9, 0.8, 0.7, 0.6, 0.95, 0.55, 0.75, 0.85]
    p_lose = [0.1, 0.3, 0.2, 0.4, 0.05, 0.45, 0.25, 0.15]
    dataset = pairs(**{names[0]: p_win, names[1]: p_lose})
    args = one_full_batch_step(tmp_path, loss_type="sppo", precompute_ref_log_probs=True)
    reference = AutoModelForCausalLM.from_pretrained(reference_dir)
    trainer = train(SGPODPOTrainer, args, tiny_model_dir, dataset, ref_model=reference)
    logged = step_logs(trainer)[0]

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PROMPTS))])
    with torch.no_grad():
        (chosen, rejected), _ = hand_logps(tiny_model_dir, batch)
        (ref_chosen, ref_rejected), _ = hand_logps(reference_dir, batch)
    torch.testing.assert_close(batch["ref_chosen_logps"], ref_chosen, rtol=1e-5, atol=1e-4)
    expected = sgpo.ops.preference_loss(
        chosen,
        rejected,
        ref_chosen,
        ref_rejected,
        loss_type="sppo",
        beta=args.beta,
        chosen_win_prob=torch.tensor(p_win),
        rejected_win_prob=torch.tensor(p_lose),
    )
    assert logged["loss"] == pytest.approx(expected.item(), rel=1e-5)

    # a dataset handed to evaluate() gets its reference log-probs through the collator that carries the columns
    metrics = trainer.evaluate(pairs(**{names[0]: p_lose, names[1]: p_win}))
    assert math.isfinite(metrics["eval_loss"]) and "eval_rewards/margins" in metrics


def test_bad_configurations_name_the_argument(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match=r"loss_type: \['kto'\]"):
        config(SGPODPOConfig, tmp_path, loss_type="kto")
    with pytest.raises(ValueError, match="ssapo_worst_case"):
        config(SGPODPOConfig, tmp_path, loss_type="ssapo", ssapo_worst_case="dataset")
    with pytest.raises(ValueError, match="label_smoothing"):
        config(SGPODPOConfig, tmp_path, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="ld_alpha"):
        config(SGPODPOConfig, tmp_path, ld_alpha=1.5)
    with pytest.raises(ValueError, match="args: expected an sgpo.integrations.trl.SGPODPOConfig"):
        SGPODPOTrainer(str(tiny_model_dir), args=config(DPOConfig, tmp_path), train_dataset=pairs())
    with pytest.raises(ValueError, match="chosen_probs_win/chosen_probs_lose"):
        SGPODPOTrainer(
            str(tiny_model_dir),
            args=config(SGPODPOConfig, tmp_path, loss_type="sppo"),
            train_dataset=pairs(),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match=r"eval_dataset: the loss reads the columns \['chosen_probs_lose'"):
        SGPODPOTrainer(
            str(tiny_model_dir),
            args=config(SGPODPOConfig, tmp_path, loss_type="sppo"),
            train_dataset=pairs(chosen_win_prob=[0.6] * 8, rejected_win_prob=[0.4] * 8),
            eval_dataset=pairs(chosen_probs_win=[0.6] * 8, chosen_probs_lose=[0.4] * 8),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="'worst_case_weights'.*add_worst_case_columns"):
        SGPODPOTrainer(
            str(tiny_model_dir),
            args=config(SGPODPOConfig, tmp_path, loss_type="ssapo", ssapo_worst_case="columns"),
            train_dataset=pairs(),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match=r"worst_case: expected weights and shifts of shape \(8, K\)"):
        add_worst_case_columns(pairs(), (torch.ones(7, 2), torch.zeros(7, 2)))


DDP_WORKER = """
import json, sys
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from sgpo.integrations.trl import SGPODPOConfig, SGPODPOTrainer
from sgpo.pipeline import distributed

model_dir, out, rows, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
trainer = SGPODPOTrainer(
    model=model_dir,
    args=SGPODPOConfig(output_dir=out, **options),
    train_dataset=Dataset.from_dict(rows),
    processing_class=AutoTokenizer.from_pretrained(model_dir),
)
shapes = []
decoder = trainer.model.get_decoder()
decoder.register_forward_pre_hook(lambda m, a, kw: shapes.append(list(kw["input_ids"].shape)), with_kwargs=True)
trainer.train()
if trainer.accelerator.is_main_process:
    result = {
        "processes": trainer.accelerator.num_processes,
        "decoder_inputs": shapes,
        "logs": [entry for entry in trainer.state.log_history if "loss" in entry],
        "params": {name: p.detach().tolist() for name, p in trainer.model.named_parameters()},
    }
    with open(out + "/result.json", "w") as f:
        json.dump(result, f)
distributed.leave_together()
"""


def train_in_two_processes(tmp_path: Path, model_dir: Path, options: dict) -> dict:
    """SGPODPOTrainer on the eight pairs in two DDP processes (gloo) with ``options``: the main process's result."""
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    rows = {"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED}
    launch_two_processes(script, [str(model_dir), str(tmp_path / "ddp"), json.dumps(rows), json.dumps(options)], 300)
    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert ddp["processes"] == 2
    return ddp


@pytest.mark.slow
def test_ssapo_batch_mode_gathers_margins_across_processes(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two DDP processes with 4 pairs each take the same steps as one process with all 8: one follower per step."""
    # uncapped: under the default cap (max_shift = epsilon) every pair may move its whole budget, so the worst case
    # shifts each margin alone and one solve per half batch would equal one per batch; uncapped it does not
    ssapo = dict(loss_type="ssapo", ssapo_epsilon=0.05, ssapo_max_shift=None, max_steps=2)
    options = one_full_batch_step(tmp_path, per_device_train_batch_size=4, **ssapo)
    keys = (
        "per_device_train_batch_size",
        "max_steps",
        "optim",
        "learning_rate",
        "lr_scheduler_type",
        "max_grad_norm",
        "beta",
        "loss_type",
        "ssapo_epsilon",
        "ssapo_max_shift",
        "logging_steps",
        "report_to",
        "use_cpu",
        "bf16",
        "save_strategy",
        "seed",
        "disable_tqdm",
    )
    ddp = train_in_two_processes(tmp_path, tiny_model_dir, {key: getattr(options, key) for key in keys})

    single = train(
        SGPODPOTrainer,
        one_full_batch_step(tmp_path, **ssapo),
        tiny_model_dir,
        pairs(),
    )
    halves = train(
        SGPODPOTrainer,
        one_full_batch_step(tmp_path, ssapo_group_size=4, **ssapo),
        tiny_model_dir,
        pairs(),
    )
    single_losses = [entry["loss"] for entry in step_logs(single)]
    # step 2 is the first with margins away from 0: solving per half batch would give another loss
    assert abs(step_logs(halves)[1]["loss"] - single_losses[1]) > 1e-3
    assert [entry["loss"] for entry in ddp["logs"]] == pytest.approx(single_losses, rel=1e-5)
    for name, param in single.model.named_parameters():
        torch.testing.assert_close(torch.tensor(ddp["params"][name]), param.detach(), rtol=0, atol=1e-5, msg=name)


def test_supported_trl_range_matches_the_trl_extra() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    from sgpo.integrations.trl import SUPPORTED_TRL

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["trl"] == [f"trl{SUPPORTED_TRL}"]
