"""Beyond the paper: Tiki-Taka in the asynchronous pipeline, and PipeMare delay compensation.

Three measurements, each with mean and 95% confidence interval over seeds (Student t,
``scipy.stats``):

1. **Floor against saturation** (``floor``): final test loss on a teacher problem and final test
   accuracy on digits, Analog SGD against Tiki-Taka, at M = 1 and in AP with M = 4, over a tau
   sweep in which only the device bound changes (the mapping is fixed in absolute conductance
   units, the IO, the initial weights and the learning rate stay the same; the ideal device is
   the tau -> inf end). The teacher is a chain of four bias-free linear layers whose weights lie
   in [-0.3, 0.3], inside every swept range, so an optimum lies inside the range and the floor
   does not measure clipping; its targets carry Gaussian noise (the gradient noise that drives
   Analog SGD's floor). Expected from arXiv 2406.12774: Tiki-Taka's floor does not grow as tau
   shrinks, Analog SGD's does.
2. **Staleness cost** (``staleness``): samples to a target test accuracy on digits in AP with
   M in {4, 8}, with and without PipeMare's rescheduling, relative to M = 1 (the same micro-batch
   stream without a pipeline).
3. **Cost of Tiki-Taka** (``cost``): transfer cycles on the AIMC clock (``timing.aimc``) and the
   simulator's wall time per sample.

Runs are independent and run in worker processes (one torch thread each). Every run is its own
micro-batch stream (micro-batch size ``b``, one update per micro-batch in AP, so M = 1 is plain
analog SGD on the same stream); the pipeline drains at each evaluation point. Entry point:
``python -m analogpipe.experiments.beyond --quick --out DIR`` writes ``DIR/beyond.json`` and
``DIR/beyond.md`` (the report section, also returned by ``render``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ALGORITHMS = ("analog-sgd", "tiki-taka")
TEACHER_DIMS = (16, 16, 16, 16, 4)  # chain of four linear layers
TEACHER_SCALE = 0.3  # teacher weights uniform in [-0.3, 0.3]


@dataclass(kw_only=True)
class BeyondSettings:
    """Everything that decides the runs (stored in beyond.json and quoted in the report)."""

    quick: bool = True
    seeds: int = 3
    taus: tuple[float, ...] = (0.4, 1.0)
    floor_stages: tuple[int, ...] = (1, 4)
    stale_stages: tuple[int, ...] = (4, 8)
    micro_batch_size: int = 8
    lr: float = 0.05
    # Tiki-Taka (aihwkit TransferCompound names): W = gamma A + C, one column per update
    gamma: float = 0.5
    transfer_every: int = 1
    n_reads_per_transfer: int = 1
    transfer_lr: float = 1.6
    fast_lr: float = 1.0
    # teacher problem
    teacher_noise: float = 0.1
    teacher_microbatches: int = 1000
    # digits
    digits_width: int = 32
    digits_depth: int = 3
    digits_epochs: int = 2
    digits_omega: float = 0.2  # fixed mapping, absolute conductance units (<= min(taus) / 2)
    io_bits: int = 8
    out_noise: float = 0.005
    # staleness
    stale_depth: int = 7  # 9 blocks: enough for M = 8
    stale_width: int = 64
    stale_tau: float = 0.6
    stale_algorithm: str = "analog-sgd"
    stale_epochs: int = 3
    stale_target: float = 0.85
    pipemare_warmup_epochs: float = 1.0
    evals: int = 10
    bench_microbatches: int = 150  # wall-time benchmark: micro-batches per timed run
    bench_repeats: int = 3
    workers: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def quick_settings(**over: Any) -> BeyondSettings:
    """About 3 minutes on 2 idle cores: 3 seeds, 2 taus and the ideal end, short runs."""
    return BeyondSettings(**{k: v for k, v in over.items() if v is not None})


def full_settings(**over: Any) -> BeyondSettings:
    """Longer runs, 5 seeds, a wider tau sweep."""
    base = dict(quick=False, seeds=5, taus=(0.35, 0.4, 0.5, 0.7, 1.0, 2.0),
                teacher_microbatches=6000, digits_epochs=12, stale_epochs=10, evals=24,
                stale_target=0.9)
    base.update({k: v for k, v in over.items() if v is not None})
    return BeyondSettings(**base)


# ------------------------------------------------------------------------------ the runs
@dataclass
class BeyondRun:
    """One training run. kind: "floor", "staleness" or "bench" (a short timed run);
    problem: "teacher" or "digits"."""

    kind: str
    problem: str
    algorithm: str
    tau: float
    stages: int
    seed: int
    delay_compensation: str = "none"

    @property
    def name(self) -> str:
        t = "ideal" if math.isinf(self.tau) else f"tau{self.tau:g}"
        dc = "" if self.delay_compensation == "none" else f"-{self.delay_compensation}"
        return (f"{self.kind}-{self.problem}-{self.algorithm}-{t}-M{self.stages}{dc}"
                f"-s{self.seed}")


def plan(s: BeyondSettings) -> list[BeyondRun]:
    runs: list[BeyondRun] = []
    for seed in range(s.seeds):
        for problem in ("teacher", "digits"):
            for alg in ALGORITHMS:
                for M in s.floor_stages:
                    for tau in (*s.taus, math.inf):
                        if math.isinf(tau) and M != 1:
                            continue  # the ideal end of the sweep, once
                        runs.append(BeyondRun("floor", problem, alg, tau, M, seed))
        runs.append(BeyondRun("staleness", "digits", s.stale_algorithm, s.stale_tau, 1, seed))
        for M in s.stale_stages:
            for dc in ("none", "pipemare"):
                runs.append(BeyondRun("staleness", "digits", s.stale_algorithm, s.stale_tau, M,
                                      seed, dc))
    return runs


def tile_config(s: BeyondSettings, run: BeyondRun):
    """The run's tile: only the device bound depends on tau."""
    from analogpipe.devices import DeviceConfig
    from analogpipe.tiles import (
        IOConfig,
        MappingConfig,
        TileConfig,
        TransferCompoundConfig,
        UpdateConfig,
    )

    dev = (DeviceConfig(name="ideal") if math.isinf(run.tau)
           else DeviceConfig.soft_bounds(run.tau))
    if run.problem == "teacher":  # the device is the only imperfection
        io = IOConfig.perfect()
        mapping = MappingConfig()
    elif run.kind == "staleness":  # staleness and the device; no converter noise
        io = IOConfig.perfect()
        mapping = MappingConfig(weight_scaling_omega=s.digits_omega, learn_out_scaling=True)
    else:
        io = IOConfig.bits(s.io_bits, s.io_bits, out_noise=s.out_noise)
        mapping = MappingConfig(weight_scaling_omega=s.digits_omega, learn_out_scaling=True)
    update = UpdateConfig(mode="expected", granularity="sample")
    if run.algorithm == "analog-sgd":
        return TileConfig(device=dev, forward=io, backward=io, update=update, mapping=mapping)
    return TransferCompoundConfig(
        device=dev, fast_device=dev, forward=io, backward=io, update=update, mapping=mapping,
        gamma=s.gamma, transfer_every=s.transfer_every,
        n_reads_per_transfer=s.n_reads_per_transfer, transfer_lr=s.transfer_lr,
        fast_lr=s.fast_lr, transfer_forward=io, transfer_update=update)


