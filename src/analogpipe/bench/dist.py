"""Group "dist": the multi-process pipeline (2 processes, gloo) against one process.

Same analog MLP (digits-sized 8x8 inputs, `paper_config(0.8)`), same data, same number of
samples: mini-batches of 32 as 4 micro-batches of 8. The baseline is `LocalPipeline` running
WOP in this process (all cores); the subjects are `DistributedPipeline` running WOP, SP and AP
with M = 2 processes started once by `launch_local` (start-up excluded from the times, one
torch thread per process so the ranks do not fight for the cores). The AP target is a 1.6x
speed-up, i.e. a time ratio <= 1 / 1.6. Notes give samples/s and, per stage, the time spent
computing (F/B/U) vs waiting on receives, which is what limits the speed-up: the pipeline
bubble (K / (K + M - 1)), stage imbalance and per-message cost of gloo on localhost.
"""

from __future__ import annotations

from typing import Any

from analogpipe.bench.harness import Row, configure_threads, median, register, time_fn

M = 2
MICRO = 8  # micro-batch size
B = 4  # micro-batches per mini-batch (32 samples)
HIDDEN = (256, 256, 256)
SCHEMES = ("wop", "sp", "ap")
TARGET_AP = 1 / 1.6


def _model() -> Any:
    import torch

    from analogpipe.models import mlp
    from analogpipe.nn import convert_to_analog
    from analogpipe.presets import paper_config

    torch.manual_seed(0)
    return convert_to_analog(mlp(64, 10, HIDDEN), paper_config(0.8), seed=1)


def _stages(model: Any) -> list[Any]:
    # blocks: flatten, fc1, fc2, fc3, out -> [flatten fc1 fc2 | fc3 out] (balanced by params)
    return [model[:3], model[3:]]


def _data(K: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    xs = torch.randn(K, MICRO, 1, 8, 8, generator=g)
    ys = torch.randint(0, 10, (K, MICRO), generator=g)
    return lambda k: (xs[k % K], ys[k % K])


def _loss(out: Any, y: Any) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(out, y)


def _worker(rank: int, world_size: int, args: dict) -> dict:
    """Runs in each of the M processes: time every scheme's run (after one warm-up run)."""
    import time

    import torch.distributed as dist

    from analogpipe.pipeline import schedules
    from analogpipe.pipeline.dist import DistributedPipeline

    steps, repeats = args["steps"], args["repeats"]
    out: dict[str, Any] = {}
    for scheme in SCHEMES:
        stage = _stages(_model())[rank]
        pipe = DistributedPipeline(stage, rank, world_size, lr=0.05, loss_fn=_loss)
        sched = schedules.build(scheme, world_size, B, steps)
        batch = _data(B * steps)
        pipe.run(sched, batch)  # warm-up: shape check, lowering, first-touch allocations
        times, stats = [], []
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            pipe.run(sched, batch)
            times.append(time.perf_counter() - t0)
            stats.append(pipe.last_stats)
        out[scheme] = {"times": times, "stats": stats}
    return out


@register("dist")
def bench_dist(quick: bool) -> list[Row]:
    """WOP / SP / AP on 2 processes vs single-process WOP, same samples."""
    from analogpipe.pipeline import schedules
    from analogpipe.pipeline.launch import launch_local
    from analogpipe.pipeline.local import LocalPipeline

    steps = 15 if quick else 50  # 60 or 200 micro-batches per run
    repeats = 2 if quick else 3
    K = B * steps
    samples = K * MICRO
    results = launch_local(_worker, M, {"steps": steps, "repeats": repeats},
                           timeout_s=600, op_timeout_s=120)
    sched = schedules.build("wop", M, B, steps)
    batch = _data(K)
    # the single process gets its best thread count: all cores, or as many as one rank had
    # (many threads on tiny matrices, or on a busy machine, are slower)
    all_cores = configure_threads()
    timed = {}
    for threads in dict.fromkeys((all_cores, max(1, all_cores // M))):
        configure_threads(threads)
        pipe = LocalPipeline(_stages(_model()), lr=0.05, loss_fn=_loss)
        timed[threads] = median(time_fn(lambda p=pipe: p.run(sched, batch), warmup=1,
                                        repeats=repeats))
    configure_threads(all_cores)
    threads = min(timed, key=timed.__getitem__)
    base = timed[threads]
    dist_wop = median(results[0]["wop"]["times"])
    rows = []
    for scheme in SCHEMES:
        res = results[0][scheme]
        t = median(res["times"])
        last = res["stats"][-1]
        per_stage = ", ".join(
            f"stage {s.rank}: compute {s.compute_s:.2f} s, recv wait {s.wait_s:.2f} s, "
            f"send {s.send_s:.2f} s ({100 * s.busy_fraction:.0f}% busy)" for s in last)
        notes = (f"{samples} samples as {K} micro-batches of {MICRO} ({B} per mini-batch); "
                 f"local WOP {samples / base:.0f} samples/s ({threads} threads), dist "
                 f"{scheme.upper()} {samples / t:.0f} samples/s = {base / t:.2f}x "
                 f"({dist_wop / t:.2f}x dist WOP); "
                 f"{per_stage}")
        rows.append(Row(group="dist", case=f"{scheme} M={M} analog mlp{HIDDEN} b{MICRO}x{B}",
                        baseline_name="local wop", baseline_s=base,
                        subject_name=f"dist {scheme}", subject_s=t,
                        target=TARGET_AP if scheme == "ap" else None, notes=notes,
                        repeats=repeats))
    return rows
