"""SGPODPOTrainer's packed forward (logps_backend="sgpo", sgpo.packing) against trl.DPOTrainer.

Every pair of a batch goes through one ordinary forward as [prompt, chosen, rejected] with a prefix-sharing mask,
through the model's own call, so it runs where the pair-by-pair forward cannot: gradient checkpointing, several
processes (DDP), LoRA, the reference pass. Same tiny model, data and seed as TRL's trainer, three AdamW steps: logged
values to rel 1e-5 and parameters to 1e-4 (the tolerances of the other sgpo-backend parity tests).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from sgpo.integrations.trl import SGPODPOConfig, SGPODPOTrainer  # noqa: E402
from test_integration_trl import (  # noqa: E402
    PROMPTS,
    assert_same_training,
    config,
    one_full_batch_step,
    pairs,
    record_pair_margins,
    step_logs,
    train,
    train_in_two_processes,
)
from transformers import AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

# the tiny model is far too small to gain from threads
pytestmark = pytest.mark.usefixtures("single_thread")


def count_decoder_rows(trainer: SGPODPOTrainer) -> list[tuple[int, int]]:
    """(rows, length) of every decoder call during training."""
    calls: list[tuple[int, int]] = []
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    handle = model.get_decoder().register_forward_pre_hook(
        lambda module, a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        trainer.train()
    finally:
        handle.remove()
    return calls


@pytest.mark.parametrize(
    "setting",
    ["packed", "gradient_checkpointing", "lora", "precomputed", "ld_alpha_wpo", "gradient_accumulation"],
)
def test_the_packed_forward_reproduces_trl(tiny_model_dir: Path, tmp_path: Path, setting: str) -> None:
    kwargs: dict = {}
    shared: dict = {}
    ours: dict = {"logps_backend": "sgpo"}
    if setting == "packed":
        ours["pair_by_pair"] = False
    elif setting == "gradient_checkpointing":
        shared["gradient_checkpointing"] = True  # sgpo then packs by default
    elif setting == "lora":
        peft = pytest.importorskip("peft")
        kwargs["peft_config"] = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        ours["pair_by_pair"] = False
    elif setting == "precomputed":
        shared["precompute_ref_log_probs"] = True
        ours["pair_by_pair"] = False
    elif setting == "ld_alpha_wpo":
        # per-token quantities: LD-DPO splits each response at the shorter one's length, WPO reads log sum p^2
        shared.update(ld_alpha=0.5, use_weighting=True)
        ours["pair_by_pair"] = False
    else:
        shared.update(per_device_train_batch_size=2, gradient_accumulation_steps=2, gradient_checkpointing=True)
    theirs = train(DPOTrainer, config(DPOConfig, tmp_path, **shared), tiny_model_dir, pairs(), **kwargs)
    args = config(SGPODPOConfig, tmp_path, **shared, **ours)
    trainer = SGPODPOTrainer(
        model=str(tiny_model_dir),
        args=args,
        train_dataset=pairs(),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        **kwargs,
    )
    trainer.initial_params = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    record_pair_margins(trainer)
    calls = count_decoder_rows(trainer)
    assert_same_training(trainer, theirs, tolerance=1e-5, param_tolerance=1e-4)
    # each decoder call holds at most one row per pair (TRL's layout has two, the pair-by-pair forward one per call):
    # one call per micro-batch for the policy, plus one for the reference where it is the adapter disabled
    micro_batches = args.max_steps * args.gradient_accumulation_steps
    assert all(rows <= args.per_device_train_batch_size for rows, _ in calls), calls
    assert micro_batches <= len(calls) <= 2 * micro_batches + (len(PROMPTS) if setting == "precomputed" else 0), calls


def test_pair_by_pair_is_refused_where_it_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pair_by_pair: True forwards each prompt once through a key/value cache"):
        config(SGPODPOConfig, tmp_path, logps_backend="sgpo", pair_by_pair=True, gradient_checkpointing=True)
    with pytest.raises(ValueError, match="pair_by_pair: False chooses between sgpo's two forwards"):
        config(SGPODPOConfig, tmp_path, pair_by_pair=False)


@pytest.mark.slow
def test_two_ddp_processes_pack_and_match_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two DDP processes with 4 pairs each, packed (the default with several processes), take the steps of one
    process with all 8 pairs: the packed forward runs through DDP's wrapper, so the gradients are all-reduced."""
    options = one_full_batch_step(tmp_path, max_steps=2, per_device_train_batch_size=4, logps_backend="sgpo")
    keys = (
        "per_device_train_batch_size", "max_steps", "optim", "learning_rate", "lr_scheduler_type", "max_grad_norm",
        "beta", "logging_steps", "report_to", "use_cpu", "bf16", "save_strategy", "seed", "disable_tqdm",
        "logps_backend",
    )  # fmt: skip
    ddp = train_in_two_processes(tmp_path, tiny_model_dir, {key: getattr(options, key) for key in keys})
    # packed: one decoder call per step, one row per pair at most (TRL's layout would send 2 rows per pair)
    assert len(ddp["decoder_inputs"]) == 2 and all(rows <= 4 for rows, _ in ddp["decoder_inputs"]), ddp

    single = train(DPOTrainer, one_full_batch_step(tmp_path, max_steps=2), tiny_model_dir, pairs())
    assert [entry["loss"] for entry in ddp["logs"]] == pytest.approx([e["loss"] for e in step_logs(single)], rel=1e-5)
    for name, param in single.model.named_parameters():
        torch.testing.assert_close(torch.tensor(ddp["params"][name]), param.detach(), rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("family", ["lfm2", "nemotron_h"])
def test_stateful_architectures_take_the_full_sequence_forward_by_name(tmp_path: Path, family: str) -> None:
    """A model whose layers carry state along the sequence trains like TRL's trainer, through the full-sequence
    forward with the head on response tokens, and says so once, naming the layer."""
    import warnings

    import transformers
    from sgpo.models import build_tiny_tokenizer
    from test_packing import SMALL, STATEFUL

    name, extra, layer = STATEFUL[family]
    tokenizer = build_tiny_tokenizer()
    settings = {**SMALL, **extra, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    settings.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, name)(**settings)).float()
    model_dir = tmp_path / family
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    theirs = train(DPOTrainer, config(DPOConfig, tmp_path), model_dir, pairs())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = train(SGPODPOTrainer, config(SGPODPOConfig, tmp_path, logps_backend="sgpo"), model_dir, pairs())
    named = [w for w in caught if "logps_backend='sgpo'" in str(w.message)]
    assert len(named) == 1 and f"layer type {layer} carries state" in str(named[0].message), named
    assert_same_training(ours, theirs, tolerance=1e-5, param_tolerance=1e-4)


