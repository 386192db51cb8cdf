"""What ``sgpo eval`` evaluates: a run directory written by ``sgpo run`` (one model per round), or a single model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sgpo.evaluation.report import RoundArtifacts


@dataclass
class Discovered:
    title: str
    candidates: list[tuple[str, str]]
    default_output: Path
    initial_model: str | None = None
    rounds: list[RoundArtifacts] = field(default_factory=list)


def discover(target: str) -> Discovered:
    """A run directory's round models and artifacts, or ``target`` itself as the one model to evaluate."""
    path = Path(target).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        return discover_run(path)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name or str(target)) or "model"
    return Discovered(
        title=f"sgpo evaluation of {target}", candidates=[(name, str(target))], default_output=Path("eval") / name
    )


_ROUND_DIR = re.compile(r"^round[_-]?(\d+)$")


def _model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def load_round(round_dir: Path, index: int) -> RoundArtifacts:
    """A round's pair margins (``annotations.jsonl``) and the follower's worst case (``worst_case.safetensors``)."""
    import numpy as np

    artifacts = RoundArtifacts(index)
    pairs = round_dir / "annotations.jsonl"
    if pairs.is_file():
        rows = [json.loads(line) for line in pairs.read_text().splitlines() if line.strip()]
        if rows and all("margin" in r for r in rows):
            artifacts.margins = np.array([float(r["margin"]) for r in rows])
    worst = round_dir / "worst_case.safetensors"
    if worst.is_file():
        from safetensors.numpy import load_file

        tensors = load_file(str(worst))
        artifacts.follower_inputs = tensors.get("xi")
        artifacts.weights = tensors.get("weights")
        artifacts.shifts = tensors.get("shifts")
    return artifacts


def discover_run(run_dir: Path) -> Discovered:
    """The model each round of a ``sgpo run`` directory saved, the run's initial model, and the rounds' artifacts."""
    rounds = sorted(
        ((int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _ROUND_DIR.match(p.name))),
        key=lambda item: item[0],
    )
    candidates = [(f"round {i}", str(p / "checkpoint")) for i, p in rounds if _model_dir(p / "checkpoint")]
    if not candidates:
        raise FileNotFoundError(
            f"target: {run_dir} is neither a saved model nor a run directory of `sgpo run` (round_<t>/checkpoint)"
        )
    initial = None
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        initial = (yaml.safe_load(config.read_text()) or {}).get("model", {}).get("name_or_path")
    return Discovered(
        title=f"sgpo evaluation of run {run_dir.name}",
        candidates=candidates,
        default_output=run_dir / "eval",
        initial_model=initial,
        rounds=[load_round(p, i) for i, p in rounds],
    )
