"""What the experiments keep: a results.json per output directory, and the numbers read back from a finished run's
directory and evaluation."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from sgpo.pipeline.files import atomic_path, read_jsonl

from experiments.rows import lookup


class Results:
    """``path`` (a results.json) in memory; :meth:`save` merges what another process wrote there meanwhile.

    ``evaluations``: the directory of the runs' ``sgpo eval`` outputs, one per run directory's name."""

    def __init__(self, path: Path, evaluations: Path | None = None) -> None:
        self.path = path
        self.evaluations = evaluations
        self.lock = threading.Lock()
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def save(self, entries: dict[str, Any]) -> None:
        """Add ``entries`` to the file, keeping what another table on the same output wrote there meanwhile."""
        with self.lock:
            on_disk = json.loads(self.path.read_text()) if self.path.is_file() else {}
            self.data = {**self.data, **on_disk, **entries}
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.data, indent=2) + "\n")

    def entry(self, name: str, seed: int) -> dict[str, Any] | None:
        """Row ``name``'s results on ``seed`` (another row's, when the two share a run)."""
        return lookup(self.data, name, seed)

    def scores(self, name: str, seed: int) -> np.ndarray | None:
        """Per-prompt gold scores of a finished row's evaluation (the same prompts and per-row seeds for all)."""
        entry = self.entry(name, seed)
        if not entry or "run_dir" not in entry or self.evaluations is None:
            return None
        return eval_scores(self.evaluations / Path(entry["run_dir"]).name / "eval.json")


def eval_scores(path: Path) -> np.ndarray | None:
    """The per-prompt gold scores of an ``sgpo eval`` output's eval.json; None where it does not exist."""
    return np.asarray(json.loads(path.read_text())["results"][0]["scores"]) if path.is_file() else None


def rounds_of(run_dir: Path, pattern: str) -> list[Path]:
    """``round_*/<pattern>`` of a run directory, in round order."""
    return sorted(run_dir.glob(f"round_*/{pattern}"), key=lambda p: int(p.parent.name.split("_")[1]))


def annotator_metrics(run_dir: Path) -> dict[str, list[float]]:
    """Per self-annotating round: the annotator's held-out agreement before it, and gold's agreement with its labels."""
    out: dict[str, list[float]] = {"heldout": [], "round": []}
    for path in rounds_of(run_dir, "metrics.json"):
        annotator = json.loads(path.read_text()).get("annotator", {})
        for key in out:
            value = annotator.get(key, {}).get("agreement")
            if value is not None:
                out[key].append(100 * value)
    return out


def label_agreement(run_dir: Path) -> float | None:
    """How often the self-annotation (the implicit reward) picks the response the verifiable judge prefers, in %.

    Over every round's pairs whose two responses the judge does not score equal; None without such pairs (or once the
    run directory is gone).
    """
    from sgpo.evaluation import VerifiableJudge

    judge = VerifiableJudge()
    agree = total = 0
    for path in sorted(run_dir.glob("round_*/annotations.jsonl")):
        pairs = read_jsonl(path)
        if not pairs:
            continue
        prompts = [p["prompt"] for p in pairs]
        chosen = judge.scores(prompts, [p["chosen"] for p in pairs])
        rejected = judge.scores(prompts, [p["rejected"] for p in pairs])
        decided = chosen != rejected
        agree += int((chosen > rejected)[decided].sum())
        total += int(decided.sum())
    return 100 * agree / total if total else None