def teacher_data(seed: int, noise: float):
    """The chain teacher: y = T4 T3 T2 T1 x + noise, x ~ N(0, I); teacher weights uniform in
    [-0.3, 0.3]. Returns (teacher weights, train x, train y, test x, test y)."""
    import torch

    g = torch.Generator().manual_seed(10_007 + seed)
    ts = [(torch.rand(TEACHER_DIMS[i + 1], TEACHER_DIMS[i], generator=g) * 2 - 1)
          * TEACHER_SCALE for i in range(len(TEACHER_DIMS) - 1)]

    def f(x):
        for t in ts:
            x = x @ t.T
        return x

    def split(n):
        x = torch.randn(n, TEACHER_DIMS[0], generator=g)
        return x, f(x) + noise * torch.randn(n, TEACHER_DIMS[-1], generator=g)

    return (ts, *split(4096), *split(1024))


def _model(s: BeyondSettings, run: BeyondRun):
    """(digital model, train x, train y, test x, test y, task)."""
    import torch
    from torch import nn

    if run.problem == "teacher":
        _, x, y, xt, yt = teacher_data(run.seed, s.teacher_noise)
        g = torch.Generator().manual_seed(20_011 + run.seed)
        model = nn.Sequential()
        for i in range(len(TEACHER_DIMS) - 1):
            layer = nn.Linear(TEACHER_DIMS[i], TEACHER_DIMS[i + 1], bias=False)
            with torch.no_grad():  # student init from the teacher's distribution (in range)
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=g) * 2 - 1)
                                   * TEACHER_SCALE)
            model.add_module(f"fc{i + 1}", layer)
        return model, x, y, xt, yt, "regression"
    from analogpipe.data import load_dataset
    from analogpipe.models import build_model, initialize

    data = load_dataset("digits", flatten=True, seed=0)
    depth, width = ((s.stale_depth, s.stale_width) if run.kind == "staleness"
                    else (s.digits_depth, s.digits_width))
    model = build_model("mlp", data.num_classes, data.in_shape, width, depth)
    initialize(model, "he", run.seed)
    return model, data.train_x, data.train_y, data.test_x, data.test_y, "classification"


