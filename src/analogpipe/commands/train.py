"""`analogpipe train`: one training run (digital, WOP, SP, AP or PipeDream)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from analogpipe.devices import DEVICE_NAMES
from analogpipe.errors import ConfigError
from analogpipe.models import MODEL_NAMES
from analogpipe.optim.delay import DELAY_COMPENSATIONS
from analogpipe.tiles.pulses import GRANULARITIES, UPDATE_MODES
from analogpipe.tiles.transfer import FAST_REFERENCES
from analogpipe.train.config import ALGORITHMS, DATASETS, PARTITION_METRICS, SCHEMES

EXAMPLES = """\
examples:
  # AP pipeline of 3 stages on the bundled digits data, 10 epochs (seconds on a CPU)
  analogpipe train --dataset digits --model mlp --scheme ap --stages 3 --epochs 10 --out runs/ap
  # repeat that run with another tau, taking every other setting from its record
  analogpipe train --config runs/ap/run.json --tau 0.4 --out runs/ap-tau0.4
"""


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--lr-milestones {text!r}: use comma-separated epochs, e.g. 100,200") from None


def add_parser(p: argparse.ArgumentParser) -> None:
    """Flags of `analogpipe train` (each help gives the default and the allowed values)."""
    p.description = (
        "Train one model and write OUT/run.json (resolved settings, versions, machine), "
        "OUT/metrics.jsonl (one line per epoch) and OUT/checkpoint.pt (every epoch, "
        "atomically). Exit codes: 0 done, 2 bad settings (nothing written), 3 diverged (the "
        "last good checkpoint is kept), 130 / 143 interrupted by Ctrl-C / SIGTERM (the last "
        "checkpoint is kept: continue with --resume).")
    p.epilog = EXAMPLES
    p.add_argument("--config", metavar="FILE", default=None,
                   help="take the settings of an earlier run: its run.json, or a TOML / JSON "
                        "file of training settings (flags given beside it override it; "
                        "default: none)")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="digits", choices=DATASETS,
                      help="training data; cifar10/cifar100 are read from --data-dir")
    data.add_argument("--data-dir", default=None, metavar="DIR",
                      help="folder holding cifar-10-batches-py/ or cifar-100-python/ "
                           "(default: none; needed for CIFAR)")
    data.add_argument("--subset", type=int, default=None, metavar="N",
                      help="use only the first N training samples (default: all)")
    model = p.add_argument_group("model")
    model.add_argument("--model", default="mlp", choices=MODEL_NAMES, help="architecture")
    model.add_argument("--width", type=int, default=None,
                       help="base width >= 1 (default: the model's own: mlp hidden sizes 128, "
                            "64; cnn 16; resnets 64)")
    model.add_argument("--depth", type=int, default=None,
                       help="mlp only: this many hidden layers, each --width units wide (64 "
                            "without --width), instead of the default two (default: none)")
    model.add_argument("--init", default="default", choices=("default", "he"),
                       help="weight init: torch's own, or Kaiming-normal (deep MLPs)")
    pipe = p.add_argument_group("pipeline")
    pipe.add_argument("--scheme", default="ap", choices=SCHEMES,
                      help="digital SGD, analog without pipeline (wop), synchronous GPipe "
                           "(sp), asynchronous 1F1B (ap), PipeDream with weight stashing")
    pipe.add_argument("--stages", type=int, default=1, metavar="M",
                      help="pipeline stages M, from 1 to the model's number of blocks")
    pipe.add_argument("--microbatches", type=int, default=4, metavar="B",
                      help="micro-batches per mini-batch B (>= 1)")
    pipe.add_argument("--micro-batch-size", type=int, default=16, metavar="b",
                      help="samples per micro-batch b (>= 1; >= 2 for BatchNorm models)")
    pipe.add_argument("--batch-size", type=int, default=None,
                      help="mini-batch size; sets B = batch-size / b (a multiple of b; "
                           "default: B * b)")
    pipe.add_argument("--partition", dest="partition_metric", default="aimc",
                      choices=PARTITION_METRICS,
                      help="what stages balance: AIMC time (the cost model's), parameters or "
                           "MACs")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=10, help="epochs to train (>= 1)")
    opt.add_argument("--lr", type=float, default=0.1, help="learning rate (> 0)")
    opt.add_argument("--lr-milestones", type=_milestones, default=(), metavar="E1,E2",
                     help="ascending epochs >= 1 after which lr is multiplied by --lr-gamma "
                          "(epoch E+1 on uses the new lr), e.g. 100,200 (default: none)")
    opt.add_argument("--lr-gamma", type=float, default=0.1, help="lr decay factor, in (0, 1]")
    opt.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (>= 0)")
    opt.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (>= 0)")
    opt.add_argument("--seed", type=int, default=0,
                     help="seed of data order, init and every noise stream (same seed = "
                          "same run)")
    dev = p.add_argument_group("analog device")
    dev.add_argument("--device-model", default="softbounds", choices=DEVICE_NAMES,
                     help="device response (aihwkit names)")
    dev.add_argument("--tau", type=float, default=0.8,
                     help="saturation level: weights live in [-tau, tau] (> 0)")
    dev.add_argument("--dw-min", type=float, default=0.001,
                     help="weight change of one pulse at w = 0 (> 0)")
    dev.add_argument("--omega", type=float, default=None,
                     help="mapping: each output row's largest |w| is programmed at omega "
                          "(conductance units, 0 < omega <= tau; default: tau / 2)")
    dev.add_argument("--io-bits", type=int, default=8,
                     help="DAC/ADC bits: 0 (perfect periphery) or 2 to 24")
    dev.add_argument("--out-noise", type=float, default=0.005,
                     help="output noise std, relative to the output range (>= 0)")
    dev.add_argument("--update", default="expected", choices=UPDATE_MODES,
                     help="expected update, or stochastic pulse trains")
    dev.add_argument("--granularity", default="sample", choices=GRANULARITIES,
                     help="one analog update per sample, or per micro-batch")
    tt = p.add_argument_group("Tiki-Taka and delay compensation")
    tt.add_argument("--algorithm", default="analog-sgd", choices=ALGORITHMS,
                    help="analog-sgd: one array per layer; tiki-taka: fast array A + slow "
                         "array C per tile (aihwkit TransferCompound), A and C use "
                         "--device-model/--tau/--dw-min")
    tt.add_argument("--tt-gamma", type=float, default=0.0,
                    help="tiki-taka: W = gamma * A + C, gamma >= 0 (default: 0, A hidden)")
    tt.add_argument("--transfer-every", type=int, default=1, metavar="N",
                    help="tiki-taka: transfer after every N-th update of a tile, N >= 0 "
                         "(0: never; default: 1)")
    tt.add_argument("--n-reads-per-transfer", type=int, default=1, metavar="R",
                    help="tiki-taka: columns of A read and pulsed into C per transfer, R >= 1 "
                         "(default: 1)")
    tt.add_argument("--transfer-lr", type=float, default=1.0,
                    help="tiki-taka: eta_T = transfer_lr * lr, >= 0 (default: 1.0)")
    tt.add_argument("--fast-lr", type=float, default=1.0,
                    help="tiki-taka: eta_A = fast_lr * lr, > 0 (default: 1.0)")
    tt.add_argument("--fast-reference", default="symmetric_point", choices=FAST_REFERENCES,
                    help="tiki-taka: A's reference, its symmetric point (zero-shift) or none")
    tt.add_argument("--delay-compensation", default="none", choices=DELAY_COMPENSATIONS,
                    help="pipemare: per-stage lr / delay ** (1 - k/K), AP/PipeDream only")
    tt.add_argument("--pipemare-warmup-epochs", type=float, default=1.0, metavar="K",
                    help="K of PipeMare's rescheduling, in epochs, >= 0 (default: 1.0)")
    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR",
                     help="run folder (required); must be empty or new unless --resume or "
                          "--overwrite")
    run.add_argument("--resume", action="store_true",
                     help="continue from OUT/checkpoint.pt with the settings of OUT/run.json "
                          "(flags given must match them; only --epochs may grow)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run in OUT (its run.json, metrics.jsonl, checkpoint.pt)")
    run.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                     help="where tensors live (cuda needs a CUDA build of torch)")
    run.add_argument("--threads", type=int, default=1, metavar="N",
                     help="torch threads per process (>= 1); --processes runs equal the "
                          "one-process run bit for bit at equal --threads")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress bar on stderr")
    run.add_argument("--processes", type=int, default=None, metavar="M",
                     help="run one process per stage on this machine, torch.distributed "
                          "with gloo (must equal --stages; default: one process)")
    run.add_argument("--launcher", default=None, choices=("torchrun",),
                     help="this process was started by torchrun: join its process group "
                          "(default: none)")


CONFIG_FIELDS = ("dataset", "data_dir", "subset", "model", "width", "depth", "init", "scheme",
                 "stages",
                 "microbatches", "micro_batch_size", "batch_size", "epochs", "lr",
                 "lr_milestones", "lr_gamma", "momentum", "weight_decay", "device_model", "tau",
                 "dw_min", "omega", "io_bits", "out_noise", "update", "granularity",
                 "partition_metric",
                 "seed", "device", "algorithm", "tt_gamma", "transfer_every",
                 "n_reads_per_transfer", "transfer_lr", "fast_lr", "fast_reference",
                 "delay_compensation", "pipemare_warmup_epochs")


def read_config_file(path: str) -> dict[str, Any]:
    """Training settings from a run.json (its "config"), a TOML file or a JSON file (top level
    or a [config] table; keys are TrainConfig fields, '-' or '_'). ConfigError naming the file
    on anything else."""
    from dataclasses import fields

    from analogpipe.train import TrainConfig

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file; give an earlier run's run.json or "
                          "a TOML file of settings")
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a text file (binary?); give an earlier run's "
                          "run.json or a TOML / JSON file of settings") from None
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        kind = "TOML" if p.suffix == ".toml" else "JSON"
        raise ConfigError(f"--config {path}: not valid {kind} ({exc}); give a run.json or a "
                          ".toml file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table of settings")
    if isinstance(data.get("config"), dict):
        data = data["config"]
    values = {k.replace("-", "_"): v for k, v in data.items()}
    if "partition" in values:
        values["partition_metric"] = values.pop("partition")
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"--config {path}: unknown settings {unknown}; allowed: "
                          f"{', '.join(sorted(names))}")
    from analogpipe.train.config import check_setting_type

    for key, value in values.items():
        try:
            values[key] = check_setting_type(key, value)
        except ConfigError as exc:
            raise ConfigError(f"--config {path}: {exc}") from None
    return values


def _with_flag(msg: str) -> str:
    """A message about a setting ("momentum=-1.0 is invalid ...", "stages=9 but ...") with
    its flag in front ("--momentum: ..."); other messages as they are."""
    from analogpipe.train.rundir import flag_name

    field = msg.split("=", 1)[0]
    field = _TILE_FIELDS.get(field, field)
    if field in CONFIG_FIELDS and not msg.startswith("--"):
        return f"{flag_name(field)}: {msg}"
    return msg


# the tile settings that train's flags set (their checks name the tile's field)
_TILE_FIELDS = {"device.w_max": "tau", "device.w_max (tau)": "tau", "device.w_min": "tau",
                "device.dw_min": "dw_min", "io.out_noise": "out_noise",
                "mapping.weight_scaling_omega": "omega"}


def _given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the flags written out in `argv` (abbreviations are off, so a flag is
    given exactly when one of its option strings, or `OPTION=...`, is a token)."""
    return {a.dest for a in parser._actions if a.option_strings and any(
        t == o or t.startswith(o + "=") for t in argv for o in a.option_strings)}


