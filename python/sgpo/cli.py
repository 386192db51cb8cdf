"""The ``sgpo`` command line: one subcommand per stage, each defined next to the code it drives."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> "module:function"; the function adds the subcommand's parser and sets ``func`` on it. Modules are
# imported only to build their parser, and heavy imports (transformers, ...) stay inside the ``func`` bodies.
_COMMANDS: dict[str, str] = {
    "info": "sgpo.info:add_parser",
    "config-path": "sgpo.configs_cli:add_parser",
    "demo": "sgpo.demo:add_parser",
    "eval": "sgpo.eval_cli:add_parser",
    "export": "sgpo.export:add_parser",
    "label": "sgpo.labeling:add_parser",
    "run": "sgpo.pipeline.runner:add_parser",
    "solve": "sgpo.solve_cli:add_parser",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sgpo", description="Data-efficient, robust preference alignment (SSAPO, SPPO, DPO)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for target in _COMMANDS.values():
        module_name, func_name = target.split(":")
        getattr(importlib.import_module(module_name), func_name)(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--verbose", action="store_true", help="also show the libraries' own progress bars and warnings"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        from sgpo.console import quiet_libraries

        quiet_libraries()
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"sgpo {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
