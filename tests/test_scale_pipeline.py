"""``sgpo run tiny`` under DeepSpeed ZeRO-3 and ZeRO-2 on CPU (2 gloo processes, DeepSpeed's CPU accelerator),
launched as the 7B recipes are: ``accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml``.

CPU overrides, and nothing else: ``--num_processes 2 --mixed_precision no`` on the command line (the pipeline picks
DeepSpeed's CPU accelerator itself where CUDA is absent), and one DeepSpeed setting the tiny model needs: its weights
are all below ZeRO-3's default ``stage3_param_persistence_threshold`` (1e5 elements), which keeps such weights whole
on every process, so the worker sets it to 0 and every weight is partitioned, as a 7B model's are. ZeRO-2 is the same
config with ``--zero_stage 2``.

Tolerances: losses rel 1e-4, weights atol 1e-5 after one round and 5e-5 after three (the processes reduce gradients
in another order than one process sums them, and Adam's normalisation carries that rounding into each update; a lost
or extra step moves every weight by ~lr = 1e-3).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("peft")
pytest.importorskip("deepspeed")

from conftest import accelerate_launch, launch_output, subprocess_env, tiny_overrides  # noqa: E402
from test_pipeline_resume import assert_same_run, read_jsonl  # noqa: E402

ACCELERATE = Path(__file__).resolve().parents[1] / "python" / "sgpo" / "configs" / "accelerate"

# the sgpo CLI's `run`, with hooks: a SIGKILL of the main process at its N-th micro-batch backward (0: none), and,
# before each round's checkpoint is written, the live (distributed) model's log-probs of a few rows
WORKER = """
import json, os, signal, sys
import torch
from sgpo import cli
from sgpo.pipeline import policy, zero
from sgpo.pipeline.scoring import SequenceScorer, collate

record, kill_at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
main = os.environ.get("RANK", "0") == "0"
make_plugin, backward, save_checkpoint = zero.make_plugin, zero.backward, policy.save_checkpoint
calls = 0


def write(entry):
    if main:
        with open(record, "a") as handle:
            handle.write(json.dumps(entry) + "\\n")


def tiny_plugin(**kwargs):
    plugin = make_plugin(**kwargs)
    plugin.deepspeed_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return plugin


def counted_backward(accelerator, loss, *, last):
    global calls
    calls += 1
    if main and calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    backward(accelerator, loss, last=last)


def scored_save(ctx, model, t):
    rows = policy.encode_rows(ctx, ["Name a colour.", "Say hi."], ["Blue.", "Hello there, friend."])
    with torch.no_grad():
        logps = SequenceScorer(model)(**collate(rows, ctx.tokenizer.pad_token_id))
    # a partitioned weight is empty outside the forward that gathers it
    empty = sum(p.numel() == 0 for p in model.parameters())
    write({"round": t, "rows": rows, "logps": logps.tolist(), "empty": empty, "backward_calls": calls})
    save_checkpoint(ctx, model, t)


