"""``sgpo config-path [NAME]``: where the packaged recipes and accelerate configs live, for shells and launchers.

``sgpo config-path`` prints the directory; ``sgpo config-path accelerate/fsdp.yaml`` prints that file's path, so a
launch reads ``accelerate launch --config_file "$(sgpo config-path accelerate/fsdp.yaml)" -m sgpo run RECIPE``.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path


def configs_dir() -> Path:
    """The directory of the recipes bundled with sgpo (``accelerate/`` holds one launcher config per engine)."""
    return Path(str(resources.files("sgpo") / "configs"))


def packaged_config(name: str) -> Path:
    """A file under :func:`configs_dir` (``mistral-7b_ssapo.yaml``, ``accelerate/fsdp.yaml``; ``.yaml`` optional)."""
    root = configs_dir()
    path = root / name
    if not path.suffix:
        path = path.with_suffix(".yaml")
    if not path.is_file() or root.resolve() not in path.resolve().parents:
        known = sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml"))
        raise FileNotFoundError(f"NAME: {name!r} is not a packaged config; expected one of {', '.join(known)}")
    return path


def _run(args: argparse.Namespace) -> int:
    print(configs_dir() if args.name is None else packaged_config(args.name))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "config-path",
        help="print where the packaged configs live (or one config's path)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("name", nargs="?", default=None, metavar="NAME", help="e.g. accelerate/fsdp.yaml, tiny")
    parser.set_defaults(func=_run)
