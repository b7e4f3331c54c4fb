"""`analogpipe schedule`: print a pipeline schedule, its cycle figures and the closed form.

Torch-free: it only builds the schedule data and runs the cycle model.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from analogpipe.commands._files import output_file_problem
from analogpipe.pipeline.schedule import ScheduleError, lower_with_comms
from analogpipe.pipeline.schedules import SCHEMES, build
from analogpipe.timing.cycles import Costs, closed_form, simulate

MAX_MICROBATCHES = 20_000
MAX_GRID_SLOTS = 160  # longer grids are only printed with --full (use --png / --trace)
WIDTH = 100  # text output fits this many columns
SUMMARY_BLOCKS = 3  # without --full, a wrapped grid shows its first and last blocks only
LEGEND = """\
legend: sFk / sBk = stage s runs the forward / backward of micro-batch k (1 slot each);
  +Uk = the update that applies micro-batch k's stashed gradient (Ua-b: micro-batches a..b;
  in AP one per backward, in SP one per mini-batch); SFk / RFk = send / receive the
  activation of micro-batch k, SBk / RBk = the same for its gradient (zero-time actions are
  written beside the compute they follow, without their stage number); . = idle slot"""


def _int_at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: use an integer {allowed}")
        return value

    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is invalid: use a finite number >= 0")
    return value


def add_parser(p: argparse.ArgumentParser) -> None:
    """Flags of `analogpipe schedule`."""
    p.description = (
        "Build a WOP / SP / AP / PipeDream schedule, simulate it on the cycle model and print "
        "the time x stage grid, makespan, density, staleness and the closed form."
    )
    p.add_argument("--scheme", choices=list(SCHEMES), default="ap",
                   help="wop (no pipeline), sp (GPipe), ap (async 1F1B), pipedream (stashing)")
    p.add_argument("--stages", type=_int_at_least(1, 256), default=4, metavar="M",
                   help="pipeline stages M (default 4)")
    p.add_argument("--microbatches", type=_int_at_least(1, MAX_MICROBATCHES), default=4,
                   metavar="B", help="micro-batches per mini-batch B (default 4)")
    p.add_argument("--steps", type=_int_at_least(1, MAX_MICROBATCHES), default=2,
                   help="mini-batches (steps); the stream has B*steps micro-batches (default 2)")
    p.add_argument("--t-f", type=_non_negative, default=1.0,
                   help="forward cycles per stage, a finite number >= 0")
    p.add_argument("--t-b", type=_non_negative, default=1.0,
                   help="backward (with update) cycles per stage, a finite number >= 0")
    p.add_argument("--t-u", type=_non_negative, default=0.0,
                   help="extra cycles per UPDATE, a finite number >= 0")
    p.add_argument("--t-comm", type=_non_negative, default=0.0,
                   help="cycles per transfer between adjacent stages, a finite number >= 0")
    p.add_argument("--update-per-microbatch", action="store_true",
                   help="sp only: B sequential updates after the flush instead of one")
    p.add_argument("--lowered", action="store_true",
                   help="also print the schedule with send/recv actions")
    p.add_argument("--full", action="store_true",
                   help=f"print the whole grid, wrapped to {WIDTH} columns (default: long "
                        "grids are summarised by their first and last slots)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--png", metavar="FILE",
                   help="write a Gantt chart to FILE, a .png path (default: none)")
    p.add_argument("--trace", metavar="FILE",
                   help="write a Chrome trace JSON to FILE (default: none)")


def wrap_grid(grid: str, width: int = WIDTH, full: bool = True) -> str:
    """Cut a `Schedule.render()` grid into blocks of columns that fit `width`, each with its
    row labels and slot numbers. Without `full`, only the first and last blocks are kept."""
    lines = grid.split("\n")
    header, rows = lines[0], lines[1:]
    if not rows or max(len(r) for r in lines) <= width:
        return grid
    ncols = len(header.split())
    label = len(f"stage {len(rows) - 1}")
    cell = (len(rows[0]) - label) // ncols  # one space + the right-aligned cell
    header = header.ljust(len(rows[0]))
    per_block = max(1, (width - label) // cell)
    blocks = []
    for c0 in range(0, ncols, per_block):
        c1 = min(ncols, c0 + per_block)
        cut = slice(label + c0 * cell, label + c1 * cell)
        blocks.append("\n".join([(" " * label + header[cut]).rstrip()]
                                + [r[:label] + r[cut] for r in rows]))
    if not full and len(blocks) > SUMMARY_BLOCKS:
        first, last = blocks[:SUMMARY_BLOCKS - 1], blocks[-1]
        lo, hi = (SUMMARY_BLOCKS - 1) * per_block, (len(blocks) - 1) * per_block - 1
        blocks = [*first, f"... slots {lo}-{hi} omitted (--full prints every slot) ...", last]
    return "\n\n".join(blocks)


def wrap_lists(text: str, width: int = WIDTH, full: bool = True, max_lines: int = 3) -> str:
    """Wrap the per-stage action lists; without `full`, at most `max_lines` lines a stage."""
    out = []
    for line in text.split("\n"):
        head, _, rest = line.partition(": ")
        wrapped = textwrap.wrap(rest, width - len(head) - 2, break_on_hyphens=False,
                                break_long_words=False) or [""]
        if not full and len(wrapped) > max_lines:
            n = len(rest.split()) - sum(len(w.split()) for w in wrapped[:max_lines])
            wrapped = [*wrapped[:max_lines], f"... {n} more actions (--full)"]
        out.append(f"{head}: {wrapped[0]}")
        out.extend(" " * (len(head) + 2) + w for w in wrapped[1:])
    return "\n".join(out)


def _print(line: str) -> None:
    """One result line, wrapped to WIDTH columns (continuations indented)."""
    print(textwrap.fill(line, WIDTH, subsequent_indent=" " * 16, break_on_hyphens=False,
                        break_long_words=False))


def _fail(msg: str) -> int:
    print(f"analogpipe schedule: error: {msg}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    """Run the command; 2 on bad input (one line on stderr naming the flag)."""
    M, B, steps = args.stages, args.microbatches, args.steps
    if B * steps > MAX_MICROBATCHES:
        return _fail(f"--microbatches * --steps = {B * steps}: use at most {MAX_MICROBATCHES} "
                     "micro-batches in all (the simulation is pure Python)")
    if args.t_f + args.t_b <= 0:
        return _fail(f"--t-f {args.t_f:g} --t-b {args.t_b:g}: a stage must do some work; give "
                     "--t-f + --t-b > 0")
    if args.update_per_microbatch and args.scheme != "sp":
        return _fail(f"--update-per-microbatch applies to --scheme sp only, not {args.scheme}")
    for flag, suffix in (("png", ".png"), ("trace", None)):
        path = getattr(args, flag)
        problem = path is not None and output_file_problem(path, f"--{flag}", suffix)
        if problem:
            return _fail(problem)
    kw = {"update_per_microbatch": True} if args.update_per_microbatch else {}
    try:
        sched = build(args.scheme, M, B, steps, **kw)
        costs = Costs(t_f=args.t_f, t_b=args.t_b, t_u=args.t_u, t_comm=args.t_comm)
        tl = simulate(sched, costs)
        lowered = lower_with_comms(sched) if args.lowered else None
    except (ValueError, ScheduleError) as exc:
        return _fail(str(exc).splitlines()[0])
    cf = closed_form(args.scheme, M, B, steps, args.t_f, args.t_b)
    exact = args.t_u == 0 and args.t_comm == 0  # the closed forms assume neither

    written = {}
    if args.png:
        from analogpipe.timing.gantt import save_png

        written["png"] = str(save_png(tl, args.png))
    if args.trace:
        from analogpipe.timing.gantt import save_trace

        written["trace"] = str(save_trace(tl, args.trace))

    if args.json:
        out = {
            **tl.to_dict(),
            "scheme": args.scheme,
            "stages": M,
            "microbatches": B,
            "steps": steps,
            "microbatches_total": B * steps,
            "t_f": args.t_f,
            "t_b": args.t_b,
            "t_u": args.t_u,
            "t_comm": args.t_comm,
            "closed_form": {**cf, "applies": exact},
            "schedule": sched.to_text(),
            "files": written,
        }
        if lowered is not None:
            out["lowered"] = lowered.to_text()
        print(json.dumps(out))
        return 0

    K = B * steps
    _print(f"scheme {args.scheme}: M={M} stages, B={B} micro-batches per step, {steps} steps "
           f"(K={K}), t_f={args.t_f:g}, t_b={args.t_b:g}, t_u={args.t_u:g}, "
           f"t_comm={args.t_comm:g}")
    unit = args.t_f == 1 and args.t_b == 1
    unit_slots = tl.makespan if unit and args.t_comm == 0 else simulate(sched).makespan
    shown = False
    if unit_slots <= MAX_GRID_SLOTS or args.full:
        if not unit or args.t_comm:
            print("grid (unit costs: t_f = t_b = 1, no transfer time):")
        print(wrap_grid(sched.render(), full=args.full))
        shown = True
    else:
        print(f"(grid omitted: more than {MAX_GRID_SLOTS} slots; --full prints it, --png or "
              "--trace draw it)")
    if lowered is not None:
        print("lowered (with send/recv):")
        print(wrap_lists(lowered.render_lists(), full=args.full))
        shown = True
    if shown:
        print(LEGEND)
    _print(f"makespan        {tl.makespan:g} cycles")
    _print(f"density         {tl.density:.4f}")
    _print(f"bubble fraction {tl.bubble_fraction:.4f}")
    _print(f"staleness       {tl.staleness}  (updates between a forward and its backward)")
    _print(f"peak in flight  {tl.peak_in_flight}")
    _print(f"updates         {tl.num_updates}")
    if tl.speedup_over_wop is not None:
        _print(f"speedup vs WOP  {tl.speedup_over_wop:.3f}")
    note = "" if exact else "  (assumes t_u = t_comm = 0)"
    _print(f"closed form     makespan {cf['makespan']:g}, density {cf['density']:.4f}, "
           f"speedup {cf['speedup_over_wop']:.3f}{note}")
    for kind, path in written.items():
        _print(f"wrote {kind}: {path}")
    return 0