zero.make_plugin, zero.backward, policy.save_checkpoint = tiny_plugin, counted_backward, scored_save
sys.exit(cli.main(["run", "tiny", *argv]))
"""


def launch_zero(
    tmp_path: Path, record: Path, overrides: list[str], *, port: int, kill_at: int = 0, stage: int = 3
) -> subprocess.CompletedProcess:
    """The worker under ``accelerate launch`` with the bundled ZeRO-3 config on 2 CPU processes."""
    script = tmp_path / "zero_worker.py"
    script.write_text(WORKER)
    command = accelerate_launch(
        ACCELERATE / "deepspeed_zero3.yaml",
        port,
        *(["--zero_stage", str(stage)] if stage != 3 else []),
        str(script),
        str(record),
        str(kill_at),
        *overrides,
    )
    return subprocess.run(command, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=400)


def assert_checkpoint_scores_as_the_live_model(entry: dict, checkpoint: Path, base: Path | None) -> None:
    """The round's checkpoint, loaded in this one process, gives the log-probs the distributed model gave (``base``:
    the model a LoRA checkpoint applies to; None for a full checkpoint)."""
    from peft import PeftModel
    from sgpo.models import load_model
    from sgpo.pipeline.scoring import SequenceScorer, collate

    if base is None:
        model = load_model(str(checkpoint), dtype="float32").eval()
    else:
        model = PeftModel.from_pretrained(load_model(str(base), dtype="float32"), str(checkpoint)).eval()
    rows = [(ids, labels) for ids, labels in entry["rows"]]
    with torch.no_grad():
        logps = SequenceScorer(model)(**collate(rows, pad_id=0))
    torch.testing.assert_close(logps, torch.tensor(entry["logps"]), rtol=0, atol=1e-5)


def assert_round_0_as_one_process(out: Path, reference: Path, weights: str, *, loss_rel: float | None = None) -> None:
    """Round 0 of ``out`` took the losses (abs 1e-5, and ``loss_rel``) and saved the ``weights`` file (1e-5) of the
    one-process run ``reference``."""
    from safetensors.numpy import load_file

    ours, theirs = (read_jsonl(run / "round_0" / "train_log.jsonl") for run in (out, reference))
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in theirs], rel=loss_rel, abs=1e-5)
    final, expected = (load_file(str(run / "round_0" / "checkpoint" / weights)) for run in (out, reference))
    assert final.keys() == expected.keys()
    for name in final:
        torch.testing.assert_close(torch.from_numpy(final[name]), torch.from_numpy(expected[name]), rtol=0, atol=1e-5)


def test_pipeline_under_zero3_resumes_after_kill_9_as_one_uninterrupted_process(
    tmp_path: Path, ssapo_run: Path, tiny_model_dir: Path, preference_files: dict[str, Path]
) -> None:
    out, record = tmp_path / "run", tmp_path / "record.jsonl"
    overrides = tiny_overrides(tiny_model_dir, preference_files, out)
    # round 0 takes 3 steps of one micro-batch per process: the 5th backward is round 1's second step
    killed = launch_zero(tmp_path, record, overrides, port=29571, kill_at=5)
    assert killed.returncode != 0
    assert (out / "round_0" / "checkpoint").is_dir(), launch_output(killed)
    assert (out / "round_1" / "annotations.jsonl").is_file() and (out / "round_1" / "worst_case.safetensors").is_file()
    assert not (out / "round_1" / "train_summary.json").exists()

    record.unlink()
    resumed = launch_zero(tmp_path, record, overrides, port=29572)
    assert resumed.returncode == 0, launch_output(resumed)
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2
    saves = read_jsonl(record)
    # round 0's finished training is kept: the resumed run trains rounds 1 and 2 only (2 steps each; ZeRO's
    # partitioned state is not saved mid-round, so round 1 trains again from its start)
    assert [s["round"] for s in saves] == [1, 2] and saves[-1]["backward_calls"] == 4
    # ZeRO-3 really partitioned the weights: every parameter is empty outside a forward
    assert all(s["empty"] > 0 for s in saves)
    # every checkpoint was written from gathered weights: the same steps and weights as one uninterrupted process.
    # ZeRO-3 reduce-scatters the gradient in buckets, another summation order, and Adam's per-element normalisation
    # carries that rounding into the update (1.5e-5 seen); one lost or extra step moves every weight by ~lr = 1e-3
    assert_same_run(ssapo_run, out, atol=5e-5)
    for entry in saves:
        checkpoint = out / f"round_{entry['round']}" / "checkpoint"
        assert_checkpoint_scores_as_the_live_model(entry, checkpoint, tiny_model_dir)


def test_round_0_under_zero2_matches_one_process(
    tmp_path: Path, ssapo_run: Path, tiny_model_dir: Path, preference_files: dict[str, Path]
) -> None:
    out, record = tmp_path / "run", tmp_path / "record.jsonl"
    done = launch_zero(
        tmp_path, record, tiny_overrides(tiny_model_dir, preference_files, out, "rounds=0"), port=29573, stage=2
    )
    assert done.returncode == 0, launch_output(done)
    (entry,) = read_jsonl(record)
    assert entry["empty"] == 0  # ZeRO-2 partitions the optimizer state and gradients, never the weights
    assert_round_0_as_one_process(out, ssapo_run, "adapter_model.safetensors")
    assert_checkpoint_scores_as_the_live_model(entry, out / "round_0" / "checkpoint", tiny_model_dir)


def test_full_fine_tuning_with_gradient_checkpointing_under_zero3_matches_one_process(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path]
) -> None:
    """The 7B recipes' mode: every weight trained (no LoRA), gradient checkpointing on, weights partitioned."""
    from safetensors.numpy import load_file
    from sgpo.pipeline import load_config, run

    full = ("rounds=0", "model.lora=false", "model.gradient_checkpointing=true")
    single = tmp_path / "single"
    run(load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, single, *full)))
    out, record = tmp_path / "run", tmp_path / "record.jsonl"
    done = launch_zero(tmp_path, record, tiny_overrides(tiny_model_dir, preference_files, out, *full), port=29574)
    assert done.returncode == 0, launch_output(done)
    (entry,) = read_jsonl(record)
    assert entry["empty"] > 0
    assert len(read_jsonl(out / "round_0" / "train_log.jsonl")) > 0
    assert_round_0_as_one_process(out, single, "model.safetensors", loss_rel=1e-4)
    checkpoint = out / "round_0" / "checkpoint"
    assert not (checkpoint / "adapter_model.safetensors").exists()
    final, initial = (load_file(str(d / "model.safetensors")) for d in (checkpoint, tiny_model_dir))
    # training moved the weights, and the gathered checkpoint holds the moved ones
    assert max(abs(final[k] - initial[k]).max() for k in final if k in initial) > 1e-4
    assert_checkpoint_scores_as_the_live_model(entry, checkpoint, None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"},
            r"zero_stage: the accelerate config asks for DeepSpeed ZeRO stage 1;",
        ),
        (
            {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_GRADIENT_CLIPPING": "0.5"},
            r"gradient_clipping: the accelerate config clips at 0.5 but the recipe's train.max_grad_norm is 1.0;",
        ),
    ],
)
def test_a_deepspeed_launch_the_pipeline_cannot_run_stops_before_loading_a_model(
    tmp_path: Path,
    tiny_model_dir: Path,
    preference_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    message: str,
) -> None:
    import sgpo.models
    from sgpo.pipeline import load_config, run

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sgpo.models, "load_model", no_model)
    monkeypatch.setattr(sgpo.models, "resolve_model", no_model)
    # what `accelerate launch` sets from a DeepSpeed config (and the pipeline on a machine without CUDA)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        run(load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, out)))
    assert not out.exists()
