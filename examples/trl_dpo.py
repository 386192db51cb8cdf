"""sgpo's losses inside TRL's DPOTrainer: ``SGPODPOTrainer`` + ``SGPODPOConfig`` instead of DPOTrainer + DPOConfig.

Every DPOConfig option works on the command line, plus sgpo's (``--ssapo_epsilon``, ``--ssapo_worst_case``, ...).
Runs on CPU on a tiny random Llama in seconds (no download):

    python examples/trl_dpo.py --loss_type ssapo                             # (a) follower on every global batch
    python examples/trl_dpo.py --loss_type ssapo --ssapo_worst_case columns  # (b) worst case solved over the dataset
    python examples/trl_dpo.py --loss_type sppo                              # SPPO's chosen_probs_win/_lose columns
    python examples/trl_dpo.py --loss_type sigmoid --peft                    # LoRA: the reference is the adapter off
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field

import sgpo
import torch
from datasets import Dataset
from sgpo.integrations.trl import SGPODPOConfig, SGPODPOTrainer, add_worst_case_columns
from sgpo.models import build_tiny_model
from transformers import AutoTokenizer, HfArgumentParser

TOPICS = ["tea", "rain", "maps", "bees", "jazz", "salt", "kites", "moss", "owls", "figs", "snow", "ink", "oak", "elk"]


@dataclass
class ScriptArguments:
    model: str | None = field(
        default=None, metadata={"help": "A local model directory (default: a tiny random Llama)."}
    )
    peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter; the reference is the adapter disabled."})


def toy_dataset() -> Dataset:
    """Preference pairs with what the annotate stage provides: SPPO win probabilities and a judge's margin."""
    n = len(TOPICS)
    return Dataset.from_dict(
        {
            "prompt": [f"Tell me about {topic}: " for topic in TOPICS],
            "chosen": [f"{topic} are lovely." for topic in TOPICS],
            "rejected": ["no." if i % 2 else "what?" for i in range(n)],
            # the names SPPO's released data uses: win probabilities of the chosen and of the rejected response
            "chosen_probs_win": [0.55 + 0.03 * i for i in range(n)],
            "chosen_probs_lose": [0.45 - 0.03 * i for i in range(n)],
            # beta * Delta from the self-annotation step; a few small ones are where the follower pushes hardest
            "margin": [0.05 * ((5 * i) % n) - 0.1 for i in range(n)],
        }
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((ScriptArguments, SGPODPOConfig))
    on_gpu = torch.cuda.is_available()
    parser.set_defaults(
        output_dir=tempfile.mkdtemp(prefix="sgpo-trl-"),
        loss_type=["ssapo"],
        ssapo_epsilon=0.05,
        per_device_train_batch_size=7,
        max_steps=12,
        learning_rate=5e-3,
        logging_steps=4,
        save_strategy="no",
        report_to="none",
        use_cpu=not on_gpu,
        bf16=on_gpu,
        disable_tqdm=True,
    )
    script, config = parser.parse_args_into_dataclasses(args=argv)
    model = script.model or str(build_tiny_model(f"{config.output_dir}/model"))
    dataset = toy_dataset()
    if "ssapo" in config.loss_type and config.ssapo_worst_case == "columns":
        # mode (b): one follower solve over every margin of the dataset, carried per row into the batches; its input
        # is what the ssapo loss shifts: sigmoid(beta * Delta) in probability space, beta * Delta in margin space
        margins = torch.tensor(dataset["margin"])
        worst = sgpo.worst_case(
            torch.sigmoid(margins) if config.ssapo_space == "probability" else margins,
            config.ssapo_epsilon,
            pieces=config.ssapo_pieces,
            space=config.ssapo_space,
            group_size=config.ssapo_group_size,
            max_shift=config.ssapo_max_shift,
        )
        dataset = add_worst_case_columns(dataset, worst)
    peft_config = None
    if script.peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    trainer = SGPODPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model),
        peft_config=peft_config,
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    keys = ("loss", "rewards/margins", "rewards/accuracies", "ssapo/shift", "ssapo/worst_case_value")
    summary = {"loss_type": "+".join(config.loss_type), "first_loss": logged[0]["loss"]}
    summary.update({f"last_{k}": logged[-1][k] for k in keys if k in logged[-1]})
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
