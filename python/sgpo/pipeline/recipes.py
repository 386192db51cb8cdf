"""Recipes: the bundled YAML configs, a config file read with ``key.sub=value`` overrides applied, validated."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sgpo.pipeline.config import RunConfig, config_from_dict
from sgpo.pipeline.typed import Replace, merge


def bundled_configs() -> list[str]:
    """Names of the YAML recipes shipped in ``sgpo/configs``."""
    root = resources.files("sgpo") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """A bundled recipe name (``default``, ``tiny``, ``mistral-7b_ssapo``, ...) or a YAML file path."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"config: {path} does not exist")
        return path
    bundled = Path(str(resources.files("sgpo") / "configs" / f"{name_or_path}.yaml"))
    if not bundled.is_file():
        raise FileNotFoundError(
            f"config: {str(name_or_path)!r} is neither a YAML file nor a bundled config "
            f"({', '.join(bundled_configs())})"
        )
    return bundled


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML, so numbers, booleans, null and lists work)."""
    if "=" not in text:
        raise ValueError(f"override: expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override: expected a dotted key before '=', got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ValueError(f"override: cannot parse the value of {key!r}: {err}") from err
    return key.split("."), value


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a recipe, apply ``key.sub=value`` overrides and validate; raises ``ValueError`` naming any bad key."""
    path = config_path(name_or_path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config: {path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"config: {path} must hold a mapping of keys, got {type(values).__name__}")
    for text in overrides:
        keys, value = parse_override(text)
        # the key is set to the value: a mapping replaces what the recipe holds there (judge.options={} empties it)
        nested: Any = {keys[-1]: Replace(value) if isinstance(value, dict) else value}
        for key in reversed(keys[:-1]):
            nested = {key: nested}
        values = merge(values, nested)
    cfg = config_from_dict(values)
    note = cfg.follower_note()
    # one line per run, not one per process of a launch
    if note is not None and os.environ.get("RANK", "0") == "0":
        print(f"[sgpo] {note}", flush=True)
    return cfg
