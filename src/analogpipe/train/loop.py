"""The training loop: data, model, partition, pipeline executor, metrics, checkpoints.

Every epoch is one schedule (the asynchronous pipeline drains at the epoch's end, where the
model is evaluated and checkpointed). The clock is the cycle model run on that same schedule,
so `cycles` in the metrics is what the hardware would have taken, not wall time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import analogpipe
from analogpipe.data import Dataset, augment, load_dataset
from analogpipe.errors import ConfigError
from analogpipe.models import blocks, build_model, initialize
from analogpipe.nn import analog_tiles, convert_to_analog
from analogpipe.optim import AnalogSGD
from analogpipe.optim.delay import make_stage_optimizer
from analogpipe.pipeline import schedules
from analogpipe.pipeline.local import DivergenceError, LocalPipeline, MicrobatchRecord
from analogpipe.pipeline.partition import block_costs, partition, split_model
from analogpipe.tiles import AnalogTile
from analogpipe.timing.cycles import Costs, simulate
from analogpipe.train.config import TrainConfig
from analogpipe.train.rundir import check_out_dir, check_resume, clear_run_files, load_checkpoint


class TrainingDiverged(RuntimeError):
    """The loss became NaN, infinite or larger than `divergence_loss`."""


# ------------------------------------------------------------------------------ files
def _atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Write to a hidden temporary file beside `path`, then rename it over `path`: a reader
    (or a run interrupted mid-write) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda tmp: torch.save(obj, tmp))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on the first one as its handler
    would have, so that files written together (the checkpoint and metrics.jsonl of an epoch)
    are all written or none. Off the main thread (no Python signal handlers there) the block
    runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        saved[sig] = signal.signal(sig, lambda num, _frame: pending.append(num))
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if pending:
            num = pending[0]
            handler = saved[num]
            if callable(handler):
                handler(num, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(num)


def environment() -> dict[str, Any]:
    """Versions, git commit and machine, for run records and benchmark stamps."""
    import numpy

    commit = None
    try:
        src = Path(analogpipe.__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": numpy.__version__, "analogpipe": analogpipe.__version__},
        "git_commit": commit,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available()},
    }


# ------------------------------------------------------------------------------ setup
@dataclass
class Setup:
    cfg: TrainConfig
    data: Dataset
    model: nn.Sequential
    stage_blocks: list[list[str]]
    stages: list[nn.Sequential]
    loss_fn: Callable[[Tensor, Tensor], Tensor]


def _loss_fn(task: str) -> Callable[[Tensor, Tensor], Tensor]:
    if task == "regression":
        return nn.functional.mse_loss
    return nn.functional.cross_entropy


def build(cfg: TrainConfig) -> Setup:
    """Everything before training; raises ConfigError / DataError on bad input."""
    data = load_dataset(cfg.dataset, cfg.data_dir, flatten=cfg.model == "mlp",
                        subset=cfg.subset, seed=cfg.seed)
    if data.train_x.shape[0] < cfg.mini_batch:
        raise ConfigError(f"batch of {cfg.mini_batch} (microbatches x micro_batch_size) is "
                          f"larger than the {data.train_x.shape[0]} training samples")
    torch.manual_seed(cfg.seed)
    try:
        model = build_model(cfg.model, data.num_classes, data.in_shape, cfg.width, cfg.depth)
    except ValueError as exc:
        raise ConfigError(f"model={cfg.model!r} (--model) does not fit dataset={cfg.dataset!r} "
                          f"(--dataset): {exc}; choose another model or dataset") from None
    initialize(model, cfg.init, cfg.seed)
    names = [n for n, _ in blocks(model)]
    if cfg.stages > len(names):
        raise ConfigError(f"stages={cfg.stages} but model {cfg.model!r} has only {len(names)} "
                          f"blocks ({', '.join(names)}): use at most {len(names)}")
    _check_batchnorm(model, data.train_x[:cfg.micro_batch_size], cfg)
    example = data.train_x[:1]
    groups = partition(block_costs(model, example, cfg.partition_metric), cfg.stages, names)
    tile_cfg = cfg.tile_config()
    if tile_cfg is not None:
        model = convert_to_analog(model, tile_cfg, seed=cfg.seed)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no CUDA device: use --device cpu")
    model = model.to(device)
    stages = split_model(model, groups)
    stage_blocks = [[names[i] for i in g] for g in groups]
    return Setup(cfg, data, model, stage_blocks, stages, _loss_fn(data.task))


def _check_batchnorm(model: nn.Module, micro_batch: Tensor, cfg: TrainConfig) -> None:
    """BatchNorm in training needs more than one value per channel in every micro-batch:
    refuse settings that give it one, before anything is written (eval-mode dry run of the
    digital model, so no statistic or generator changes)."""
    norms = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    seen: dict[str, int] = {}

    def hook(mod: nn.Module, inp: tuple, out: Tensor, name: str) -> None:
        seen.setdefault(name, int(inp[0].shape[0]) * math.prod(inp[0].shape[2:]))

    handles = [m.register_forward_hook(lambda mod, inp, out, n=n: hook(mod, inp, out, n))
               for n, m in norms]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(micro_batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    bad = [(n, v) for n, v in seen.items() if v <= 1]
    if bad:
        name, values = bad[0]
        raise ConfigError(
            f"micro_batch_size={cfg.micro_batch_size} is invalid for model {cfg.model!r}: its "
            f"BatchNorm layer {name!r} would see {values} value per channel per micro-batch, "
            "and BatchNorm cannot train on one; allowed: a --micro-batch-size giving it at "
            "least 2 (e.g. --micro-batch-size 2), or a model without BatchNorm (--model mlp)")


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Step decay: lr * gamma ** (number of milestones <= epoch), epochs counted from 0."""
    return cfg.lr * cfg.lr_gamma ** sum(1 for m in cfg.lr_milestones if epoch >= m)