def execute(s: BeyondSettings, run: BeyondRun) -> dict[str, Any]:
    """Train one run; returns its curve (samples, test metric), final metric, wall time."""
    import torch
    from torch import nn

    from analogpipe.nn import analog_tiles, convert_to_analog
    from analogpipe.optim.delay import make_stage_optimizer
    from analogpipe.pipeline import schedules
    from analogpipe.pipeline.local import DivergenceError, LocalPipeline
    from analogpipe.pipeline.partition import block_costs, block_names, partition, split_model

    torch.set_num_threads(1)
    torch.manual_seed(run.seed)
    model, x, y, xt, yt, task = _model(s, run)
    names = block_names(model)
    groups = partition(block_costs(model, x[:1], "params"), run.stages, names)
    model = convert_to_analog(model, tile_config(s, run), seed=run.seed)
    stages = split_model(model, groups)
    b = s.micro_batch_size
    per_epoch = x.shape[0] // b
    if run.kind == "bench":
        total = s.bench_microbatches
    elif run.problem == "teacher":
        total = s.teacher_microbatches
    else:
        total = per_epoch * (s.stale_epochs if run.kind == "staleness" else s.digits_epochs)
    warm = int(math.ceil(s.pipemare_warmup_epochs * per_epoch))
    opts = [make_stage_optimizer(st, scheme="ap", num_stages=run.stages, index=i, lr=s.lr,
                                 momentum=0.0, weight_decay=0.0,
                                 delay_compensation=run.delay_compensation, warmup_steps=warm)
            for i, st in enumerate(stages)]
    loss_fn = nn.functional.mse_loss if task == "regression" else nn.functional.cross_entropy
    pipe = LocalPipeline(stages, lr=s.lr, loss_fn=loss_fn, optimizers=opts)
    gen = torch.Generator().manual_seed(30_011 + run.seed)
    epochs = -(-total * b // x.shape[0]) + 1
    order = torch.cat([torch.randperm(x.shape[0], generator=gen) for _ in range(epochs)])

    def batch(k: int):
        idx = order[k * b:(k + 1) * b]
        return x[idx], y[idx]

    def evaluate(point: int) -> float:
        for tile in analog_tiles(model):
            tile.reseed("eval", point)
        model.eval()
        with torch.no_grad():
            out = model(xt)
        model.train()
        if task == "regression":
            return float(nn.functional.mse_loss(out, yt))
        return float((out.argmax(1) == yt).float().mean())

    evals = 1 if run.kind == "bench" else s.evals
    bounds = [round(total * (i + 1) / evals) for i in range(evals)]
    curve: list[tuple[int, float]] = []
    wall, done, status = 0.0, 0, "done"
    for i, end in enumerate(bounds):
        t0 = time.perf_counter()
        try:
            pipe.run(schedules.async_1f1b(run.stages, 1, end - done), batch, offset=done)
        except DivergenceError:
            status = "diverged"
            break
        wall += time.perf_counter() - t0
        done = end
        curve.append((done * b, evaluate(i)))
    tail = [v for _, v in curve[-3:]]
    tiles = analog_tiles(model)
    reads = sum(float(getattr(t, "transfer_reads_per_update", 0.0)) for t in tiles)
    return {
        **asdict(run), "name": run.name, "status": status, "curve": curve,
        "final": sum(tail) / len(tail) if tail and status == "done" else math.nan,
        "samples": done * b, "wall_s": wall,
        "wall_per_sample_us": 1e6 * wall / max(done * b, 1),
        "max_saturation": max(float(t.saturation().abs().max()) for t in tiles),
        "transfer_reads_per_update": reads,
    }


def _execute_star(args: tuple[BeyondSettings, BeyondRun]) -> dict[str, Any]:
    return execute(*args)


def run_all(s: BeyondSettings, log=print) -> list[dict[str, Any]]:
    runs = plan(s)
    # longest first (Tiki-Taka and deep pipelines) for better packing on few cores
    runs.sort(key=lambda r: (r.algorithm == "tiki-taka", r.kind == "staleness", r.stages),
              reverse=True)
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    if s.workers <= 1:
        it = map(_execute_star, [(s, r) for r in runs])
        for res in it:
            results.append(res)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=s.workers, mp_context=ctx) as pool:
            for res in pool.map(_execute_star, [(s, r) for r in runs]):
                results.append(res)
                if len(results) % 10 == 0:
                    log(f"beyond: {len(results)}/{len(runs)} runs "
                        f"({time.perf_counter() - t0:.0f}s)")
    return results


