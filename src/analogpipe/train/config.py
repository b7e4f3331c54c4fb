"""The training run's settings: one validated, keyword-only dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from analogpipe.devices import DEVICE_NAMES, DeviceConfig
from analogpipe.errors import FLOAT32_MAX, FLOAT32_TRUE_MIN, ConfigError, check
from analogpipe.optim.delay import DELAY_COMPENSATIONS
from analogpipe.tiles import IOConfig, MappingConfig, TileConfig, UpdateConfig
from analogpipe.tiles.io import MAX_BITS, res_for_bits
from analogpipe.tiles.pulses import GRANULARITIES, UPDATE_MODES
from analogpipe.tiles.transfer import TransferCompoundConfig

SCHEMES = ("digital", "wop", "sp", "ap", "pipedream")
DATASETS = ("digits", "cifar10", "cifar100", "teacher", "synthetic-cls")
PARTITION_METRICS = ("params", "macs", "aimc")
ALGORITHMS = ("analog-sgd", "tiki-taka")
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "tuple[int, ...]": "a list of integers", "dict[str, Any]": "a table"}


def check_setting_type(name: str, value: Any) -> Any:
    """`value` with the type of TrainConfig field `name` (ints become floats where a float is
    expected; lists become tuples); ConfigError naming the field otherwise. Bools are never
    numbers and strings are never lists."""
    kind = str(next(f.type for f in fields(TrainConfig) if f.name == name))
    optional = kind.endswith(" | None")
    base = kind.removesuffix(" | None")
    if value is None and optional:
        return value
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if base == "int":
        ok = is_int
    elif base == "float":
        ok = is_int or isinstance(value, float)
        value = float(value) if ok else value
    elif base == "str":
        ok = isinstance(value, str)
    elif base == "bool":
        ok = isinstance(value, bool)
    elif base.startswith("tuple"):
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, dict)
    if not ok:
        allowed = _TYPE_WORDS[base] + (" or none" if optional else "")
        raise ConfigError(f"{name}={value!r} has the wrong type ({type(value).__name__}): "
                          f"allowed {allowed}")
    return value


@dataclass(kw_only=True)
class TrainConfig:
    """Everything a training run depends on (stored in run.json and the checkpoint).

    A mini-batch is `microbatches` (B) micro-batches of `micro_batch_size` (b) samples. The
    scheme decides when stages update: digital / wop / sp once per mini-batch, ap and pipedream
    once per micro-batch (so at equal lr, ap makes B times as many updates).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    subset: int | None = None
    model: str = "mlp"
    width: int | None = None
    depth: int | None = None
    init: str = "default"
    scheme: str = "ap"
    stages: int = 1
    microbatches: int = 4
    micro_batch_size: int = 16
    batch_size: int | None = None
    epochs: int = 10
    lr: float = 0.1
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    device_model: str = "softbounds"
    tau: float = 0.8
    omega: float | None = None  # mapping scale (conductance units); None: tau / 2 (ideal: none)
    dw_min: float = 0.001
    io_bits: int = 8
    out_noise: float = 0.005
    update: str = "expected"
    granularity: str = "sample"
    learn_out_scaling: bool = True
    seed: int = 0
    device: str = "cpu"
    augment: bool | None = None  # None: on for CIFAR
    partition_metric: str = "aimc"
    t_f: float = 1.0
    t_b: float = 1.0
    eval_batch_size: int = 500
    divergence_loss: float = 1e4
    # Tiki-Taka (aihwkit TransferCompound settings; A and C use the run's device) and PipeMare
    algorithm: str = "analog-sgd"
    tt_gamma: float = 0.0
    transfer_every: int = 1
    n_reads_per_transfer: int = 1
    transfer_lr: float = 1.0
    fast_lr: float = 1.0
    fast_reference: str = "symmetric_point"
    delay_compensation: str = "none"
    pipemare_warmup_epochs: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_types()
        self.validate()

    def _check_types(self) -> None:
        for f in fields(self):
            setattr(self, f.name, check_setting_type(f.name, getattr(self, f.name)))

    def validate(self) -> None:
        for f in fields(self):  # every float setting reaches float32 tensors
            v = getattr(self, f.name)
            if isinstance(v, float) and f.name != "divergence_loss":  # inf: never diverged
                check(math.isfinite(v) and abs(v) <= FLOAT32_MAX
                      and (v == 0 or abs(v) >= FLOAT32_TRUE_MIN), f.name, v,
                      f"a finite value float32 holds (0, or {FLOAT32_TRUE_MIN:.4g} <= |v| <= "
                      f"{FLOAT32_MAX:.4g})")
        check(self.dataset in DATASETS, "dataset", self.dataset, f"one of {DATASETS}")
        check(self.scheme in SCHEMES, "scheme", self.scheme, f"one of {SCHEMES}")
        check(self.init in ("default", "he"), "init", self.init, "'default' or 'he'")
        check(isinstance(self.stages, int) and self.stages >= 1, "stages", self.stages,
              "an integer >= 1")
        check(self.microbatches >= 1, "microbatches", self.microbatches, "an integer >= 1")
        check(self.micro_batch_size >= 1, "micro_batch_size", self.micro_batch_size,
              "an integer >= 1")
        if self.batch_size is not None:
            check(self.batch_size >= 1 and self.batch_size % self.micro_batch_size == 0,
                  "batch_size", self.batch_size,
                  f"a multiple of micro_batch_size={self.micro_batch_size}")
            self.microbatches = self.batch_size // self.micro_batch_size
        check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        check(self.seed >= 0, "seed", self.seed,
              "an integer >= 0 (the data split and every generator are seeded from it)")
        check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a finite value > 0")
        ms = self.lr_milestones
        check(all(m >= 1 for m in ms) and all(a < b for a, b in zip(ms, ms[1:])),
              "lr_milestones", list(ms), "strictly ascending epochs >= 1 (epoch 1 is the first)")
        check(self.momentum >= 0 and math.isfinite(self.momentum), "momentum", self.momentum,
              "a finite value >= 0")
        check(self.weight_decay >= 0 and math.isfinite(self.weight_decay), "weight_decay",
              self.weight_decay, "a finite value >= 0")
        check(self.dw_min > 0 and math.isfinite(self.dw_min), "dw_min", self.dw_min,
              "a finite value > 0")
        check(self.fast_lr > 0 and math.isfinite(self.fast_lr), "fast_lr", self.fast_lr,
              "a finite value > 0 (eta_A = fast_lr * lr)")
        check(self.width is None or self.width >= 1, "width", self.width, "None or >= 1")
        check(self.depth is None or self.depth >= 1, "depth", self.depth, "None or >= 1")
        check(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size,
              "an integer >= 1")
        check(self.divergence_loss > 0, "divergence_loss", self.divergence_loss, "a value > 0")
        check(0 < self.lr_gamma <= 1, "lr_gamma", self.lr_gamma, "a value in (0, 1]")
        check(self.device_model in DEVICE_NAMES, "device_model", self.device_model,
              f"one of {DEVICE_NAMES}")
        check(self.tau > 0 and math.isfinite(self.tau), "tau", self.tau, "a finite value > 0")
        check(not self.analog or self.lr / self.tau <= FLOAT32_MAX, "lr", self.lr,
              f"a value with lr / tau <= {FLOAT32_MAX:.4g} (tau={self.tau}: the update's "
              "factor lr / tau must fit float32)")
        check(self.io_bits == 0 or 2 <= self.io_bits <= MAX_BITS, "io_bits", self.io_bits,
              f"0 (perfect periphery) or an integer in [2, {MAX_BITS}]")
        check(self.out_noise >= 0 and math.isfinite(self.out_noise), "out_noise",
              self.out_noise, "a finite value >= 0")
        check(self.update in UPDATE_MODES, "update", self.update, f"one of {UPDATE_MODES}")
        check(self.granularity in GRANULARITIES, "granularity", self.granularity,
              f"one of {GRANULARITIES}")
        check(self.device in ("cpu", "cuda"), "device", self.device, "'cpu' or 'cuda'")
        check(self.partition_metric in PARTITION_METRICS, "partition_metric",
              self.partition_metric, f"one of {PARTITION_METRICS}")
        check(self.subset is None or self.subset >= 1, "subset", self.subset, "None or >= 1")
        check(self.omega is None or (self.omega > 0 and math.isfinite(self.omega) and (
            self.device_model == "ideal" or self.omega <= self.tau)), "omega", self.omega,
            "None (tau / 2) or a finite value > 0, at most tau")
        check(self.tt_gamma >= 0 and math.isfinite(self.tt_gamma), "tt_gamma", self.tt_gamma,
              "a finite value >= 0")
        check(self.transfer_every >= 0, "transfer_every", self.transfer_every,
              "an integer >= 0 (0: never)")
        check(self.n_reads_per_transfer >= 1, "n_reads_per_transfer",
              self.n_reads_per_transfer, "an integer >= 1")
        check(self.transfer_lr >= 0 and math.isfinite(self.transfer_lr), "transfer_lr",
              self.transfer_lr, "a finite value >= 0")
        check(self.t_f > 0 and self.t_b > 0 and math.isfinite(self.t_f + self.t_b), "t_f/t_b",
              (self.t_f, self.t_b), "finite values > 0")
        check(self.algorithm in ALGORITHMS, "algorithm", self.algorithm, f"one of {ALGORITHMS}")
        check(self.algorithm == "analog-sgd" or self.analog, "algorithm", self.algorithm,
              "'analog-sgd' with scheme 'digital' (Tiki-Taka needs analog tiles)")
        check(self.delay_compensation in DELAY_COMPENSATIONS, "delay_compensation",
              self.delay_compensation, f"one of {DELAY_COMPENSATIONS}")
        check(self.delay_compensation == "none" or self.scheme in ("ap", "pipedream"),
              "delay_compensation", self.delay_compensation,
              "'none' for scheme " + repr(self.scheme) + " (pipemare needs ap or pipedream)")
        check(self.pipemare_warmup_epochs >= 0 and math.isfinite(self.pipemare_warmup_epochs),
              "pipemare_warmup_epochs", self.pipemare_warmup_epochs, "a finite value >= 0")
        self.tile_config()  # device/IO combinations are checked by their own configs

    @property
    def mini_batch(self) -> int:
        return self.microbatches * self.micro_batch_size

    @property
    def analog(self) -> bool:
        return self.scheme != "digital"

    def schedule_scheme(self) -> str:
        """The schedule a scheme runs: digital SGD runs without a pipeline (WOP order)."""
        return "wop" if self.scheme == "digital" else self.scheme

    def tile_config(self) -> TileConfig | None:
        """The analog tile for this run (None for digital SGD)."""
        if not self.analog:
            return None
        if self.device_model == "ideal":
            device = DeviceConfig(name="ideal", dw_min=self.dw_min)
        else:
            device = DeviceConfig(name=self.device_model, w_max=self.tau, w_min=-self.tau,
                                  dw_min=self.dw_min)
        if self.io_bits == 0:
            io = IOConfig.perfect() if self.out_noise == 0 else IOConfig(
                inp_res=0, out_res=0, out_noise=self.out_noise, out_bound=math.inf)
        else:
            io = IOConfig(inp_res=res_for_bits(self.io_bits), out_res=res_for_bits(self.io_bits),
                          out_noise=self.out_noise)
        # the ideal device keeps its weights unmapped unless a mapping is asked for (omega):
        # then it is the tau -> inf end of a sweep with the same mapping and IO
        ideal_map = self.device_model == "ideal" and self.omega is None
        omega = self.omega if self.omega is not None else self.tau / 2
        update = UpdateConfig(mode=self.update, granularity=self.granularity)
        mapping = MappingConfig(weight_scaling_omega=None if ideal_map else omega,
                                learn_out_scaling=self.learn_out_scaling and not ideal_map)
        if self.algorithm == "tiki-taka":
            return TransferCompoundConfig(
                device=device, fast_device=device, forward=io, backward=io, update=update,
                mapping=mapping, gamma=self.tt_gamma, transfer_every=self.transfer_every,
                n_reads_per_transfer=self.n_reads_per_transfer, transfer_lr=self.transfer_lr,
                fast_lr=self.fast_lr, fast_reference=self.fast_reference, transfer_forward=io,
                transfer_update=update)
        return TileConfig(device=device, forward=io, backward=io, update=update,
                          mapping=mapping)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(
                f"unknown training settings {sorted(unknown)}: allowed {sorted(names)}")
        return cls(**d)
