"""docs/cli.md, generated from the parser: every flag of every command in one place.

Regenerate with `python -m analogpipe.clidocs > docs/cli.md`; a test checks it is current.
"""

from __future__ import annotations

import argparse
import os

WIDTH = "100"


def render() -> str:
    """The Markdown reference: `analogpipe --help`, then each command's `--help`."""
    from analogpipe.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH  # argparse wraps to the terminal: fix it for the file
    try:
        parser = build_parser([])
        subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parts = ["# Command-line reference",
                 "",
                 "Generated from the parser by `python -m analogpipe.clidocs > docs/cli.md` "
                 "(a test checks that it is current). `analogpipe run` is short for "
                 "`analogpipe reproduce --quick`.",
                 "", "```text", parser.format_help().rstrip(), "```"]
        for name, sub in subs.choices.items():
            if name == "run":  # an alias of `reproduce --quick` (said above)
                continue
            parts += ["", f"## analogpipe {name}", "", "```text", sub.format_help().rstrip(),
                      "```"]
        return "\n".join(parts) + "\n"
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


if __name__ == "__main__":
    print(render(), end="")