# ------------------------------------------------------------------------------ AIMC cost
def aimc_cost(s: BeyondSettings, stages: int = 4) -> dict[str, Any]:
    """Cycles per micro-batch of the digits MLP in AP on the AIMC model, with and without
    Tiki-Taka's transfer reads (one MVM + one pulse train per read), bottleneck stage."""
    import torch

    from analogpipe.nn import convert_to_analog
    from analogpipe.pipeline.partition import (
        block_costs,
        block_names,
        layer_specs,
        partition,
    )
    from analogpipe.timing.aimc import stage_costs

    out: dict[str, Any] = {}
    for alg in ALGORITHMS:
        run = BeyondRun("floor", "digits", alg, s.taus[0], stages, 0)
        model, x, *_ = _model(s, run)
        names = block_names(model)
        groups = partition(block_costs(model, x[:1], "params"), stages, names)
        model = convert_to_analog(model, tile_config(s, run), seed=0)
        with torch.no_grad():
            specs = layer_specs(model, x[:1])
        costs = stage_costs(specs, [[names[i] for i in g] for g in groups],
                            s.micro_batch_size, block_order=names)
        per_stage = [f + b_ for f, b_ in zip(costs.t_f, costs.t_b)]
        out[alg] = {"bottleneck_cycles_per_microbatch": max(per_stage),
                    "total_cycles_per_microbatch": sum(per_stage),
                    "transfer_reads_per_update": sum(sp.transfer_reads for sp in specs)}
    sgd, tt = out["analog-sgd"], out["tiki-taka"]
    out["overhead"] = tt["bottleneck_cycles_per_microbatch"] / sgd[
        "bottleneck_cycles_per_microbatch"] - 1
    return out


def wall_benchmark(s: BeyondSettings) -> dict[str, Any]:
    """Simulator wall time per sample (microseconds, one thread), Analog SGD and Tiki-Taka
    timed back to back in this process, repeats interleaved; median and all repeats."""
    import statistics

    import torch

    threads = torch.get_num_threads()
    times: dict[str, list[float]] = {}
    try:
        for rep in range(s.bench_repeats):
            for problem in ("teacher", "digits"):
                for M in s.floor_stages:
                    for alg in ALGORITHMS:
                        r = execute(s, BeyondRun("bench", problem, alg, s.taus[0], M, rep))
                        times.setdefault(f"{problem}/M{M}/{alg}", []).append(
                            r["wall_per_sample_us"])
    finally:
        torch.set_num_threads(threads)
    return {k: {"median": statistics.median(v), "all": v} for k, v in times.items()}


