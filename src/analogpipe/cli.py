"""Command line: `analogpipe run | train | schedule | reproduce | plot | bench`.

Each subcommand lives in `analogpipe.commands.<name>` and exposes
`add_parser(parser) -> None` and `main(args) -> int` (optionally `prepare(args, argv) ->
args`, run after parsing). Imports are lazy so that `analogpipe schedule` never pays for torch.

Exit codes: 0 done, 1 a run failed, 2 bad input (nothing written), 3 training diverged,
130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from analogpipe.runtime import keep_freed_memory

COMMANDS = {
    "run": "the main job: `reproduce --quick` (the paper's experiments, small sizes)",
    "train": "train a model (digital, WOP, SP, AP or PipeDream)",
    "schedule": "print a pipeline schedule with its cycle figures",
    "reproduce": "run the paper's experiment set and write a report",
    "plot": "draw loss and accuracy of one or several runs into a PNG",
    "bench": "speed benchmarks against plain PyTorch",
}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds like Ctrl-C; `code` is the exit status (128 + signal)."""

    def __init__(self, signame: str = "SIGINT", code: int = 130) -> None:
        super().__init__(signame)
        self.signame, self.code = signame, code


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default; examples keep their lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example"):  # an epilog of example commands: keep it as written
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if text is argparse.SUPPRESS or "%(default)" in text or "(default" in text or \
                "default:" in text:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: off)"
        if action.default is None or action.default is argparse.SUPPRESS or not \
                action.option_strings or isinstance(action, argparse._VersionAction):
            return text
        default = action.default
        if isinstance(default, (tuple, list)):
            default = ",".join(str(v) for v in default) or "none"
        return f"{text} (default: {default})"


def _suggestion(word: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2, one message, and suggests the nearest flag / choice."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # `--epoch 2` is an error, not --epochs
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        m = re.match(r"unrecognized arguments: (.*)", message)
        if m:
            options = list(self._option_string_actions)
            for word in m.group(1).split():
                if word.startswith("-"):
                    message += _suggestion(word.split("=")[0], options)
                    break
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            message += _suggestion(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
        # one message, as the commands' own value errors give it (not argparse's usage
        # block, 20-odd lines for `train`); --help lists the flags
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the "
                     "flags)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from analogpipe import __version__

    parser = _Parser(prog="analogpipe", description=__doc__.split("\n\n")[0],
                     epilog="Run `analogpipe COMMAND --help` for the flags of a command; "
                            "docs/cli.md lists them all.")
    parser.add_argument("--version", action="version", version=f"analogpipe {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    # only import the module of the command being run (the others are listed for --help)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        if name == "run":  # an alias that main() rewrites to `reproduce --quick`
            sub.add_parser(name, help=help_text, add_help=False)
            continue
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
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_parser(p)
        p.set_defaults(_module=module, _parser=p)
    return parser


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM unwinds like Ctrl-C (finally blocks run, children are
    ended, files stay whole); SIGINT carries its own name. Restored afterwards."""

    def on_signal(num: int, _frame) -> None:
        name = signal.Signals(num).name
        raise Interrupted(name, 128 + num)

    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            saved[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (an embedding application)
            pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "run":  # `analogpipe run` is the main job
        argv = ["reproduce", "--quick", *argv[1:]]
    parser = build_parser(argv)
    args, extras = parser.parse_known_args(argv)
    sub_parser = getattr(args, "_parser", parser)
    if extras:
        sub_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    module = getattr(args, "_module", None)
    if module is None:
        parser.error(f"command {args.command!r} is not available in this build")
    keep_freed_memory()  # speed only: no result changes (analogpipe.runtime)
    prepare = getattr(module, "prepare", None)
    if prepare is not None:
        args = prepare(args, argv[argv.index(args.command) + 1:])
    with _signals_interrupt():
        try:
            code = int(module.main(args) or 0)
            sys.stdout.flush()
            return code
        except KeyboardInterrupt as exc:
            sig = exc if isinstance(exc, Interrupted) else Interrupted()
            print(f"analogpipe {args.command}: interrupted ({sig.signame})", file=sys.stderr)
            return sig.code
        except BrokenPipeError:
            # the reader went away (`analogpipe schedule | head`): stop quietly, the standard
            # way (https://docs.python.org/3/library/signal.html#note-on-sigpipe)
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 141  # 128 + SIGPIPE, as a shell reports a process ended by it


if __name__ == "__main__":  # `python -m analogpipe.cli` (torchrun): run the imported module,
    from analogpipe.cli import main as _main  # so that its classes (Interrupted) are the ones

    sys.exit(_main())  # the commands import, not copies in __main__
