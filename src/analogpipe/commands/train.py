"""`analogpipe train`: one training run (digital, WOP, SP, AP or PipeDream)."""

from __future__ import annotations

import argparse
import sys

from analogpipe.devices import DEVICE_NAMES
from analogpipe.errors import ConfigError
from analogpipe.models import MODEL_NAMES
from analogpipe.tiles.pulses import GRANULARITIES, UPDATE_MODES
from analogpipe.train.config import DATASETS, PARTITION_METRICS, SCHEMES


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--lr-milestones {text!r}: use comma-separated epochs, e.g. 100,200") from None


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-dir", default=None, help="folder with the CIFAR pickle batches")
    p.add_argument("--subset", type=int, default=None, help="use the first N training samples")
    p.add_argument("--model", default="mlp", choices=MODEL_NAMES)
    p.add_argument("--width", type=int, default=None, help="base width of the model")
    p.add_argument("--depth", type=int, default=None, help="mlp: number of hidden layers")
    p.add_argument("--init", default="default", choices=("default", "he"),
                   help="weight init: torch's default, or Kaiming-normal (deep MLPs)")
    p.add_argument("--scheme", default="ap", choices=SCHEMES)
    p.add_argument("--stages", type=int, default=1, help="pipeline stages M")
    p.add_argument("--microbatches", type=int, default=4, help="micro-batches per mini-batch B")
    p.add_argument("--micro-batch-size", type=int, default=16, help="samples per micro-batch b")
    p.add_argument("--batch-size", type=int, default=None,
                   help="mini-batch size (must be a multiple of --micro-batch-size)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lr-milestones", type=_milestones, default=(),
                   help="epochs at which lr is multiplied by --lr-gamma, e.g. 100,200")
    p.add_argument("--lr-gamma", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--device-model", default="softbounds", choices=DEVICE_NAMES)
    p.add_argument("--tau", type=float, default=0.8, help="saturation level (w in [-tau, tau])")
    p.add_argument("--dw-min", type=float, default=0.001)
    p.add_argument("--io-bits", type=int, default=8, help="DAC/ADC bits (0: perfect)")
    p.add_argument("--out-noise", type=float, default=0.005)
    p.add_argument("--update", default="expected", choices=UPDATE_MODES)
    p.add_argument("--granularity", default="sample", choices=GRANULARITIES)
    p.add_argument("--partition", dest="partition_metric", default="aimc",
                   choices=PARTITION_METRICS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--processes", type=int, default=None,
                   help="run one process per stage on this machine (torch.distributed)")
    p.add_argument("--launcher", default=None, choices=("torchrun",),
                   help="this process was started by torchrun: join its process group")


CONFIG_FIELDS = ("dataset", "data_dir", "subset", "model", "width", "depth", "init", "scheme",
                 "stages",
                 "microbatches", "micro_batch_size", "batch_size", "epochs", "lr",
                 "lr_milestones", "lr_gamma", "momentum", "weight_decay", "device_model", "tau",
                 "dw_min", "io_bits", "out_noise", "update", "granularity", "partition_metric",
                 "seed", "device")


def config_from_args(args: argparse.Namespace):
    from analogpipe.train import TrainConfig

    return TrainConfig(**{f: getattr(args, f) for f in CONFIG_FIELDS})


def run_training(fn, prefix: str = "analogpipe train") -> int:
    """Run `fn()` and map its outcome to the exit code: 0 done, 2 bad settings (ConfigError),
    3 diverged (TrainingDiverged, the last good checkpoint is kept)."""
    from analogpipe.train import TrainingDiverged

    try:
        fn()
    except ConfigError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 3
    return 0


def main(args: argparse.Namespace) -> int:
    from analogpipe.data import DataError
    from analogpipe.train import build, train

    try:
        cfg = config_from_args(args)
        setup = build(cfg)  # every check happens here, before anything is written
    except (ConfigError, DataError, ValueError) as exc:
        print(f"analogpipe train: error: {exc}", file=sys.stderr)
        return 2
    if args.processes is not None or args.launcher is not None:
        from analogpipe.commands import train_dist

        return train_dist.main(args, cfg)
    return run_training(lambda: train(cfg, args.out, resume=args.resume,
                                      progress=not args.no_progress, setup=setup))
