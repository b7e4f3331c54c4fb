"""Group "dist": the multi-process pipeline (2 processes, gloo) against one process.

Same analog MLP (8x8 inputs, three hidden layers of 1024, `paper_config(0.8)`), same data, same
number of samples: mini-batches of 256 as 4 micro-batches of 64. The baseline is
`LocalPipeline` running WOP in this process with as many threads as one rank gets (one core
here: one accelerator doing every stage's work); its all-cores speed is in the notes. The
subjects are `DistributedPipeline` running WOP, SP and AP with M = 2 processes started once by
`launch_local` (start-up excluded, one torch thread per process). The AP target is a 1.6x
speed-up, i.e. a time ratio <= 1 / 1.6. Notes give samples/s and, per stage, the time spent
computing (F/B/U) vs waiting on receives: what limits the speed-up is the pipeline bubble
(K / (K + M - 1)), stage imbalance and gloo's per-message latency on localhost (a round trip
of a small tensor takes about 1.3 ms here, so micro-batches must carry milliseconds of work).
"""

from __future__ import annotations

from typing import Any

from analogpipe.bench.harness import Row, configure_threads, median, register, time_fn

M = 2
MICRO = 64  # micro-batch size: enough work per message that gloo's ~0.6 ms latency
B = 4  # micro-batches per mini-batch (256 samples)     on localhost is not the whole story
HIDDEN = (1024, 1024, 1024)
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

    steps = 4 if quick else 12  # 16 or 48 micro-batches per run
    repeats = 2 if quick else 3
    K = B * steps
    samples = K * MICRO
    results = launch_local(_worker, M, {"steps": steps, "repeats": repeats},
                           timeout_s=600, op_timeout_s=120)
    sched = schedules.build("wop", M, B, steps)
    batch = _data(K)
    # The single process plays one accelerator running every stage: it gets as many threads
    # as one rank (one core here), so the ratio is the pipeline's speed-up over stages, not
    # a fight over the machine's cores; the all-cores time is reported in the notes too.
    all_cores = configure_threads()
    timed = {}
    for threads in dict.fromkeys((max(1, all_cores // M), all_cores)):
        configure_threads(threads)
        pipe = LocalPipeline(_stages(_model()), lr=0.05, loss_fn=_loss)
        timed[threads] = median(time_fn(lambda p=pipe: p.run(sched, batch), warmup=1,
                                        repeats=repeats))
    configure_threads(all_cores)
    threads = max(1, all_cores // M)
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
                 f"local WOP {samples / base:.0f} samples/s ({threads} thread(s); "
                 f"{samples / timed[all_cores]:.0f} with {all_cores}), dist "
                 f"{scheme.upper()} {samples / t:.0f} samples/s = {base / t:.2f}x "
                 f"({dist_wop / t:.2f}x dist WOP); "
                 f"{per_stage}")
        rows.append(Row(group="dist", case=f"{scheme} M={M} analog mlp{HIDDEN} b{MICRO}x{B}",
                        baseline_name="local wop", baseline_s=base,
                        subject_name=f"dist {scheme}", subject_s=t,
                        target=TARGET_AP if scheme == "ap" else None, notes=notes,
                        repeats=repeats))
    return rows