def epoch_batches(setup: Setup, epoch: int) -> tuple[Callable[[int], tuple[Tensor, Tensor]], int]:
    """Micro-batch k of an epoch, from a permutation seeded by (seed, epoch): resumable."""
    cfg, data = setup.cfg, setup.data
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    n = data.train_x.shape[0]
    perm = torch.randperm(n, generator=g)
    steps = n // cfg.mini_batch
    x_all, y_all = data.train_x, data.train_y
    use_aug = cfg.augment if cfg.augment is not None else cfg.dataset.startswith("cifar")
    device = torch.device(cfg.device)
    b = cfg.micro_batch_size

    def batch(k: int) -> tuple[Tensor, Tensor]:
        idx = perm[k * b:(k + 1) * b]
        x = x_all[idx]
        if use_aug and x.dim() == 4:
            x = augment(x, torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 100_003 + k))
        return x.to(device), y_all[idx].to(device)

    return batch, steps


@torch.no_grad()
def evaluate(setup: Setup, epoch: int = 0) -> tuple[float, float]:
    """Test loss and accuracy (noise stays on, as on hardware; BN in eval mode).

    The tiles' eval noise streams restart from (seed, epoch): evaluation never touches the
    training streams, and every executor evaluates with the same draws.
    """
    model, data, cfg = setup.model, setup.data, setup.cfg
    for tile in analog_tiles(model):
        tile.reseed("eval", epoch)
    model.eval()
    total_loss, correct, n = 0.0, 0, data.test_x.shape[0]
    for i in range(0, n, cfg.eval_batch_size):
        x = data.test_x[i:i + cfg.eval_batch_size].to(cfg.device)
        y = data.test_y[i:i + cfg.eval_batch_size].to(cfg.device)
        out = model(x)
        total_loss += float(setup.loss_fn(out, y)) * x.shape[0]
        if data.task != "regression":
            correct += int((out.argmax(1) == y).sum())
    model.train()
    acc = correct / n if data.task != "regression" else math.nan
    return total_loss / n, acc


def saturation_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per analog layer: max and mean of |w| / bound."""
    out = {}
    for name, m in model.named_modules():
        tile = getattr(m, "tile", None)
        if isinstance(tile, AnalogTile):
            sat = tile.saturation().abs()
            out[name] = {"max": float(sat.max()), "mean": float(sat.mean())}
    return out


def stage_optimizer(setup: Setup, index: int) -> AnalogSGD:
    """Stage `index`'s optimizer: AnalogSGD, or PipeMareSGD with its stage's delay and the
    warm-up converted from epochs into the stage's updates."""
    cfg = setup.cfg
    steps = setup.data.train_x.shape[0] // cfg.mini_batch
    per_epoch = steps * (cfg.microbatches if cfg.scheme in ("ap", "pipedream") else 1)
    return make_stage_optimizer(
        setup.stages[index], scheme=cfg.scheme, num_stages=len(setup.stages), index=index,
        lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        delay_compensation=cfg.delay_compensation,
        warmup_steps=int(math.ceil(cfg.pipemare_warmup_epochs * per_epoch)))


