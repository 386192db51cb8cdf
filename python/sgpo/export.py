"""``sgpo export``: a round's policy as a merged Hugging Face directory, and its answers in AlpacaEval's format.

:func:`save_merged` writes a model with its LoRA adapter folded into the base weights (W + scaling * B A) without
touching the model it is given: the merged weights go into a fresh state dict, so a live policy keeps its adapter and
its weights bit for bit (the pipeline exports the policy this way for vLLM between two annotation passes whose
reference is the adapter disabled). The directory loads with ``AutoModelForCausalLM.from_pretrained`` and serves with
vLLM or any evaluation harness (AlpacaEval 2, MT-Bench's FastChat).

``sgpo export RUN_DIR_OR_CHECKPOINT OUTPUT [--prompts FILE]`` writes ``OUTPUT/model/`` (merged weights and tokenizer)
and, with ``--prompts``, ``OUTPUT/alpaca_eval.json``: one ``{"instruction", "output", "generator"}`` per prompt, the
list ``alpaca_eval --model_outputs`` reads, answered greedily with batched ``generate``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def merged_state_dict(model: Any) -> dict[str, Any]:
    """The weights of a PEFT LoRA model with its active adapters merged, under the base model's own names.

    Every merged weight is a new tensor (base + delta, in the base weight's dtype, as PEFT's ``merge`` computes it);
    the others are the model's tensors, read and never written.
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer) or module.disable_adapters or module.merged:
            continue
        adapters = [a for a in module.active_adapters if a in module.lora_A]
        if any(a in module.lora_variant or module.lora_bias[a] for a in adapters):
            raise ValueError(
                f"model: {name} carries a LoRA variant (DoRA, lora_bias, ...) that save_merged does not fold; "
                "expected plain LoRA adapters"
            )
        if adapters:
            deltas[f"{name}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in adapters)
    state = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        if "modules_to_save" in key or "original_module" in key:
            raise ValueError(f"model: {key} belongs to PEFT's modules_to_save, which save_merged does not fold")
        merged = value + deltas[key].to(value.dtype) if key in deltas else value
        state[key.replace(".base_layer.", ".")] = merged.detach()
    return state


def save_merged(model: Any, tokenizer: Any, directory: str | Path) -> Path:
    """Save ``model`` (a PEFT LoRA model or a plain one) merged, with ``tokenizer``, to ``directory``; returns it."""
    from peft import PeftModel

    directory = Path(directory)
    if isinstance(model, PeftModel):
        model.get_base_model().save_pretrained(directory, state_dict=merged_state_dict(model))
    else:
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def resolve_checkpoint(target: str | Path) -> Path:
    """A run directory's last round checkpoint, or a checkpoint (adapter or model directory) itself."""
    target = Path(target)
    if (target / "config.yaml").is_file():
        rounds = sorted(
            (int(d.name.split("_")[1]), d / "checkpoint")
            for d in target.glob("round_*")
            if d.name.split("_")[1].isdigit() and (d / "checkpoint").is_dir()
        )
        if not rounds:
            raise FileNotFoundError(f"target: {target} is a run directory without any round checkpoint yet")
        return rounds[-1][1]
    if (target / "adapter_config.json").is_file() or (target / "config.json").is_file():
        return target
    raise FileNotFoundError(f"target: {target} is neither a run directory of `sgpo run` nor a saved model")


def load_checkpoint(checkpoint: Path, dtype: str = "float32") -> tuple[Any, Any]:
    """The checkpoint's model (an adapter on its base model, or the model) and its tokenizer."""
    import torch
    from peft import AutoPeftModelForCausalLM

    from sgpo.models import load_model, load_tokenizer

    if (checkpoint / "adapter_config.json").is_file():
        model = AutoPeftModelForCausalLM.from_pretrained(str(checkpoint), dtype=getattr(torch, dtype))
    else:
        model = load_model(checkpoint, dtype=dtype)
    tokenizer_dir = checkpoint if (checkpoint / "tokenizer_config.json").is_file() else _base_of(checkpoint)
    return model, load_tokenizer(tokenizer_dir)


def _base_of(checkpoint: Path) -> str:
    return json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"]


def alpaca_eval_outputs(instructions: Sequence[str], outputs: Sequence[str], generator: str) -> list[dict[str, str]]:
    """AlpacaEval's ``model_outputs`` records: one per instruction, every one naming the same ``generator``."""
    return [{"instruction": i, "output": o, "generator": generator} for i, o in zip(instructions, outputs, strict=True)]


def export(
    target: str | Path,
    output: str | Path,
    *,
    prompts: str | None = None,
    name: str | None = None,
    max_new_tokens: int = 2048,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
) -> Path:
    """Merge ``target``'s policy into ``output/model``; with ``prompts``, answer them into ``alpaca_eval.json``."""
    from sgpo.devices import resolve_placement
    from sgpo.generation import generate_responses

    device, dtype = resolve_placement(device, dtype)
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens: expected an integer >= 1, got {max_new_tokens!r}")
    instructions = _instructions(prompts) if prompts is not None else None
    checkpoint = resolve_checkpoint(target)
    model, tokenizer = load_checkpoint(checkpoint, dtype)
    output = Path(output)
    save_merged(model, tokenizer, output / "model")
    if instructions is not None:
        model = model.to(device)
        answers = generate_responses(
            model, tokenizer, instructions, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size
        )
        generator = name or Path(target).resolve().name
        records = alpaca_eval_outputs(instructions, [a[0] for a in answers], generator)
        (output / "alpaca_eval.json").write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n")
    return output


def _instructions(path: str) -> list[str]:
    """The prompts of a JSON/JSONL/parquet/CSV file: its ``instruction`` column (AlpacaEval's) or ``prompt``."""
    from sgpo.tables import load_table

    table = load_table(path)
    column = next((c for c in ("instruction", "prompt") if c in table.column_names), None)
    if column is None:
        raise ValueError(f"--prompts: {path} has no 'instruction' or 'prompt' column; it has {table.column_names}")
    values = table[column]
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise ValueError(f"--prompts: every {column!r} of {path} must be a non-empty string")
    return list(values)


def _run(args: argparse.Namespace) -> int:
    out = export(
        args.target,
        args.output,
        prompts=args.prompts,
        name=args.name,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
    )
    print(f"merged model: {out / 'model'}")
    if args.prompts is not None:
        print(f"AlpacaEval outputs: {out / 'alpaca_eval.json'}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="a run's last policy (or a checkpoint) as a merged model directory, and its AlpacaEval outputs",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT")
    parser.add_argument("output", metavar="OUTPUT")
    parser.add_argument(
        "--prompts", default=None, help="instructions to answer (JSON/JSONL/parquet/CSV, 'instruction' or 'prompt')"
    )
    parser.add_argument("--name", default=None, help="the generator's name in alpaca_eval.json (default: the target)")
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", help="auto (cuda when present, else cpu) | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on a GPU, else float32) | float32 | ...")
    parser.set_defaults(func=_run)
