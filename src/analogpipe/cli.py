"""Command line: `analogpipe run | train | schedule | reproduce | bench`.

Each subcommand lives in `analogpipe.commands.<name>` and exposes
`add_parser(subparsers) -> None` and `main(args) -> int`. Imports are lazy so that
`analogpipe schedule` never pays for torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": "train a model (digital, WOP, SP or AP)",
    "schedule": "print a pipeline schedule with its cycle figures",
    "reproduce": "run the paper's experiment set and write a report",
    "bench": "speed benchmarks against plain PyTorch",
}


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and a one-line message on bad input."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="analogpipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    argv = sys.argv[1:] if argv is None else argv
    # only import the module of the command being run (the others are listed for --help)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        if wanted in COMMANDS and name != wanted:
            sub.add_parser(name, help=help_text)
            continue
        try:
            module = importlib.import_module(f"analogpipe.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"analogpipe.commands.{name}":
                raise
            sub.add_parser(name, help=help_text + " (not available)")
            continue
        p = sub.add_parser(name, help=help_text)
        module.add_parser(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "run":  # `analogpipe run` is the main job
        argv = ["reproduce", "--quick", *argv[1:]]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    module = getattr(args, "_module", None)
    if module is None:
        parser.error(f"command {args.command!r} is not available in this build")
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
