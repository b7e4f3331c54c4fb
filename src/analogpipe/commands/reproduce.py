"""`analogpipe reproduce`: the paper's experiment set, results.csv, figures and report.md.

Every check (settings, dataset folder, model / stage counts, device, output folder) happens
before anything is written, so bad input exits 2 without creating the output folder.

Runs live in OUT/runs/<name>-<settings hash>/: a run is reused only when its settings are
identical, and runs with other settings never collide. Ctrl-C or SIGTERM ends every worker
within seconds (exit 130 / 143); finished runs are kept and the next call resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: use an integer >= 1")
    return value


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use comma-separated numbers") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one number")
    return values


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use comma-separated integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers >= 1")
    return values


def add_parser(p: argparse.ArgumentParser) -> None:
    """Flags of `analogpipe reproduce` (hidden ones shrink the run for tests)."""
    p.description = (
        "Test the paper's claims, each with an experiment that isolates it: staleness (AP(M) "
        "vs AP(1)), AP vs SP vs digital accuracy (two lr policies), speedup in cycles to a "
        "target on the AIMC clock, a tau sweep where only the device bound changes, and the "
        "convergence rate and floor on a teacher problem; beyond the paper, Tiki-Taka's "
        "floor against saturation, PipeMare delay compensation and Tiki-Taka's cost. Writes "
        "OUT/report.md, OUT/results.csv, OUT/analysis.json and figures. Interrupted runs resume.")
    p.add_argument("--quick", action="store_true",
                   help="digits, 9-block MLP, 5 seeds, 10 epochs: minutes on a laptop CPU "
                        "(default: the paper's CIFAR-10 ResNet10 setting, meant for a GPU)")
    p.add_argument("--dataset", default=None, choices=("digits", "cifar10", "cifar100"),
                   help="default: digits with --quick, else cifar10")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder holding cifar-10-batches-py/ or cifar-100-python/ (default: "
                        "none; needed for CIFAR)")
    p.add_argument("--seeds", type=int, default=None,
                   help="number of seeds n >= 1 per cell (default 5 with --quick, else 3)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where tensors live (cuda needs a CUDA build of torch)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel training processes >= 1 (default: number of CPU cores; "
                        "1 on cuda)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per run >= 1 (default 10 with --quick, else 300)")
    p.add_argument("--lr", type=float, default=None,
                   help="base lr > 0 (default 0.05 with --quick, else 0.1)")
    p.add_argument("--groups", default=None,
                   help="comma-separated experiment groups to run (default: all: staleness, "
                        "equivalence, speedup, tau, convergence, beyond-floor, "
                        "beyond-staleness, beyond-cost)")
    p.add_argument("--no-convergence", action="store_true",
                   help="skip the teacher-problem convergence group")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (required); calling again with the same folder reuses "
                        "finished runs with identical settings and resumes cut ones")
    p.add_argument("--overwrite", action="store_true",
                   help="train this call's runs again from scratch, deleting their earlier "
                        "results (runs with other settings are kept)")
    # knobs that shrink the run (tests, small reproductions)
    p.add_argument("--subset", type=int, default=None, metavar="N",
                   help="use only the first N training samples (default: all)")
    p.add_argument("--stage-list", type=_ints, default=None, metavar="M1,M2",
                   help="stage counts of the staleness and speedup groups, integers >= 1 "
                        "(default 1,2,4,8)")
    p.add_argument("--taus", type=_floats, default=None, metavar="T1,T2",
                   help="tau values of the saturation sweep, each >= the sweep's omega "
                        "(default 0.5,0.8,1.6,3.2)")
    p.add_argument("--convergence-steps", type=int, default=None, metavar="K",
                   help="steps of the teacher-problem runs >= 1, convergence group and "
                        "Beyond the paper (default 3000 and 1000 with --quick, else 20000 and "
                        "6000)")
    p.add_argument("--width", type=int, default=None, metavar="W",
                   help="hidden width of the quick mode's MLP >= 1 (default 64)")
    p.add_argument("--depth", type=int, default=None, metavar="D",
                   help="hidden layers of the quick mode's MLP >= 1 (default 7)")


def _fail(msg: str) -> int:
    print(f"analogpipe reproduce: error: {msg}", file=sys.stderr)
    return 2


def _settings(args: argparse.Namespace):
    from analogpipe.errors import ConfigError
    from analogpipe.experiments.plan import full_settings, quick_settings

    over = {
        "dataset": args.dataset, "data_dir": args.data_dir, "seeds": args.seeds,
        "device": args.device, "epochs": args.epochs, "lr": args.lr, "subset": args.subset,
        "stage_list": args.stage_list, "sweep_taus": args.taus,
        "conv_steps": args.convergence_steps, "bt_teacher_steps": args.convergence_steps,
    }
    for k in ("width", "depth"):
        v = getattr(args, k)
        if v is not None:
            over[k] = over[f"pipe_{k}"] = v
    gs = ()
    if args.groups is not None:
        gs = tuple(g.strip() for g in args.groups.split(",") if g.strip())
        if not gs:
            raise ConfigError(f"--groups {args.groups!r}: name at least one group, e.g. "
                              "--groups staleness,tau (leave --groups out to run all)")
        if args.no_convergence and "convergence" in gs:
            raise ConfigError("--groups includes convergence but --no-convergence skips it: "
                              "give one or the other")
    if args.no_convergence:
        from analogpipe.experiments.plan import GROUPS, groups

        groups(quick_settings())  # registers the paper's groups
        gs = tuple(g for g in (gs or tuple(GROUPS)) if g != "convergence")
        over["convergence"] = False
    over["groups"] = gs
    return quick_settings(**over) if args.quick else full_settings(**over)


def validate(args: argparse.Namespace):
    """Settings, the run plan and one build per model / largest M: raises on bad input."""
    from analogpipe.data import load_dataset
    from analogpipe.errors import ConfigError
    from analogpipe.experiments.plan import plan
    from analogpipe.train import build

    for name in ("seeds", "workers", "epochs", "subset", "convergence_steps", "width",
                 "depth"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={v} is invalid: use an integer >= 1")
    if args.lr is not None and not args.lr > 0:
        raise ConfigError(f"--lr={args.lr} is invalid: use a value > 0")
    if args.taus is not None and min(args.taus) <= 0:
        raise ConfigError(f"--taus={args.taus} is invalid: use values > 0")
    from analogpipe.train.rundir import check_writable_dir

    check_writable_dir(args.out)
    out = Path(args.out)
    if not (out / "reproduce.json").exists() and any(
            (out / name).exists() for name in ("run.json", "checkpoint.pt", "metrics.jsonl")):
        raise ConfigError(f"--out {args.out}: folder holds an `analogpipe train` run "
                          "(run.json / checkpoint.pt), not a reproduction; choose another --out")
    s = _settings(args)
    if min(s.sweep_taus) < s.sweep_omega:
        raise ConfigError(f"--taus={list(s.sweep_taus)}: every tau of the sweep must be >= its "
                          f"mapping omega = {s.sweep_omega:g}")
    if s.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda but torch sees no CUDA device: use --device cpu")
    load_dataset(s.dataset, s.data_dir, subset=s.subset)  # DataError: missing CIFAR folder
    specs = plan(s)
    largest: dict[tuple, object] = {}
    for spec in specs:
        c = spec.config
        key = (c.model, c.width, c.depth)
        if key not in largest or c.stages > largest[key].stages:
            largest[key] = c
    for c in largest.values():
        build(c)  # model blocks >= stages, device available, batch <= data
    return s, specs


def main(args: argparse.Namespace) -> int:
    from analogpipe.data import DataError
    from analogpipe.errors import ConfigError
    from analogpipe.experiments.analysis import atomic_write
    from analogpipe.experiments.report import measure, write_report
    from analogpipe.experiments.runner import discard_runs, run_all
    from analogpipe.train.loop import environment

    t0 = time.perf_counter()
    try:
        s, specs = validate(args)
    except (ConfigError, DataError, ValueError) as exc:
        return _fail(str(exc))
    workers = args.workers or (1 if s.device == "cuda" else (os.cpu_count() or 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.overwrite:
        n = discard_runs(specs, out)
        print(f"analogpipe reproduce: --overwrite: deleted {n} earlier run(s) with these "
              "settings", file=sys.stderr, flush=True)
    # the plan and its rules are on disk before the first run starts
    atomic_write(out / "reproduce.json", json.dumps(
        {"settings": s.to_dict(), "rules": s.rules.to_dict(), "argv": sys.argv,
         "workers": workers, "runs": [sp.name for sp in specs]}, indent=1, default=str) + "\n")
    print(f"analogpipe reproduce: {len(specs)} runs ({'quick' if s.quick else 'full'}, "
          f"{s.dataset}, n={s.seeds} seeds, {s.epochs} epochs) on {workers} worker(s) -> {out}",
          file=sys.stderr, flush=True)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    import resource

    from analogpipe.cli import Interrupted

    try:
        # measurements that need no run (the teacher problem) go while the workers train
        results, _ = run_all(specs, out, workers, log=log,
                             while_waiting=lambda: measure(specs, s, out, log=log,
                                                           independent_only=True))
        extras = measure(specs, s, out, log=log)
    except KeyboardInterrupt as exc:
        sig = exc if isinstance(exc, Interrupted) else Interrupted()
        print(f"analogpipe reproduce: interrupted ({sig.signame}); every worker is stopped, "
              f"finished runs are kept in {out / 'runs'}: run the same command again to "
              "resume", file=sys.stderr, flush=True)
        return sig.code

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    failed = [r for r in results if r.status == "failed"]
    header = {**environment(), "command": " ".join(["analogpipe", *sys.argv[1:]])
              if sys.argv and sys.argv[0].endswith("analogpipe") else " ".join(sys.argv),
              "workers": workers, "wall_s": time.perf_counter() - t0,
              "cpu_s": usage.ru_utime + usage.ru_stime + me.ru_utime + me.ru_stime,
              "trained": sum(r.status in ("done", "diverged") for r in results),
              "reused": sum(r.status == "skipped" for r in results), "failed": len(failed)}
    write_report(out, specs, s, header, extras)
    wall = time.perf_counter() - t0
    print(f"wrote {out / 'report.md'}, {out / 'results.csv'}: wall {wall:.1f}s, CPU "
          f"{header['cpu_s']:.1f}s (process tree)", flush=True)
    if failed:
        for r in failed:
            print(f"analogpipe reproduce: run {r.name} failed: {r.message}", file=sys.stderr)
        return 1
    return 0
