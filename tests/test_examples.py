"""The runnable examples: each trains a tiny random Llama on CPU and improves its preference margins."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NEEDS_TRL = "TRL is not installed; pip install 'sgpo[trl]' (the dev extra includes it)"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model is far too small to gain from threads; on a loaded 2-core machine they cost 5-10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"sgpo_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the file executes
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def assert_learned(summary: dict) -> None:
    """Training moved the implicit rewards the right way: chosen ahead of rejected, and the loss went down."""
    assert math.isfinite(summary["first_loss"]) and math.isfinite(summary["last_loss"])
    assert summary["last_loss"] < summary["first_loss"]
    margin = summary.get("last_rewards/margins", summary.get("last_reward_margin"))
    assert margin > 0


@pytest.mark.parametrize("name", ["hf_trainer", "trl_dpo"])
def test_example_runs_as_a_script(name: str, tmp_path: Path) -> None:
    if name == "trl_dpo":
        pytest.importorskip("trl", reason=NEEDS_TRL)
    flag = "--output_dir" if name == "trl_dpo" else "--output-dir"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), flag, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert_learned(summary)


@pytest.mark.parametrize("loss_type", ["ssapo", "sppo", "ipo", "robust"])
def test_hf_trainer_example_loss_types(loss_type: str, tmp_path: Path) -> None:
    summary = load_example("hf_trainer").main(["--loss-type", loss_type, "--output-dir", str(tmp_path)])
    assert summary["loss_type"] == loss_type
    assert_learned(summary)


@pytest.mark.parametrize(
    "extra",
    [
        ["--loss_type", "ssapo", "--ssapo_worst_case", "columns"],
        ["--loss_type", "ssapo", "--ssapo_space", "margin"],
        ["--loss_type", "sppo"],
        ["--loss_type", "sigmoid", "--peft"],
    ],
    ids=["ssapo-columns", "ssapo-margin-space", "sppo", "peft"],
)
def test_trl_example_modes(extra: list[str], tmp_path: Path) -> None:
    pytest.importorskip("trl", reason=NEEDS_TRL)
    summary = load_example("trl_dpo").main([*extra, "--output_dir", str(tmp_path)])
    assert summary["loss_type"] == extra[1]
    assert_learned(summary)
    if extra[1] == "ssapo":
        # the follower spends its whole transport budget, so the mean shift is epsilon (0.05 in the example): per batch
        # in batch mode, per dataset in columns mode (each logging window of 4 steps of 7 pairs is 2 epochs of 14)
        assert summary["last_ssapo/shift"] == pytest.approx(0.05, rel=1e-4)


def test_hf_trainer_example_computes_the_reference_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The example's batch layout (stacked rows, shifted targets, last hidden states) gives sgpo's reference loss."""
    import sgpo
    from sgpo.models import build_tiny_model
    from sgpo.nn import FusedLinearPreferenceLoss
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    example = load_example("hf_trainer")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "reference", seed=1))
    raw = example.toy_pairs()[:4]
    rows = [example.tokenize(tokenizer, row) for row in raw]
    trainer = example.PreferenceTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[]),
        train_dataset=rows,
        ref_model=reference,
        loss_fn=FusedLinearPreferenceLoss(loss_type="sppo", beta=0.1),
        epsilon=0.05,
    )
    loss = trainer.compute_loss(model, example.collate(rows, tokenizer.pad_token_id))

    def logps(net: torch.nn.Module, side: str) -> torch.Tensor:
        """Full logits of prompt + response + EOS, one row at a time, scored on the response and EOS only."""
        out = []
        for row in raw:
            prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            response = tokenizer(row[side], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([prompt + response])
            labels = ids.clone()
            labels[:, : len(prompt)] = -100
            out.append(sgpo.ops.sequence_logps(net(input_ids=ids).logits[:, :-1], labels[:, 1:]))
        return torch.cat(out)

    with torch.no_grad():
        ref_chosen, ref_rejected = logps(reference, "chosen"), logps(reference, "rejected")
    expected = sgpo.ops.preference_loss(
        logps(model, "chosen"),
        logps(model, "rejected"),
        ref_chosen,
        ref_rejected,
        loss_type="sppo",
        beta=0.1,
        chosen_win_prob=torch.tensor([row["chosen_win_prob"] for row in raw]),
        rejected_win_prob=torch.tensor([row["rejected_win_prob"] for row in raw]),
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
