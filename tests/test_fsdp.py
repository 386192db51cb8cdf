"""FSDP2 on CPU (2 gloo processes): the fused head op, the TRL integration and the pipeline match 1 process; a killed
sharded round resumes; launches that need DeepSpeed or vLLM on a machine without them stop before loading a model.

Tolerances are the DDP tests': losses rel 1e-5, parameters atol 1e-5 (2 processes reduce the gradient in another
order than 1 process sums it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("peft")

from conftest import accelerate_launch, launch_output, subprocess_env, tiny_overrides  # noqa: E402

FSDP_CONFIG = Path(__file__).resolve().parents[1] / "python" / "sgpo" / "configs" / "accelerate" / "fsdp.yaml"


def launch(script: Path, args: list[str], tmp_path: Path, port: int) -> subprocess.CompletedProcess:
    """``script`` under ``accelerate launch`` with the bundled FSDP config on 2 CPU processes."""
    command = accelerate_launch(FSDP_CONFIG, port, str(script), *args)
    return subprocess.run(command, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (4, 12), generator=generator)
    labels = ids.roll(-1, dims=1)
    labels[:, :5] = -100
    labels[1, 9:] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


HEAD_WORKER = """
import sys
import torch
from accelerate import Accelerator
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM
from sgpo.lm_head import head_sequence_logps
from sgpo.pipeline import distributed
from sgpo.pipeline.scoring import SequenceScorer
from test_fsdp import batch