# ------------------------------------------------------------------------------ analysis
def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n) with a Student-t interval over the finite values."""
    import numpy as np
    from scipy import stats

    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = float(v.mean())
    if n == 1 or float(v.std()) == 0.0:
        return m, m if n > 1 else math.nan, m if n > 1 else math.nan, n
    lo, hi = stats.t.interval(level, n - 1, loc=m, scale=stats.sem(v))
    return m, float(lo), float(hi), n


def samples_to_target(curve: list[tuple[int, float]], target: float) -> float:
    """Samples at the first evaluation reaching the target accuracy (inf if never)."""
    for samples, acc in curve:
        if acc >= target:
            return float(samples)
    return math.inf


def analyse(s: BeyondSettings, results: list[dict[str, Any]],
            cost: dict[str, Any] | None = None,
            bench: dict[str, Any] | None = None) -> dict[str, Any]:
    by = {r["name"]: r for r in results}

    def get(kind, problem, alg, tau, M, seed, dc="none"):
        return by.get(BeyondRun(kind, problem, alg, tau, M, seed, dc).name)

    floor: dict[str, Any] = {}
    for problem in ("teacher", "digits"):
        rows = []
        for alg in ALGORITHMS:
            for M in s.floor_stages:
                for tau in (*s.taus, math.inf):
                    if math.isinf(tau) and M != 1:
                        continue
                    vals = [get("floor", problem, alg, tau, M, k) for k in range(s.seeds)]
                    finals = [r["final"] for r in vals if r]
                    sats = [r["max_saturation"] for r in vals if r]
                    m, lo, hi, n = mean_ci(finals)
                    rows.append({"algorithm": alg, "stages": M, "tau": tau, "mean": m, "lo": lo,
                                 "hi": hi, "n": n,
                                 "diverged": sum(1 for r in vals if r and
                                                 r["status"] != "done"),
                                 "max_saturation": max(sats) if sats else math.nan})
        # floor growth: final(smallest tau) - final(largest tau), paired over seeds
        growth = []
        for alg in ALGORITHMS:
            for M in s.floor_stages:
                d = []
                for k in range(s.seeds):
                    a = get("floor", problem, alg, min(s.taus), M, k)
                    b_ = get("floor", problem, alg, max(s.taus), M, k)
                    if a and b_:
                        d.append(a["final"] - b_["final"])
                m, lo, hi, n = mean_ci(d)
                growth.append({"algorithm": alg, "stages": M, "mean": m, "lo": lo, "hi": hi,
                               "n": n})
        floor[problem] = {"rows": rows, "growth": growth}

    stale_rows = []
    for M in s.stale_stages:
        for dc in ("none", "pipemare"):
            ratios, reached = [], 0
            for k in range(s.seeds):
                ref = get("staleness", "digits", s.stale_algorithm, s.stale_tau, 1, k)
                r = get("staleness", "digits", s.stale_algorithm, s.stale_tau, M, k, dc)
                if not (ref and r):
                    continue
                a = samples_to_target(ref["curve"], s.stale_target)
                b_ = samples_to_target(r["curve"], s.stale_target)
                if math.isfinite(b_):
                    reached += 1
                if math.isfinite(a) and math.isfinite(b_):
                    ratios.append(b_ / a)
            m, lo, hi, n = mean_ci(ratios)
            finals = [r["final"] for k in range(s.seeds)
                      if (r := get("staleness", "digits", s.stale_algorithm, s.stale_tau, M, k,
                                   dc))]
            fm, flo, fhi, _ = mean_ci(finals)
            stale_rows.append({"stages": M, "delay_compensation": dc, "ratio": m, "lo": lo,
                               "hi": hi, "n": n, "reached": reached, "final_acc": fm,
                               "final_lo": flo, "final_hi": fhi})
    ref_finals = [r["final"] for k in range(s.seeds)
                  if (r := get("staleness", "digits", s.stale_algorithm, s.stale_tau, 1, k))]
    ref_reached = [samples_to_target(r["curve"], s.stale_target) for k in range(s.seeds)
                   if (r := get("staleness", "digits", s.stale_algorithm, s.stale_tau, 1, k))]

    wall: dict[str, Any] = {}
    for problem in ("teacher", "digits"):
        for M in s.floor_stages:
            for alg in ALGORITHMS:
                v = [r["wall_per_sample_us"] for r in results
                     if r["kind"] == "floor" and r["problem"] == problem and r["stages"] == M
                     and r["algorithm"] == alg and r["status"] == "done"]
                wall[f"{problem}/M{M}/{alg}"] = mean_ci(v)
    return {"floor": floor, "staleness": {"rows": stale_rows, "m1_final": mean_ci(ref_finals),
                                          "m1_reached": sum(math.isfinite(v)
                                                            for v in ref_reached)},
            "wall_per_sample_us": wall, "aimc": cost, "bench": bench}


# ------------------------------------------------------------------------------ report
def _fmt(m: float, lo: float, hi: float, digits: int = 4) -> str:
    if not math.isfinite(m):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _tau(t: float) -> str:
    return "ideal" if math.isinf(t) else f"{t:g}"


def render(s: BeyondSettings, a: dict[str, Any]) -> str:
    """The "Beyond the paper" report section (markdown)."""
    L: list[str] = ["## Beyond the paper: Tiki-Taka in the asynchronous pipeline", ""]
    L.append(
        f"Settings: {s.seeds} seeds; mean and 95% CI (Student t over seeds). Micro-batch "
        f"{s.micro_batch_size}, lr {s.lr}, one analog update per micro-batch (AP; M = 1 is "
        f"plain analog SGD on the same stream). Soft-bounds devices, expected update at the "
        f"per-sample granularity. Tiki-Taka: A and C both the run's device, A zero-shifted "
        f"to its symmetric point, gamma {s.gamma}, transfer every {s.transfer_every} update(s), "
        f"{s.n_reads_per_transfer} column(s) per transfer, transfer_lr {s.transfer_lr} (x lr), "
        f"fast_lr {s.fast_lr} (x lr). Only the device bound changes along the tau sweep "
        f"(teacher: no mapping, perfect IO; digits: omega {s.digits_omega} fixed, "
        f"{s.io_bits}-bit IO, out noise {s.out_noise}, learned output scales).")
    L.append("")
    for problem, metric, note in (
            ("teacher", "final test MSE (lower is better; noise floor "
             f"{s.teacher_noise ** 2:g})", f"{s.teacher_microbatches} micro-batches"),
            ("digits", "final test accuracy", f"{s.digits_epochs} epochs, MLP depth "
             f"{s.digits_depth} width {s.digits_width}")):
        f = a["floor"][problem]
        L += [f"### 1. Floor against saturation: {problem} ({note})", "",
              f"Metric: {metric}, mean of the last three evaluations.", ""]
        taus = [*s.taus, math.inf]
        head = "| algorithm | M | " + " | ".join(f"tau {_tau(t)}" for t in taus) + " |"
        L += [head, "|" + "---|" * (2 + len(taus))]
        for alg in ALGORITHMS:
            for M in s.floor_stages:
                cells = []
                for t in taus:
                    row = next((r for r in f["rows"] if r["algorithm"] == alg
                                and r["stages"] == M and r["tau"] == t), None)
                    if row is None:
                        cells.append("")
                    else:
                        c = _fmt(row["mean"], row["lo"], row["hi"])
                        if row["diverged"]:
                            c += f" ({row['diverged']} diverged)"
                        cells.append(c)
                L.append(f"| {alg} | {M} | " + " | ".join(cells) + " |")
        L += ["", f"Growth of the floor from tau {max(s.taus):g} to tau {min(s.taus):g} "
              "(paired over seeds; for accuracy a negative value is a loss):", ""]
        for g in f["growth"]:
            L.append(f"- {g['algorithm']}, M = {g['stages']}: "
                     f"{_fmt(g['mean'], g['lo'], g['hi'])}")
        L.append("")
        L.append(_floor_verdict(f["growth"], problem))
        L.append("")
    st = a["staleness"]
    m1 = st["m1_final"]
    L += [f"### 2. Staleness cost with and without PipeMare ({s.stale_algorithm}, digits MLP "
          f"depth {s.stale_depth}, tau {s.stale_tau:g}, {s.stale_epochs} epochs)", "",
          f"Samples to test accuracy {s.stale_target:g}, relative to M = 1 (reached by "
          f"{st['m1_reached']}/{s.seeds} M = 1 runs; M = 1 final accuracy "
          f"{_fmt(m1[0], m1[1], m1[2], 3)}). PipeMare warm-up "
          f"{s.pipemare_warmup_epochs:g} epoch(s).", "",
          "| M | delay compensation | samples-to-target / M=1 | reached | final accuracy |",
          "|---|---|---|---|---|"]
    for r in st["rows"]:
        L.append(f"| {r['stages']} | {r['delay_compensation']} | "
                 f"{_fmt(r['ratio'], r['lo'], r['hi'], 2)} | {r['reached']}/{s.seeds} | "
                 f"{_fmt(r['final_acc'], r['final_lo'], r['final_hi'], 3)} |")
    L += ["", "### 3. What Tiki-Taka costs", ""]
    c = a.get("aimc")
    if c:
        sg, tt = c["analog-sgd"], c["tiki-taka"]
        L.append(f"AIMC clock (digits MLP depth {s.digits_depth}, AP M = 4, micro-batch "
                 f"{s.micro_batch_size}; a transfer read = one MVM on A + one pulse train "
                 f"into C): bottleneck stage {sg['bottleneck_cycles_per_microbatch']:.2f} -> "
                 f"{tt['bottleneck_cycles_per_microbatch']:.2f} cycles per micro-batch "
                 f"({100 * c['overhead']:+.1f}%), {tt['transfer_reads_per_update']:g} "
                 "transfer reads per update over all layers.")
        L.append("")
    bench = a.get("bench")
    if bench:
        L += [f"Simulator wall time per sample (microseconds, 1 thread; median of "
              f"{s.bench_repeats} interleaved timings of {s.bench_microbatches} micro-batches, "
              "tau " + f"{s.taus[0]:g}):", "",
              "| problem | M | analog-sgd | tiki-taka | ratio |", "|---|---|---|---|---|"]
        for problem in ("teacher", "digits"):
            for M in s.floor_stages:
                w_s = bench[f"{problem}/M{M}/analog-sgd"]["median"]
                w_t = bench[f"{problem}/M{M}/tiki-taka"]["median"]
                L.append(f"| {problem} | {M} | {w_s:.0f} | {w_t:.0f} | {w_t / w_s:.2f} |")
        L.append("")
    L += ["Wall time per sample of the runs above (microseconds, mean [95% CI]; runs share the "
          "machine, so these are noisier than the benchmark):", "",
          "| problem | M | analog-sgd | tiki-taka |", "|---|---|---|---|"]
    for problem in ("teacher", "digits"):
        for M in s.floor_stages:
            w_s = a["wall_per_sample_us"][f"{problem}/M{M}/analog-sgd"]
            w_t = a["wall_per_sample_us"][f"{problem}/M{M}/tiki-taka"]
            L.append(f"| {problem} | {M} | {_fmt(*w_s[:3], 0)} | {_fmt(*w_t[:3], 0)} |")
    L.append("")
    return "\n".join(L)


def _floor_verdict(growth: list[dict[str, Any]], problem: str) -> str:
    """One sentence per M: does Tiki-Taka's floor stay while Analog SGD's grows?"""
    sign = 1.0 if problem == "teacher" else -1.0  # loss grows up, accuracy grows down
    out = []
    for M in sorted({g["stages"] for g in growth}):
        sgd = next(g for g in growth if g["algorithm"] == "analog-sgd" and g["stages"] == M)
        tt = next(g for g in growth if g["algorithm"] == "tiki-taka" and g["stages"] == M)
        if sign > 0:
            sgd_grows = math.isfinite(sgd["lo"]) and sgd["lo"] > 0
        else:
            sgd_grows = math.isfinite(sgd["hi"]) and sgd["hi"] < 0
        tt_flat = (math.isfinite(tt["lo"]) and tt["lo"] <= 0 <= tt["hi"]) or (
            math.isfinite(tt["mean"]) and math.isfinite(sgd["mean"])
            and abs(tt["mean"]) < 0.25 * abs(sgd["mean"]))
        if sgd_grows and tt_flat:
            verdict = "holds: Analog SGD's floor grows (CI excludes 0), Tiki-Taka's does not"
        elif not sgd_grows:
            verdict = ("not shown: Analog SGD's floor growth is not significant at this length "
                       "and number of seeds")
        else:
            verdict = "does not hold: Tiki-Taka's floor grows too"
        out.append(f"M = {M}: the expectation {verdict}.")
    return " ".join(out)


# ------------------------------------------------------------------------------ entry point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analogpipe.experiments.beyond",
                                description="Beyond the paper: Tiki-Taka in AP, PipeMare")
    p.add_argument("--quick", action="store_true", help="the ~2-3 minute version")
    p.add_argument("--out", required=True, help="output folder (beyond.json, beyond.md)")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args(argv)
    make = quick_settings if args.quick else full_settings
    s = make(seeds=args.seeds, workers=args.workers or min(2, os.cpu_count() or 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = run_all(s, log=lambda m: print(m, file=sys.stderr))
    cost = aimc_cost(s)
    bench = wall_benchmark(s)
    analysis = analyse(s, results, cost, bench)
    text = render(s, analysis)
    (out / "beyond.json").write_text(json.dumps(
        {"settings": s.to_dict(), "results": results, "analysis": analysis,
         "wall_s": time.perf_counter() - t0}, indent=1, default=str) + "\n")
    (out / "beyond.md").write_text(text + "\n")
    print(text)
    print(f"beyond: {len(results)} runs in {time.perf_counter() - t0:.0f}s -> {out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
