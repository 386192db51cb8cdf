"""DeepSpeed ZeRO-3 on CPU (2 gloo processes, DeepSpeed's CPU accelerator): SGPODPOTrainer(logps_backend="sgpo")
trains as trl.DPOTrainer does, with sgpo's fused head on the gathered LM-head weight. Runs where DeepSpeed is
installed (it is not one of sgpo's dependencies); skipped elsewhere."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("trl")
if importlib.util.find_spec("deepspeed") is None:
    pytest.skip("DeepSpeed is not installed", allow_module_level=True)

from conftest import launch_two_processes  # noqa: E402

WORKER = """
import json, os, sys
import deepspeed
from datasets import Dataset
from transformers import AutoTokenizer
import trl
import sgpo.ops
from sgpo.integrations.trl import SGPODPOConfig, SGPODPOTrainer
from sgpo.pipeline import distributed

model_dir, out, which = sys.argv[1], sys.argv[2], sys.argv[3]
deepspeed.init_distributed(dist_backend="gloo")
rows = {
    "prompt": ["hi ", "say a word: ", "ok? ", "no. ", "2+2=", "colour: ", "name one: ", "yes or no? "],
    "chosen": ["hello", "good", "fine", "right", "4", "blue", "Ada", "yes"],
    "rejected": ["nope!", "bad", "meh..", "wrong", "five", "??", "x", "maybe so"],
}
zero3 = {
    "zero_optimization": {"stage": 3},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
}
options = dict(
    output_dir=out, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3, lr_scheduler_type="constant",
    beta=0.1, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, gradient_checkpointing=False,
    disable_tqdm=True, deepspeed=zero3,
)
heads = []
if which == "sgpo":
    original = sgpo.ops.fused_linear_token_logps

    def counted(hidden, weight, *args, **kwargs):
        # ZeRO-3 partitions the weight; the op must see it gathered to its full shape
        heads.append(list(weight.shape))
        return original(hidden, weight, *args, **kwargs)

    sgpo.ops.fused_linear_token_logps = counted
    args = SGPODPOConfig(logps_backend="sgpo", **options)
    cls = SGPODPOTrainer
else:
    args, cls = trl.DPOConfig(**options), trl.DPOTrainer
trainer = cls(
    model=model_dir, args=args, train_dataset=Dataset.from_dict(rows),
    processing_class=AutoTokenizer.from_pretrained(model_dir),
)
rows_in = []
decoder = trainer.model.get_decoder()
decoder.register_forward_pre_hook(
    lambda m, a, kw: rows_in.append(list((kw.get("input_ids") if kw.get("input_ids") is not None else a[0]).shape)),
    with_kwargs=True,
)
trainer.train()
if trainer.accelerator.is_main_process:
    result = {
        "distributed": trainer.accelerator.distributed_type.value,
        "processes": trainer.accelerator.num_processes,
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "heads": heads,
        "decoder_inputs": rows_in,
    }
    with open(os.path.join(out, which + ".json"), "w") as f:
        json.dump(result, f)
distributed.leave_together()
"""


def zero3_run(tmp_path: Path, model_dir: Path, which: str) -> dict:
    script = tmp_path / "zero3_worker.py"
    script.write_text(WORKER)
    launch_two_processes(script, [str(model_dir), str(tmp_path), which], 600, DS_ACCELERATOR="cpu")
    return json.loads((tmp_path / f"{which}.json").read_text())


def test_a_zero3_step_with_sgpos_head_matches_trl(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    ours = zero3_run(tmp_path, tiny_model_dir, "sgpo")
    theirs = zero3_run(tmp_path, tiny_model_dir, "trl")
    assert ours["distributed"] == "DEEPSPEED" and ours["processes"] == 2
    # the first step's loss is TRL's to rounding (the same weights, the packed forward); after AdamW steps on
    # gradients that ZeRO-3 reduce-scatters and the packed attention sums in another order, rel 2e-5 was seen
    assert ours["losses"][0] == pytest.approx(theirs["losses"][0], rel=1e-5)
    assert ours["losses"] == pytest.approx(theirs["losses"], rel=1e-4)
    # the run trained, and sgpo's head ran on every step with the whole (gathered) weight
    assert ours["losses"][-1] < ours["losses"][0] - 1e-3
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert len(ours["heads"]) >= 3 and all(shape == [config.vocab_size, config.hidden_size] for shape in ours["heads"])
    # packed: each process forwards its 4 pairs as at most 4 rows ([prompt, chosen, rejected]), TRL as 8
    assert ours["decoder_inputs"] and all(rows <= 4 for rows, _ in ours["decoder_inputs"]), ours["decoder_inputs"]
