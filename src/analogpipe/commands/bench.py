"""`analogpipe bench`: speed benchmarks of the analog simulator against plain PyTorch."""

from __future__ import annotations

import argparse
import importlib
import sys

from analogpipe.commands._files import output_file_problem

# group modules, imported for their @register side effect; only the first one is required
GROUP_MODULES = ("analogpipe.bench.core", "analogpipe.bench.pipeline", "analogpipe.bench.dist")


def load_groups() -> list[str]:
    """Import the group modules that exist (missing optional ones are skipped); their names."""
    from analogpipe.bench import harness

    for i, name in enumerate(GROUP_MODULES):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            if i == 0 or exc.name != name:
                raise
    return harness.groups()


def add_parser(p: argparse.ArgumentParser) -> None:
    """Flags of `analogpipe bench`."""
    p.description = ("Time analog training steps against the same steps in plain PyTorch and "
                     "print median times, ratios and targets (see bench/README.md).")
    p.add_argument("--quick", action="store_true",
                   help="small shapes and few repeats (about 1-2 minutes on 2 free cores; "
                        "longer on a loaded machine)")
    p.add_argument("--json", metavar="FILE",
                   help="also write {machine, rows} as JSON to FILE (default: none)")
    p.add_argument("--only", nargs="+", action="extend", metavar="GROUP",
                   help="run only these groups (default: all registered)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch intra-op threads (default: the CPUs available)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the models run (cuda: the groups that support it, e.g. core)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when a row misses its target")


def main(args: argparse.Namespace) -> int:
    from analogpipe.bench import harness

    available = load_groups()
    unknown = [g for g in args.only or [] if g not in available]
    if unknown:
        print(f"analogpipe bench: unknown group(s) {', '.join(unknown)}; "
              f"available: {', '.join(available)}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print("analogpipe bench: --threads must be >= 1", file=sys.stderr)
        return 2
    if args.json is not None:  # checked before the run, which can take minutes
        problem = output_file_problem(args.json, "--json", make_folders=True)
        if problem:
            print(f"analogpipe bench: {problem}", file=sys.stderr)
            return 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("analogpipe bench: --device cuda but torch sees no CUDA device",
                  file=sys.stderr)
            return 2
        cpu_only = [g for g in args.only or [] if not harness.supports_device(g)]
        if cpu_only:
            print(f"analogpipe bench: group(s) {', '.join(cpu_only)} run on the CPU only "
                  "(--device cuda)", file=sys.stderr)
            return 2
    harness.configure_threads(args.threads)
    machine = harness.machine_stamp()

    def progress(group: str) -> None:
        print(f"running group {group!r}{' (quick)' if args.quick else ''} ...",
              file=sys.stderr, flush=True)

    rows = harness.run(args.only, quick=args.quick, progress=progress, device=args.device)
    machine["loadavg_1m_end"] = harness.machine_stamp()["loadavg_1m"]
    machine["quick"] = bool(args.quick)
    machine["device"] = args.device
    print(harness.format_table(rows, machine))
    if args.json is not None:
        harness.write_json(args.json, machine, rows)
        print(f"wrote {args.json}")
    if args.strict and any(r.meets_target is False for r in rows):
        return 1
    return 0