accelerator = Accelerator(cpu=True)
assert distributed.enable_cpu_fsdp(accelerator)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
scorer, optimizer = accelerator.prepare(SequenceScorer(model), optimizer)
head = model.get_output_embeddings()
sharded = isinstance(head.weight, DTensor) and head.weight.to_local().shape[0] < head.weight.shape[0]
logps = scorer(**batch())
logps.sum().backward()
grad = head.weight.grad.full_tensor()
# a head that is its own unit, resharded between calls: the op runs as its forward
torch.manual_seed(0)
alone = torch.nn.Linear(32, 259, bias=False)
fully_shard(alone)
hidden = torch.randn(4, 12, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
alone_logps = head_sequence_logps(alone, hidden, batch()["labels"])
alone_logps.sum().backward()
alone_grad = alone.weight.grad.full_tensor()
if accelerator.is_main_process:
    torch.save(
        {
            "sharded": sharded,
            "logps": logps.detach(),
            "grad": grad,
            "alone_logps": alone_logps.detach(),
            "alone_grad": alone_grad,
            "hidden_grad": hidden.grad,
        },
        sys.argv[2],
    )
distributed.leave_together()
"""


def test_fused_head_op_sees_the_gathered_weight_under_fsdp(tiny_model_dir: Path, tmp_path: Path) -> None:
    import sgpo.ops
    from sgpo.pipeline.scoring import SequenceScorer
    from transformers import AutoModelForCausalLM

    script = tmp_path / "head_worker.py"
    script.write_text(HEAD_WORKER)
    done = launch(script, [str(tiny_model_dir), str(tmp_path / "fsdp.pt")], tmp_path, 29561)
    assert done.returncode == 0, launch_output(done)
    fsdp = torch.load(tmp_path / "fsdp.pt")
    # the head really is a shard between calls, so the op only works if it runs inside the head's gathered forward
    assert fsdp["sharded"]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    logps = SequenceScorer(model)(**batch())
    logps.sum().backward()
    torch.testing.assert_close(fsdp["logps"], logps.detach(), rtol=1e-5, atol=1e-5)
    # both processes score the same batch: FSDP's averaged gradient is the 1-process gradient
    assert model.lm_head.weight.grad.abs().max() > 1e-3
    torch.testing.assert_close(fsdp["grad"], model.lm_head.weight.grad, rtol=0, atol=1e-5)

    torch.manual_seed(0)
    alone = torch.nn.Linear(32, 259, bias=False)
    hidden = torch.randn(4, 12, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    logps = sgpo.ops.fused_linear_sequence_logps(hidden, alone.weight, batch()["labels"])
    logps.sum().backward()
    torch.testing.assert_close(fsdp["alone_logps"], logps.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fsdp["alone_grad"], alone.weight.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(fsdp["hidden_grad"], hidden.grad, rtol=0, atol=1e-5)


PROMPTS = ["hi ", "say a word: ", "ok? ", "no. ", "2+2=", "colour: ", "name one: ", "yes or no? "]
CHOSEN = ["hello", "good", "fine", "right", "4", "blue", "Ada", "yes"]
REJECTED = ["nope!", "bad", "meh..", "wrong", "five", "??", "x", "maybe so"]

TRL_WORKER = """
import json, sys
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
assert trainer.is_fsdp_enabled and trainer.accelerator.is_fsdp2
shapes = []
decoder = trainer.model.get_decoder()
decoder.register_forward_pre_hook(lambda m, a, kw: shapes.append(list(kw["input_ids"].shape)), with_kwargs=True)
trainer.train()
state = trainer.accelerator.get_state_dict(trainer.model)
if trainer.accelerator.is_main_process:
    result = {
        "processes": trainer.accelerator.num_processes,
        "decoder_inputs": shapes,
        "logs": [entry for entry in trainer.state.log_history if "loss" in entry],
        "params": {name: p.tolist() for name, p in state.items()},
    }
    with open(out + "/result.json", "w") as f:
        json.dump(result, f)
distributed.leave_together()
"""


def trl_options(**overrides: object) -> dict[str, object]:
    options: dict[str, object] = dict(
        per_device_train_batch_size=8,
        max_steps=2,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        beta=0.5,
        logps_backend="sgpo",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    options.update(overrides)
    return options


def test_trl_trainer_under_fsdp_matches_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from datasets import Dataset
    from sgpo.integrations.trl import SGPODPOConfig, SGPODPOTrainer
    from transformers import AutoTokenizer

    script = tmp_path / "trl_worker.py"
    script.write_text(TRL_WORKER)
    rows = {"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED}
    options = trl_options(per_device_train_batch_size=4, fsdp="full_shard", fsdp_config={"fsdp_version": 2})
    args = [str(tiny_model_dir), str(tmp_path / "fsdp"), json.dumps(rows), json.dumps(options)]
    done = launch(script, args, tmp_path, 29562)
    assert done.returncode == 0, launch_output(done)
    fsdp = json.loads((tmp_path / "fsdp" / "result.json").read_text())
    assert fsdp["processes"] == 2
    # sgpo's packed forward under FSDP2: per step, one decoder call (the policy's) and one of the reference, each with
    # at most one row per pair (TRL's layout has two)
    assert fsdp["decoder_inputs"] and all(rows <= 4 for rows, _ in fsdp["decoder_inputs"]), fsdp["decoder_inputs"]

    torch.set_num_threads(1)
    single = SGPODPOTrainer(
        model=str(tiny_model_dir),
        args=SGPODPOConfig(output_dir=str(tmp_path / "single"), **trl_options()),
        train_dataset=Dataset.from_dict(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    initial = {n: p.detach().clone() for n, p in single.model.named_parameters()}
    single.train()
    logs = [entry for entry in single.state.log_history if "loss" in entry]
    assert [entry["loss"] for entry in fsdp["logs"]] == pytest.approx([entry["loss"] for entry in logs], rel=1e-5)
    head = single.model.lm_head.weight
    # the head moved: its gradient, computed by the fused op from the gathered weight, reached the shards
    assert (head.detach() - initial["lm_head.weight"]).abs().max() > 1e-3
    for name, param in single.model.named_parameters():
        torch.testing.assert_close(torch.tensor(fsdp["params"][name]), param.detach(), rtol=0, atol=1e-5, msg=name)


RUN_WORKER = """
import json, os, signal, sys
from sgpo.pipeline import distributed, files, load_config, run

mode, record, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
write_json = files.write_json
load = distributed.ShardedTrainState.load


def kill_before_marker(path, value):
    # round 0's second save: every shard is written, its marker not yet; a kill -9 here leaves a staging directory
    if path.name == "meta.json" and path.parent.name.startswith(".") and value["step"] == 2 and "round_0" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
    write_json(path, value)


def recording_load(self, *args, **kwargs):
    result = load(self, *args, **kwargs)
    if self.main:
        with open(record, "a") as handle:
            handle.write(json.dumps([self.path.parent.name, None if result is None else result[0]]) + "\\n")
    return result


if mode == "kill":
    files.write_json = kill_before_marker
else:
    distributed.ShardedTrainState.load = recording_load
run(load_config("tiny", overrides))
distributed.leave_together()
"""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_pipeline_under_fsdp_resumes_after_a_kill_mid_save_as_one_process(
    tmp_path: Path, ssapo_run: Path, tiny_model_dir: Path, preference_files: dict[str, Path]
) -> None:
    from test_pipeline_resume import assert_same_run

    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_model_dir, preference_files, out, "train.save_steps=1")
    script = tmp_path / "run_worker.py"
    script.write_text(RUN_WORKER)
    record = tmp_path / "loads.jsonl"
    killed = launch(script, ["kill", str(record), *overrides], tmp_path, 29563)
    assert killed.returncode != 0
    round0 = out / "round_0"
    # killed inside the second save: the first is complete, the second's shards sit in staging without a marker
    assert (round0 / "train_state" / "step_000001" / "meta.json").is_file(), launch_output(killed)
    assert not (round0 / "train_state" / "step_000002").exists()
    assert list((round0 / ".train_state.staging").glob("*.distcp"))
    assert not (round0 / ".train_state.staging" / "meta.json").exists()
    assert not (round0 / "train_summary.json").exists()

    resumed = launch(script, ["resume", str(record), *overrides], tmp_path, 29564)
    assert resumed.returncode == 0, launch_output(resumed)
    # round 0 went on from step 1, the later rounds started fresh
    assert [tuple(row) for row in read_jsonl(record)] == [("round_0", 1), ("round_1", None), ("round_2", None)]
    assert json.loads((out / "report.json").read_text())["processes"] == 2
    assert not list(out.rglob("train_state")) and not list(out.rglob(".train_state.staging"))
    assert [r["step"] for r in read_jsonl(round0 / "train_log.jsonl")] == [1, 2, 3]
    # moments, schedule and RNG restored from the shards: the steps of an uninterrupted 1-process run
    assert_same_run(ssapo_run, out, atol=1e-5)


def test_deepspeed_without_its_package_stops_before_loading_a_model(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    import sgpo.models
    from sgpo.pipeline import load_config, run

    find_spec = importlib.util.find_spec

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sgpo.models, "load_model", no_model)
    monkeypatch.setattr(sgpo.models, "resolve_model", no_model)
    # a machine without DeepSpeed (it is in the dev extra)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a)
    )
    # what `accelerate launch` sets for `distributed_type: DEEPSPEED`
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"distributed_type: the accelerate config asks for DEEPSPEED, which needs"):
        run(load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, out)))
    assert not out.exists()


def test_vllm_backend_without_vllm_or_gpu_stops_before_loading_a_model(
    tmp_path: Path, tiny_model_dir: Path, preference_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sgpo.models
    from sgpo.generation import vllm_available
    from sgpo.pipeline import load_config, run

    if vllm_available():
        pytest.skip("vLLM and a CUDA device are present: the backend is valid here")

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sgpo.models, "load_model", no_model)
    monkeypatch.setattr(sgpo.models, "resolve_model", no_model)
    out = tmp_path / "run"
    cfg = load_config("tiny", tiny_overrides(tiny_model_dir, preference_files, out, "generation.backend=vllm"))
    with pytest.raises(ValueError, match=r"generation\.backend: 'vllm' needs vLLM and a CUDA device, but "):
        run(cfg)
    assert not out.exists()


def test_a_staging_directory_without_its_marker_is_never_loaded(tmp_path: Path) -> None:
    from sgpo.pipeline.distributed import ShardedTrainState

    state = ShardedTrainState(tmp_path / "train_state", every=1)
    assert state.saved_step() is None
    complete = tmp_path / "train_state" / "step_000003"
    complete.mkdir(parents=True)
    (complete / "meta.json").write_text(json.dumps({"step": 3}))
    (tmp_path / "train_state" / "step_000004").mkdir()
    assert state.saved_step() == 3
    state.remove()
    assert not (tmp_path / "train_state").exists()