# ------------------------------------------------------------------------------ drivers
class LocalDriver:
    """All stages in this process (LocalPipeline); this process writes the results."""

    is_writer = True

    def __init__(self, setup: Setup) -> None:
        cfg = setup.cfg
        self.setup = setup
        self.pipe = LocalPipeline(setup.stages, lr=cfg.lr, loss_fn=setup.loss_fn,
                                  momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                  optimizers=[stage_optimizer(setup, i)
                                              for i in range(len(setup.stages))])

    def set_lr(self, lr: float) -> None:
        self.pipe.set_lr(lr)

    def run(self, sched, batch, on_record):
        return self.pipe.run(sched, batch, on_record=on_record)

    def gather(self) -> tuple[list[dict], list[int]]:
        """After an epoch: the full model is current here; optimizer states and versions."""
        return [o.state_dict() for o in self.pipe.optimizers], list(self.pipe.version)

    def restore(self, ckpt: dict | None) -> None:
        assert ckpt is not None
        self.setup.model.load_state_dict(ckpt["model"])
        for opt, st in zip(self.pipe.optimizers, ckpt["optimizers"]):
            opt.load_state_dict(st)
        self.pipe.version = list(ckpt["versions"])

    def share(self, obj: Any) -> Any:
        return obj


class DistributedDriver:
    """One stage per process (torch.distributed); rank 0 gathers the model and writes."""

    def __init__(self, setup: Setup, rank: int, world_size: int) -> None:
        from analogpipe.pipeline.dist import DistributedPipeline

        cfg = setup.cfg
        if world_size != cfg.stages:
            raise ConfigError(f"{world_size} processes but stages={cfg.stages}: a distributed "
                              "pipeline runs one process per stage")
        self.setup, self.rank = setup, rank
        self.is_writer = rank == 0
        self.pipe = DistributedPipeline(setup.stages[rank], rank, world_size, lr=cfg.lr,
                                        loss_fn=setup.loss_fn, momentum=cfg.momentum,
                                        weight_decay=cfg.weight_decay,
                                        optimizer=stage_optimizer(setup, rank))

    def set_lr(self, lr: float) -> None:
        self.pipe.set_lr(lr)

    def run(self, sched, batch, on_record):
        run = self.pipe.run(sched, batch)
        for k in sorted(run.records):  # same divergence check as the local driver, after the fact
            on_record(k, run.records[k])
        return run

    def gather(self) -> tuple[list[dict], list[int]]:
        dicts = self.pipe.stage_state_dicts()
        if dicts is None:
            return [], []
        for stage, d in zip(self.setup.stages, dicts):
            stage.load_state_dict(d["stage"])
        return [d["optimizer"] for d in dicts], [int(d["version"]) for d in dicts]

    def restore(self, ckpt: dict | None) -> None:
        dicts = None
        if ckpt is not None:
            self.setup.model.load_state_dict(ckpt["model"])
            dicts = [{"rank": i, "stage": stage.state_dict(), "optimizer": ckpt["optimizers"][i],
                      "version": ckpt["versions"][i]}
                     for i, stage in enumerate(self.setup.stages)]
        self.pipe.load_stage_state(dicts)

    def share(self, obj: Any) -> Any:
        """Rank 0's value on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


# ------------------------------------------------------------------------------ training
def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True, setup: Setup | None = None,
          driver: Any = None,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> list[dict]:
    """Train and write run.json, metrics.jsonl and checkpoint.pt into out_dir.

    `driver` runs the schedules: LocalDriver (default) or DistributedDriver (then only rank 0
    evaluates and writes). Returns the metrics history.

    A folder that already holds files is refused unless `resume` (continue from its
    checkpoint; `cfg.epochs` may exceed the checkpoint's, see `rundir.resume_problems`) or
    `overwrite` (the previous run's files are removed). Raises ConfigError before anything is
    written on a bad folder or checkpoint; TrainingDiverged keeps the last good checkpoint.
    """
    setup = setup or build(cfg)
    driver = driver or LocalDriver(setup)
    writer = driver.is_writer
    out = Path(out_dir)
    ckpt_path = out / "checkpoint.pt"
    error = None
    ckpt = None
    if writer:
        try:
            check_out_dir(out, resume=resume, overwrite=overwrite)
            if resume:
                ckpt = load_checkpoint(ckpt_path, map_location=cfg.device)
                check_resume(ckpt, cfg.to_dict(), ckpt_path)
        except ConfigError as exc:
            error = str(exc)
    error = driver.share(error)
    if error:
        raise ConfigError(error)
    history: list[dict] = []
    if resume:
        driver.restore(ckpt)
        history = driver.share(list(ckpt["metrics"]) if ckpt is not None else None)
    start_epoch = len(history)
    if writer:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # e.g. a read-only file system: nothing was written
            raise ConfigError(f"--out {out}: cannot create the folder ({exc.strerror}); "
                              "choose a folder you can write to") from None
        if overwrite and not resume:
            clear_run_files(out)
        record = {"config": cfg.to_dict(), "seed": cfg.seed, "stages": setup.stage_blocks,
                  "tile_config": None if cfg.tile_config() is None
                  else cfg.tile_config().to_dict(),
                  "executor": type(driver).__name__, "argv": sys.argv,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **environment()}
        if resume:
            record["resumed_at_epoch"] = start_epoch
        with signals_deferred():
            atomic_write_text(out / "run.json",
                              json.dumps(record, indent=2, default=str) + "\n")
            atomic_write_text(out / "metrics.jsonl",
                              "".join(json.dumps(h) + "\n" for h in history))

    costs = Costs(t_f=cfg.t_f, t_b=cfg.t_b)
    cycles = history[-1]["cycles"] if history else 0.0
    samples = history[-1]["samples"] if history else 0
    wall0 = time.perf_counter() - (history[-1]["wall_s"] if history else 0.0)
    for epoch in range(start_epoch, cfg.epochs):
        lr = lr_at(cfg, epoch)
        driver.set_lr(lr)
        batch, steps = epoch_batches(setup, epoch)
        sched = schedules.build(cfg.schedule_scheme(), cfg.stages, cfg.microbatches, steps)
        timeline = simulate(sched, costs)
        bar = _progress(progress and writer, sched.num_microbatches,
                        f"epoch {epoch + 1}/{cfg.epochs}")
        t0 = time.perf_counter()

        def on_record(k: int, rec: MicrobatchRecord, bar=bar, t0=t0, cycles=cycles,
                      makespan=timeline.makespan, seen=[0, 0]) -> None:  # noqa: B006
            if not rec.loss < cfg.divergence_loss:
                raise DivergenceError(f"loss of micro-batch {k} is {rec.loss:.4g}")
            if bar is not None:
                done = bar.n + 1
                bar.update(1)
                seen[0] += rec.correct
                seen[1] += rec.count
                if done % 10 == 0 or done == bar.total:
                    rate = done * cfg.micro_batch_size / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix({"loss": f"{rec.loss:.3f}",
                                     "acc": f"{seen[0] / seen[1]:.3f}",
                                     "samples/s": f"{rate:.0f}",
                                     "cycles": f"{cycles + makespan * done / bar.total:.0f}"})

        try:
            run = driver.run(sched, batch, on_record)
        except DivergenceError as exc:
            kept = f"the checkpoint of epoch {epoch} is kept" if epoch > 0 else "no checkpoint"
            raise TrainingDiverged(
                f"training diverged in epoch {epoch + 1}: {exc}; {kept} ({out}). "
                "Try a smaller --lr.") from None
        finally:  # also on Ctrl-C: the bar's line is cleared before any message
            if bar is not None:
                bar.close()
        recs = list(run.records.values())
        n_seen = sum(r.count for r in recs)
        cycles += timeline.makespan
        samples += n_seen
        opt_states, versions = driver.gather()
        if not writer:
            history.append({"epoch": epoch + 1})
            continue
        test_loss, test_acc = evaluate(setup, epoch)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": sum(r.loss * r.count for r in recs) / n_seen,
            "train_acc": sum(r.correct for r in recs) / n_seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "cycles": cycles,
            "samples": samples,
            "updates": sum(versions) / len(versions),
            "lr": lr,
            "density": timeline.density,
            "wall_s": time.perf_counter() - wall0,
            "saturation": saturation_stats(setup.model),
        }
        history.append(metrics)
        with signals_deferred():  # the checkpoint and its metrics line, together
            atomic_torch_save({"model": setup.model.state_dict(), "optimizers": opt_states,
                               "versions": versions, "epoch": epoch, "metrics": history,
                               "config": cfg.to_dict()}, ckpt_path)
            atomic_write_text(out / "metrics.jsonl",
                              "".join(json.dumps(h) + "\n" for h in history))
        log(f"epoch {epoch + 1}: train_loss {metrics['train_loss']:.4f} "
            f"test_acc {test_acc:.4f} cycles {cycles:.0f} wall {metrics['wall_s']:.1f}s")
    return history


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit=" micro-batches", file=sys.stderr)