# flags that only mean something together with another setting: field -> (condition, words)
_ONLY_WITH = {
    **{f: (lambda c: c.algorithm == "tiki-taka", "--algorithm tiki-taka")
       for f in ("tt_gamma", "transfer_every", "n_reads_per_transfer", "transfer_lr", "fast_lr",
                 "fast_reference")},
    "pipemare_warmup_epochs": (lambda c: c.delay_compensation == "pipemare",
                               "--delay-compensation pipemare"),
    **{f: (lambda c: c.analog, "an analog --scheme (not digital)")
       for f in ("device_model", "tau", "dw_min", "omega", "io_bits", "out_noise", "update",
                 "granularity")},
    "data_dir": (lambda c: c.dataset in ("cifar10", "cifar100"), "--dataset cifar10/cifar100"),
}


def inapplicable_flags(cfg, given: set[str]) -> str | None:
    """A message naming the flags given on the command line that this run would ignore."""
    from analogpipe.train.rundir import flag_name

    bad: dict[str, list[str]] = {}
    for f in sorted(given):
        rule = _ONLY_WITH.get(f)
        if rule is not None and not rule[0](cfg):
            bad.setdefault(rule[1], []).append(flag_name(f))
    if not bad:
        return None
    return "; ".join(f"{', '.join(flags)} only appl{'y' if len(flags) > 1 else 'ies'} with {need}"
                     for need, flags in bad.items()) \
        + ": leave them out, or give the setting they belong to"


