"""The tested dependency set, ``constraints.txt``: write it from a green environment, or compare one with it.

    python scripts/deps.py freeze [--out constraints.txt]   # what ``make constraints`` runs after the suite passed
    python scripts/deps.py diff [--constraints constraints.txt]  # what ``make test-latest`` prints

``freeze`` records every distribution installed beside sgpo, at its exact version without a local label
(``torch==2.13.0`` matches the CPU and the CUDA builds alike). ``diff`` lists the distributions whose installed
version is not the tested one, and those on one side only.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from datetime import date
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
# the project itself and the installers, which pip freeze leaves out too
SKIP = {"sgpo", "pip", "setuptools", "wheel", "distribute"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """Every distribution of this interpreter's environment (name -> version without a local label)."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical(name) not in SKIP:
            found[canonical(name)] = dist.version.split("+")[0]
    return found


def read_constraints(path: Path) -> dict[str, str]:
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{path}:{number}: {line!r} is not an exact pin 'name==version'")
        pins[canonical(name)] = version.strip()
    return pins


def freeze(out: Path) -> int:
    pins = installed()
    if "torch" not in pins:
        raise SystemExit("deps freeze: torch is not installed here; run it with the environment the suite passed in")
    header = [
        "# The exact versions `make test` passed with; scripts/setup.sh installs them by default.",
        f"# Made on {date.today().isoformat()} with Python {platform.python_version()} on {sys.platform} "
        f"{platform.machine()}. Regenerate after a green suite: make constraints",
        "# SGPO_DEPS=latest make setup installs the newest releases instead; make test-latest tries them.",
    ]
    out.write_text("\n".join(header + [f"{name}=={pins[name]}" for name in sorted(pins)]) + "\n")
    print(f"deps freeze: {len(pins)} pins -> {out}")
    return 0


def diff(constraints: Path) -> int:
    tested, now = read_constraints(constraints), installed()
    changed = [(n, tested[n], now[n]) for n in sorted(tested.keys() & now.keys()) if tested[n] != now[n]]
    added = sorted(now.keys() - tested.keys())
    missing = sorted(tested.keys() - now.keys())
    print(f"versions that differ from {constraints.name} ({len(changed)} of {len(tested)} pins):")
    width = max([len(n) for n, _, _ in changed] + [7])
    if changed:
        print(f"  {'package':<{width}}  {'tested':<12}  installed")
    for name, old, new in changed:
        print(f"  {name:<{width}}  {old:<12}  {new}")
    if added:
        print("installed but not in the tested set: " + ", ".join(f"{n}=={now[n]}" for n in added))
    if missing:
        print("in the tested set but not installed: " + ", ".join(missing))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("freeze").add_argument("--out", type=Path, default=CONSTRAINTS)
    sub.add_parser("diff").add_argument("--constraints", type=Path, default=CONSTRAINTS)
    args = parser.parse_args(argv)
    return freeze(args.out) if args.command == "freeze" else diff(args.constraints)


if __name__ == "__main__":
    sys.exit(main())
