"""`analogpipe train --processes M` / `--launcher torchrun`: one process per pipeline stage.

Every process builds the same data and model from the seed, keeps its own stage (tiles,
generators, optimizer) and runs its row of the schedule over torch.distributed point-to-point;
rank 0 gathers the stages after every epoch, evaluates, and writes run.json, metrics.jsonl and
the checkpoint (atomically). Results equal the single-process run bit for bit when both use
the same torch thread count (`--threads`, default 1 in both): float sums split over another
number of threads may round differently in the last bit.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _worker(rank: int, world_size: int,
            payload: tuple[dict[str, Any], str, bool, bool]) -> Any:
    from analogpipe.train import TrainConfig, build, train
    from analogpipe.train.loop import DistributedDriver

    cfg_dict, out, resume, overwrite = payload
    cfg = TrainConfig.from_dict(cfg_dict)
    setup = build(cfg)
    driver = DistributedDriver(setup, rank, world_size)
    history = train(cfg, out, resume=resume, overwrite=overwrite, progress=False, setup=setup,
                    driver=driver)
    return history[-1] if rank == 0 and history else None


def main(args: argparse.Namespace, cfg) -> int:

    payload = (cfg.to_dict(), args.out, bool(args.resume), bool(args.overwrite))
    if args.launcher == "torchrun":
        from analogpipe.pipeline.launch import init_from_torchrun

        rank, world_size, _ = init_from_torchrun(device=cfg.device)
        if world_size != cfg.stages:
            print(f"analogpipe train: error: torchrun started {world_size} processes but "
                  f"--stages is {cfg.stages}: use --nproc-per-node {cfg.stages}", file=sys.stderr)
            return 2
        from analogpipe.commands.train import run_training

        return run_training(lambda: _worker(rank, world_size, payload),
                            prefix=f"analogpipe train: rank {rank}")

    from analogpipe.pipeline.launch import WorkerFailed, launch_local

    if args.processes != cfg.stages:
        print(f"analogpipe train: error: --processes {args.processes} but --stages "
              f"{cfg.stages}: one process per stage, use equal numbers", file=sys.stderr)
        return 2
    if cfg.device == "cuda":
        print("analogpipe train: error: --processes spawns gloo workers on the CPU; for GPUs "
              "start one process per GPU with torchrun ... --launcher torchrun (nccl)",
              file=sys.stderr)
        return 2
    try:
        launch_local(_worker, args.processes, payload, timeout_s=30 * 24 * 3600.0,
                     threads_per_worker=args.threads)
    except WorkerFailed as exc:
        code = 3 if "diverged" in str(exc) else 2 if "ConfigError" in str(exc) else 1
        if code == 1:  # an unexpected failure: the worker's traceback helps
            print(f"analogpipe train: {exc}", file=sys.stderr)
        else:  # divergence or a bad setting: one line, as without --processes
            print(f"analogpipe train: rank {exc.rank}: {exc.cause}", file=sys.stderr)
        return code
    return 0
