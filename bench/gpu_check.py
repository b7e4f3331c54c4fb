"""One GPU check: the core bench on CUDA, AP training of ResNet10 at M = 4, the CUDA tests.

Run through `bench/gpu-check.sh` (which bounds it to 8 minutes). Writes one JSON file
(`--out`, default runs/gpu-check.json) and prints one summary table. `--device cpu --smoke`
is a dry run of the same code paths on the CPU with tiny sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from analogpipe.bench import core, harness
from analogpipe.commands._files import output_file_problem
from analogpipe.models import block_names, resnet10
from analogpipe.nn import convert_to_analog
from analogpipe.pipeline import schedules
from analogpipe.pipeline.local import LocalPipeline
from analogpipe.pipeline.partition import block_costs, partition, split_model
from analogpipe.presets import paper_config
from analogpipe.train.loop import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def run_core(device: str, smoke: bool, budget_s: float) -> list[harness.Row]:
    """The core group's cases on `device`, each (case, mode) capped at `budget_s`."""
    orig = core.cases
    core.cases = lambda quick: [dataclasses.replace(c, budget_s=min(c.budget_s, budget_s))
                                for c in orig(quick)]
    try:
        return core.bench_cases(quick=smoke, device=device, group=f"core-{device}")
    finally:
        core.cases = orig


def run_ap(device: str, smoke: bool, update: str) -> dict:
    """AP training of ResNet10 (M = 4 stages, 4 micro-batches of 32 per mini-batch) on
    CIFAR-shaped synthetic data (3x32x32 Gaussian inputs, 10 random labels)."""
    M, B, b = 4, 4, 32
    steps = 3 if smoke else 75  # mini-batches; B * steps micro-batch steps
    width = 8 if smoke else 16
    torch.manual_seed(0)
    model = resnet10(num_classes=10, width=width)
    names = block_names(model)
    groups = partition(block_costs(model, torch.zeros(1, 3, 32, 32)), M, names)
    model = convert_to_analog(model, paper_config(0.8, update=update), seed=0).to(device)
    stages = split_model(model, groups)
    g = torch.Generator().manual_seed(0)
    K = 16  # distinct micro-batches, cycled
    xs = torch.randn(K, b, 3, 32, 32, generator=g).to(device)
    ys = torch.randint(0, 10, (K, b), generator=g).to(device)
    pipe = LocalPipeline(stages, lr=0.05, loss_fn=F.cross_entropy)
    sched = schedules.build("ap", M, B, steps)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run = pipe.run(sched, lambda k: (xs[k % K], ys[k % K]))
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    losses = run.losses
    n = len(losses)
    finite = all(map(lambda v: v == v and abs(v) != float("inf"), losses))
    return {"update": update, "stages": M, "micro_batches": n, "micro_batch_size": b,
            "width": width, "wall_s": wall, "samples_per_s": n * b / wall,
            "loss_first": sum(losses[:B]) / B, "loss_last": sum(losses[-B:]) / B,
            "finite": finite, "peak_weight_copies": run.peak_weight_copies}


def run_tests(device: str) -> dict:
    """pytest on tests/test_cuda.py (its own conftest-free run); on the CPU a dry run."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    if device != "cuda":
        env["ANALOGPIPE_CUDA_TESTS_DEVICE"] = "cpu"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--noconftest",
           str(ROOT / "tests" / "test_cuda.py")]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240,
                             cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"rc": None, "summary": "timed out after 240 s", "wall_s": 240.0}
    lines = [ln for ln in out.stdout.strip().splitlines()
             if any(w in ln for w in ("passed", "failed", "skipped", "error"))]
    summary = lines[-1].strip("= ") if lines else (out.stdout + out.stderr).strip()[-200:]
    return {"rc": out.returncode, "summary": summary, "wall_s": time.perf_counter() - t0,
            "output_tail": (out.stdout + out.stderr)[-4000:]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a dry run)")
    p.add_argument("--out", default=str(ROOT / "runs" / "gpu-check.json"))
    p.add_argument("--case-budget", type=float, default=6.0,
                   help="seconds per bench (case, mode), default 6")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    problem = output_file_problem(args.out, "--out", make_folders=True)
    if problem:  # before the run, which takes minutes
        print(f"gpu-check: {problem}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    machine = harness.machine_stamp()
    machine.update(device=args.device, smoke=args.smoke)
    result: dict = {"machine": machine}
    status = {}
    rows: list[harness.Row] = []
    result["ap"] = []
    result["tests"] = {"rc": None, "summary": "not run"}
    budget = min(args.case_budget, 1.0) if args.smoke else args.case_budget
    # SIGINT (the shell script's time limit) stops the current part; what ran is still
    # written and summarized
    try:
        try:
            rows = run_core(args.device, args.smoke, budget)
            status["core bench"] = "ok"
        except Exception as exc:  # keep going: report what failed
            status["core bench"] = f"FAILED: {exc!r}"
        for update in ("expected", "pulsed"):
            try:
                result["ap"].append(run_ap(args.device, args.smoke, update))
            except Exception as exc:
                result["ap"].append({"update": update, "error": repr(exc)})
        result["tests"] = run_tests(args.device)
    except KeyboardInterrupt:
        status.setdefault("core bench", "INTERRUPTED (time limit)")
        result["interrupted"] = True
    result["rows"] = [r.to_dict() for r in rows]
    result["wall_s"] = time.perf_counter() - t_start
    out = Path(os.path.abspath(args.out))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2, allow_nan=True) + "\n")

    print(harness.format_table(rows, machine))
    print()
    print(f"{'AP ResNet10 M=4':<22}{'micro-batches':>14}{'samples/s':>11}{'loss first':>11}"
          f"{'loss last':>10}  status")
    for ap in result["ap"]:
        if "error" in ap:
            print(f"  {ap['update']:<20}{'':>46}  FAILED: {ap['error']}")
            continue
        print(f"  {ap['update']:<20}{ap['micro_batches']:>14}{ap['samples_per_s']:>11.1f}"
              f"{ap['loss_first']:>11.3f}{ap['loss_last']:>10.3f}  "
              f"{'ok' if ap['finite'] else 'NON-FINITE LOSS'}")
    t = result["tests"]
    print(f"\ncore bench: {status['core bench']}")
    print(f"CUDA tests{' (dry run on cpu)' if args.device != 'cuda' else ''}: "
          f"rc {t['rc']}, {t['summary']}")
    print(f"total {result['wall_s']:.0f} s; wrote {args.out}")
    ok = (status["core bench"] == "ok" and t["rc"] == 0 and len(result["ap"]) == 2
          and all(ap.get("finite") for ap in result["ap"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