def prepare(args: argparse.Namespace, sub_argv: list[str]) -> argparse.Namespace:
    """`--config FILE`: its settings become the defaults, then the flags are parsed again, so
    flags given beside it win. Settings without a flag (t_f, t_b, ...) ride along.

    `--resume` without `--config` takes the settings of OUT/run.json the same way, so
    `train --out DIR --resume --epochs N` continues a run without retyping its flags (flags
    given are still checked against the checkpoint)."""
    parser: argparse.ArgumentParser = args._parser
    given = _given_flags(parser, sub_argv)
    config = args.config
    if config is None and args.resume and (Path(args.out) / "run.json").is_file():
        config = str(Path(args.out) / "run.json")
    if config is None:
        args._given = given
        return args
    try:
        values = read_config_file(config)
    except ConfigError as exc:
        parser.error(str(exc))
    dests = {a.dest for a in parser._actions}
    parser.set_defaults(**{k: v for k, v in values.items() if k in dests})
    new = parser.parse_args(sub_argv)
    new._config_extra = {k: v for k, v in values.items() if k not in dests}
    new._given = given
    new._config_file = config
    return new


def config_from_args(args: argparse.Namespace):
    from analogpipe.train import TrainConfig

    extra = dict(getattr(args, "_config_extra", {}) or {})
    return TrainConfig(**extra, **{f: getattr(args, f) for f in CONFIG_FIELDS})


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


