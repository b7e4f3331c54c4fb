"""`analogpipe schedule`: print a pipeline schedule, its cycle figures and the closed form.

Torch-free: it only builds the schedule data and runs the cycle model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analogpipe.pipeline.schedule import ScheduleError, lower_with_comms
from analogpipe.pipeline.schedules import SCHEMES, build
from analogpipe.timing.cycles import Costs, closed_form, simulate

MAX_MICROBATCHES = 20_000
MAX_GRID_SLOTS = 160  # wider grids are unreadable in a terminal: use --png / --trace


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
    p.add_argument("--t-f", type=_non_negative, default=1.0, help="forward cycles per stage")
    p.add_argument("--t-b", type=_non_negative, default=1.0,
                   help="backward (with update) cycles per stage")
    p.add_argument("--t-u", type=_non_negative, default=0.0, help="extra cycles per UPDATE")
    p.add_argument("--t-comm", type=_non_negative, default=0.0,
                   help="cycles per transfer between adjacent stages")
    p.add_argument("--update-per-microbatch", action="store_true",
                   help="sp only: B sequential updates after the flush instead of one")
    p.add_argument("--lowered", action="store_true",
                   help="also print the schedule with send/recv actions")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--png", metavar="FILE", help="write a Gantt chart PNG")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome trace JSON")


def _fail(msg: str) -> int:
    print(f"analogpipe schedule: error: {msg}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    """Run the command; 2 on bad input (one line on stderr naming the flag)."""
    M, B, steps = args.stages, args.microbatches, args.steps
    if B * steps > MAX_MICROBATCHES:
        return _fail(f"--microbatches * --steps = {B * steps}: use at most {MAX_MICROBATCHES} "
                     "micro-batches in all (the simulation is pure Python)")
    if args.update_per_microbatch and args.scheme != "sp":
        return _fail(f"--update-per-microbatch applies to --scheme sp only, not {args.scheme}")
    for flag in ("png", "trace"):
        path = getattr(args, flag)
        if path and not Path(path).resolve().parent.is_dir():
            return _fail(f"--{flag} {path}: folder {Path(path).resolve().parent} does not exist")
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
    print(f"scheme {args.scheme}: M={M} stages, B={B} micro-batches per step, {steps} steps "
          f"(K={K}), t_f={args.t_f:g}, t_b={args.t_b:g}, t_u={args.t_u:g}, "
          f"t_comm={args.t_comm:g}")
    unit = args.t_f == 1 and args.t_b == 1
    unit_slots = tl.makespan if unit and args.t_comm == 0 else simulate(sched).makespan
    if unit_slots <= MAX_GRID_SLOTS:
        if not unit or args.t_comm:
            print("grid (unit costs: t_f = t_b = 1, no transfer time):")
        print(sched.render())
    else:
        print(f"(grid omitted: more than {MAX_GRID_SLOTS} slots; use --png or --trace)")
    if lowered is not None:
        print("lowered (with send/recv):")
        print(lowered.render_lists())
    print(f"makespan        {tl.makespan:g} cycles")
    print(f"density         {tl.density:.4f}")
    print(f"bubble fraction {tl.bubble_fraction:.4f}")
    print(f"staleness       {tl.staleness}  (updates between a forward and its backward)")
    print(f"peak in flight  {tl.peak_in_flight}")
    print(f"updates         {tl.num_updates}")
    if tl.speedup_over_wop is not None:
        print(f"speedup vs WOP  {tl.speedup_over_wop:.3f}")
    note = "" if exact else "  (assumes t_u = t_comm = 0)"
    print(f"closed form     makespan {cf['makespan']:g}, density {cf['density']:.4f}, "
          f"speedup {cf['speedup_over_wop']:.3f}{note}")
    for kind, path in written.items():
        print(f"wrote {kind}: {path}")
    return 0
