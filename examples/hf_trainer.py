"""Preference optimisation in a plain ``transformers.Trainer`` with sgpo's fused lm_head + loss; no TRL.

``PreferenceTrainer.compute_loss`` runs the policy once on the chosen rows stacked over the rejected rows, takes the
last hidden states and hands them, with the lm_head weight, to :class:`sgpo.nn.FusedLinearPreferenceLoss` in the call
convention of Liger-Kernel's ``LigerFusedLinearDPOLoss``: the loss projects in chunks of tokens and never holds the
(2B, T, V) logits. ``logits_to_keep=1`` with ``output_hidden_states=True`` keeps the forward going through the model's
own ``forward`` (so DDP/FSDP hooks stay in place) while computing the logits of the last position only.

Runs on CPU on a tiny random Llama in seconds (no download):

    python examples/hf_trainer.py --loss-type sigmoid
    python examples/hf_trainer.py --loss-type ssapo --epsilon 0.05   # follower solved on every batch
    python examples/hf_trainer.py --loss-type sppo                   # win probabilities per pair
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from collections import defaultdict
from typing import Any

import sgpo
import torch
from sgpo.models import build_tiny_model
from sgpo.nn import FusedLinearPreferenceLoss
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

IGNORE_INDEX = -100
TOPICS = ["tea", "rain", "maps", "bees", "jazz", "salt", "kites", "moss", "owls", "figs", "snow", "ink"]


def toy_pairs() -> list[dict[str, Any]]:
    """Pairs whose chosen answer repeats the topic; SPPO-style win probabilities favour it by a varying amount."""
    rows = []
    for i, topic in enumerate(TOPICS):
        rows.append(
            {
                "prompt": f"Tell me about {topic}: ",
                "chosen": f"{topic} are lovely.",
                "rejected": "no." if i % 2 else "what?",
                "chosen_win_prob": 0.6 + 0.03 * i,
                "rejected_win_prob": 0.4 - 0.03 * i,
            }
        )
    return rows


def tokenize(tokenizer: Any, row: dict[str, Any]) -> dict[str, Any]:
    """Token ids of prompt + response + EOS for both responses, with labels already shifted (Liger's ``target``)."""
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    out = {key: row[key] for key in ("chosen_win_prob", "rejected_win_prob")}
    for side in ("chosen", "rejected"):
        response = tokenizer(row[side], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = prompt + response
        # target[t] is the token at t + 1 when it belongs to the response: hidden state t predicts it
        out[f"{side}_ids"] = ids
        out[f"{side}_target"] = [IGNORE_INDEX] * (len(prompt) - 1) + response + [IGNORE_INDEX]
    return out


def collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with the chosen rows stacked over the rejected rows."""
    sequences = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
    targets = [r["chosen_target"] for r in rows] + [r["rejected_target"] for r in rows]
    width = max(len(s) for s in sequences)
    batch = {
        "input_ids": torch.full((len(sequences), width), pad_id),
        "attention_mask": torch.zeros((len(sequences), width), dtype=torch.long),
        "target": torch.full((len(sequences), width), IGNORE_INDEX),
    }
    for i, (ids, target) in enumerate(zip(sequences, targets)):
        batch["input_ids"][i, : len(ids)] = torch.tensor(ids)
        batch["attention_mask"][i, : len(ids)] = 1
        batch["target"][i, : len(target)] = torch.tensor(target)
    for key in ("chosen_win_prob", "rejected_win_prob"):
        batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.float32)
    return batch


def last_hidden(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        logits_to_keep=1,
        output_hidden_states=True,
        use_cache=False,
    )
    return out.hidden_states[-1]


class PreferenceTrainer(Trainer):
    """A ``Trainer`` whose loss is sgpo's fused preference loss against a frozen reference model."""

    def __init__(
        self, *args: Any, ref_model: torch.nn.Module, loss_fn: FusedLinearPreferenceLoss, epsilon: float, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.ref_model = ref_model.to(self.args.device).eval().requires_grad_(False)
        self.loss_fn = loss_fn
        self.epsilon = epsilon
        self.metrics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(
        self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        hidden = last_hidden(model, inputs)
        weight = self.accelerator.unwrap_model(model).get_output_embeddings().weight
        with torch.no_grad():
            ref_hidden = last_hidden(self.ref_model, inputs)
        ref_weight = self.ref_model.get_output_embeddings().weight
        extras: dict[str, Any] = {}
        if self.loss_fn.loss_type == "sppo":
            extras = {"chosen_win_prob": inputs["chosen_win_prob"], "rejected_win_prob": inputs["rejected_win_prob"]}
        elif self.loss_fn.loss_type == "ssapo":
            extras["worst_case"] = self.batch_worst_case(hidden, weight, ref_hidden, ref_weight, inputs["target"])
        loss, aux = self.loss_fn(
            weight, hidden, inputs["target"], ref_input=ref_hidden, ref_weight=ref_weight, **extras
        )
        chosen_rewards, rejected_rewards = aux[5], aux[6]
        self.metrics["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        self.metrics["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        return loss

    @torch.no_grad()
    def batch_worst_case(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        ref_hidden: torch.Tensor,
        ref_weight: torch.Tensor,
        target: torch.Tensor,
    ) -> Any:
        """SSAPO's follower on this batch's T(beta * Delta): one extra no-grad chunked projection per side.

        T is what the ssapo loss shifts: sigmoid in probability space, the identity in margin space.
        """
        logps = sgpo.ops.fused_linear_sequence_logps(hidden.detach(), weight.detach(), target)
        ref_logps = sgpo.ops.fused_linear_sequence_logps(ref_hidden, ref_weight, target)
        s = (logps - ref_logps).view(2, -1)
        margins = self.loss_fn.beta * (s[0] - s[1])
        if self.loss_fn.space == "probability":
            margins = torch.sigmoid(margins)
        return sgpo.worst_case(margins, self.epsilon, space=self.loss_fn.space)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        logs.update({key: sum(values) / len(values) for key, values in self.metrics.items() if values})
        self.metrics.clear()
        super().log(logs, *args, **kwargs)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loss-type", default="sigmoid", choices=sgpo.ops.LOSS_TYPES)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--epsilon", type=float, default=0.05, help="ssapo's Wasserstein radius")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--model", default=None, help="a local model directory (default: a tiny random Llama)")
    parser.add_argument("--output-dir", default=None, help="where the tiny model and the run go (default: a temp dir)")
    args = parser.parse_args(argv)

    work = args.output_dir or tempfile.mkdtemp(prefix="sgpo-hf-trainer-")
    model_dir = args.model or build_tiny_model(f"{work}/model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref_model = copy.deepcopy(model)
    train = [tokenize(tokenizer, row) for row in toy_pairs()]
    loss_fn = FusedLinearPreferenceLoss(
        loss_type=args.loss_type,
        beta=args.beta,
        label_smoothing=0.1 if args.loss_type == "robust" else 0.0,
        ipo_length_normalized=args.loss_type == "ipo",
    )
    trainer = PreferenceTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=f"{work}/out",
            per_device_train_batch_size=6,
            max_steps=args.steps,
            learning_rate=args.lr,
            logging_steps=5,
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            remove_unused_columns=False,
            disable_tqdm=True,
            seed=0,
        ),
        train_dataset=train,
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
        ref_model=ref_model,
        loss_fn=loss_fn,
        epsilon=args.epsilon,
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "loss_type": args.loss_type,
        "first_loss": logged[0]["loss"],
        "last_loss": logged[-1]["loss"],
        "last_reward_margin": logged[-1]["rewards/margins"],
        "last_reward_accuracy": logged[-1]["rewards/accuracies"],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