def _epochs_done(out: str) -> int:
    try:
        return sum(1 for line in (Path(out) / "metrics.jsonl").read_text().splitlines()
                   if line.strip())
    except OSError:
        return 0


def interrupted_message(out: str, signame: str) -> str:
    """One line: what an interrupted run left behind and how to continue it."""
    done = _epochs_done(out)
    if done and (Path(out) / "checkpoint.pt").exists():
        keep = (f"{Path(out) / 'checkpoint.pt'} holds {done} finished epoch(s); continue with "
                "the same command and --resume")
    else:
        keep = "no epoch finished; start again with --overwrite"
    return f"analogpipe train: interrupted ({signame}); {keep}"


def summary(out: str) -> str | None:
    """The run's result line for stdout (None if no epoch finished)."""
    try:
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
        last = json.loads(lines[-1])
    except (OSError, ValueError, IndexError):
        return None
    return (f"{out}: {last['epoch']} epochs, test_acc {last['test_acc']:.4f}, test_loss "
            f"{last['test_loss']:.4f}, train_loss {last['train_loss']:.4f}, cycles "
            f"{last['cycles']:.0f}, wall {last['wall_s']:.1f}s")


def main(args: argparse.Namespace) -> int:
    from analogpipe.cli import Interrupted
    from analogpipe.data import DataError
    from analogpipe.train import build, train
    from analogpipe.train.rundir import check_out_dir, check_resume, load_checkpoint

    def fail(msg: str) -> int:
        print(f"analogpipe train: error: {msg}", file=sys.stderr)
        return 2

    if args.threads < 1:
        return fail(f"--threads {args.threads}: use an integer >= 1")
    if args.resume and args.overwrite:
        return fail("--resume and --overwrite exclude each other: continue the run in --out, "
                    "or replace it")
    if args.launcher == "torchrun":
        import os

        missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k not in os.environ]
        if missing:
            return fail(f"--launcher torchrun: {', '.join(missing)} not set, so this process "
                        "was not started by torchrun; start it with `torchrun "
                        "--nproc-per-node=M -m analogpipe.cli train ...`, or use --processes M")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        try:
            # every check happens before anything is written: settings, folder, checkpoint
            try:
                cfg = config_from_args(args)
            except ConfigError as exc:
                msg = _with_flag(str(exc))
                source = getattr(args, "_config_file", None)
                raise ConfigError(msg + (f" (settings from --config {source} and the flags "
                                         "given)" if source else "")) from None
            given = getattr(args, "_given", set())
            problem = inapplicable_flags(cfg, given)
            if problem:
                raise ConfigError(problem)
            if {"batch_size", "microbatches"} <= given and \
                    args.batch_size != args.microbatches * cfg.micro_batch_size:
                raise ConfigError(
                    f"--batch-size {args.batch_size} and --microbatches {args.microbatches} "
                    f"disagree (batch size = microbatches x micro-batch-size "
                    f"{cfg.micro_batch_size}): give one of them")
            if args.launcher is None:
                check_out_dir(args.out, resume=args.resume, overwrite=args.overwrite)
                if args.resume:
                    ckpt_path = Path(args.out) / "checkpoint.pt"
                    check_resume(load_checkpoint(ckpt_path), cfg.to_dict(), ckpt_path)
            setup = build(cfg)
        except (ConfigError, DataError, ValueError) as exc:
            return fail(_with_flag(str(exc)))
        try:
            if args.processes is not None or args.launcher is not None:
                from analogpipe.commands import train_dist

                code = train_dist.main(args, cfg)
            else:
                code = run_training(lambda: train(
                    cfg, args.out, resume=args.resume, overwrite=args.overwrite,
                    progress=not args.no_progress, setup=setup))
        except KeyboardInterrupt as exc:
            sig = exc.signame if isinstance(exc, Interrupted) else "SIGINT"
            print(interrupted_message(args.out, sig), file=sys.stderr)
            return exc.code if isinstance(exc, Interrupted) else 130
        if code == 0 and args.launcher is None:
            line = summary(args.out)
            if line:
                print(line)
        return code
    finally:
        torch.set_num_threads(threads)