@pytest.mark.parametrize("norm", ["float16", "float32"])
def test_a_float16_model_trains_like_trl(tmp_path: Path, norm: str) -> None:
    """A float16 model through sgpo's fused head (float16 tiles, float32 sums) takes TRL's steps, also where its last
    norm is kept in float32 and so hands the float16 head a float32 hidden state. Plain SGD, since AdamW on float16
    states turns rounding differences into whole steps where a gradient is near 0."""
    import copy

    from sgpo.models import build_tiny_model
    from transformers import AutoModelForCausalLM

    model_dir = build_tiny_model(tmp_path / "tiny-fp16")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16)
    if norm == "float32":
        model.model.norm.float()
    options = dict(optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainers = []
    for cls, config_cls, extra in (
        (DPOTrainer, DPOConfig, {}),
        (SGPODPOTrainer, SGPODPOConfig, {"logps_backend": "sgpo"}),
    ):
        args = config(config_cls, tmp_path, **options, **extra)
        trainer = cls(model=copy.deepcopy(model), args=args, train_dataset=pairs(), processing_class=tokenizer)
        trainer.initial_params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train()
        trainers.append(trainer)
    theirs, ours = trainers
    assert ours.model.lm_head.weight.dtype == torch.float16
    for a, b in zip(step_logs(ours), step_logs(theirs), strict=True):
        for key in ("loss", "logps/chosen", "logps/rejected"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    their_params = dict(theirs.model.named_parameters())
    moved = max((their_params[n] - p).abs().max().item() for n, p in theirs.initial_params.items())
    assert moved > 1e-2
    for name, param in ours.model.named_parameters():
        # a few float16 units in the last place of weights of about 0.1
        torch.testing.assert_close(param, their_params[name], rtol=0, atol=2.5e-4, msg=name)
