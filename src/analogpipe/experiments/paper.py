"""The paper's experiment set as a list of training runs (SPEC section 7, the reproduce issue).

Four experiments share one pool of runs (a run used by several is trained once):

- ``acc``: test accuracy vs epoch and vs cycles for digital SGD, analog WOP, SP and AP at M=4;
- ``speedup``: cycles and samples to a target accuracy, SP and AP for M in ``stage_list``,
  against WOP on the same clock;
- ``tau``: final accuracy and weight saturation of WOP and AP over a sweep of tau;
- ``convergence`` (optional): E_K = running mean of ||grad f(W_k)||^2 on the teacher-student
  regression, for a few tau (done in-process by ``analogpipe.experiments.convergence``).

The clock: every run gives each stage its share of the model, ``t_f = t_b = 1/M``, so a full
forward + backward of one micro-batch costs 2 cycles whatever M is, and every M is on one clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from analogpipe.train.config import TrainConfig

EXPERIMENTS = ("acc", "speedup", "tau")
AP_LR_POLICIES = ("scaled", "same")
CHANCE = {"digits": 0.1, "cifar10": 0.1, "cifar100": 0.01}


@dataclass(kw_only=True)
class Settings:
    """Everything that decides the run set; stored in reproduce.json and the report."""

    quick: bool = True
    dataset: str = "digits"
    data_dir: str | None = None
    subset: int | None = None
    seeds: int = 2
    device: str = "cpu"
    epochs: int = 10
    lr: float = 0.1
    lr_milestones: tuple[int, ...] = ()
    ap_lr: str = "scaled"  # "scaled": AP uses lr / B; "same": AP uses lr (as the paper)
    microbatches: int = 4
    micro_batch_size: int = 16
    tau: float = 0.8
    taus: tuple[float, ...] = (0.2, 0.4, 0.8, 1.6)
    acc_stages: int = 4
    stage_list: tuple[int, ...] = (1, 2, 4, 8)
    model: str = "mlp"  # experiments acc and tau
    width: int | None = 64
    depth: int | None = 7
    speed_model: str = "mlp"  # experiment speedup (needs >= max(stage_list) blocks)
    speed_width: int | None = 64
    speed_depth: int | None = 7
    init: str = "he"  # "he": Kaiming-normal weights, zero biases; "default": torch's
    target: float | None = None  # accuracy target of the speedup experiment
    convergence: bool = True
    convergence_taus: tuple[float, ...] = (0.3, 0.6, 1.2)
    convergence_steps: int = 3000
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def target_acc(self) -> float:
        """Default targets: reachable by every scheme in the quick run / the paper's setting."""
        if self.target is not None:
            return self.target
        return {"digits": 0.8, "cifar10": 0.8, "cifar100": 0.5}.get(self.dataset, 0.8)

    @property
    def chance(self) -> float:
        return CHANCE.get(self.dataset, 0.1)

    def lr_for(self, scheme: str) -> float:
        """AP updates once per micro-batch, WOP/SP/digital once per B micro-batches."""
        if scheme == "ap" and self.ap_lr == "scaled":
            return self.lr / self.microbatches
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        for k in ("lr_milestones", "taus", "stage_list", "convergence_taus"):
            d[k] = list(d[k])
        return d


def _milestones(epochs: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """lr decay epochs at fixed fractions of the run (so --epochs keeps the schedule's shape)."""
    return tuple(sorted({m for f in fractions if 1 <= (m := int(round(f * epochs))) < epochs}))


def quick_settings(**overrides: Any) -> Settings:
    """`make run`: digits, a 9-block MLP (flatten, fc1..fc7, out), 2 seeds, 10 epochs with one
    lr decay (x0.1) at 70% of the epochs, which settles the noisy end-of-run accuracies."""
    over = {k: v for k, v in overrides.items() if v is not None}
    epochs = over.get("epochs", 10)
    s = Settings(quick=True, epochs=epochs, lr_milestones=_milestones(epochs, (0.7,)), seeds=2,
                 convergence_steps=2000)
    return replace(s, **over)


def full_settings(**overrides: Any) -> Settings:
    """The paper's setting: CIFAR-10 ResNet10, lr 0.1 /10 at epochs 100 and 200, 300 epochs,
    mini-batch 128 = 4 x 32, tau 0.8; ResNet18 (10 blocks) for the 1..8-stage speedup."""
    over = {k: v for k, v in overrides.items() if v is not None}
    epochs = over.get("epochs", 300)
    s = Settings(
        quick=False, dataset="cifar10", seeds=3, epochs=epochs, lr=0.1,
        lr_milestones=_milestones(epochs, (1 / 3, 2 / 3)),
        microbatches=4, micro_batch_size=32, model="resnet10", width=None, depth=None,
        speed_model="resnet18", speed_width=None, speed_depth=None, init="default",
        convergence_steps=20000,
    )
    return replace(s, **over)


@dataclass
class RunSpec:
    """One training run: its folder name, settings, initialisation and the experiments using it."""

    name: str
    config: TrainConfig
    init: str
    experiments: list[str]

    @property
    def tau_label(self) -> float:
        return math.inf if self.config.scheme == "digital" else self.config.tau


def _config(s: Settings, *, scheme: str, stages: int, tau: float, seed: int,
            speed: bool) -> TrainConfig:
    model, width, depth = ((s.speed_model, s.speed_width, s.speed_depth) if speed
                           else (s.model, s.width, s.depth))
    return TrainConfig(
        init=s.init, dataset=s.dataset, data_dir=s.data_dir, subset=s.subset, model=model,
        width=width,
        depth=depth, scheme=scheme, stages=stages, microbatches=s.microbatches,
        micro_batch_size=s.micro_batch_size, epochs=s.epochs, lr=s.lr_for(scheme),
        lr_milestones=s.lr_milestones, tau=tau, seed=seed, device=s.device,
        t_f=1.0 / stages, t_b=1.0 / stages,
    )


def _model_tag(cfg: TrainConfig) -> str:
    tag = cfg.model
    if cfg.depth is not None:
        tag += f"{cfg.depth}"
    if cfg.width is not None:
        tag += f"x{cfg.width}"
    return tag


def run_name(cfg: TrainConfig) -> str:
    """Folder name: model, scheme, stages, tau, seed (digital has no M / tau)."""
    if cfg.scheme == "digital":
        return f"{_model_tag(cfg)}-digital-s{cfg.seed}"
    return f"{_model_tag(cfg)}-{cfg.scheme}-M{cfg.stages}-tau{cfg.tau:g}-s{cfg.seed}"


def plan(s: Settings) -> list[RunSpec]:
    """The run pool; raises ConfigError on settings a TrainConfig rejects."""
    specs: dict[str, RunSpec] = {}

    def add(exp: str, *, scheme: str, stages: int, tau: float, seed: int,
            speed: bool = False) -> None:
        cfg = _config(s, scheme=scheme, stages=stages if scheme != "digital" else 1, tau=tau,
                      seed=seed, speed=speed)
        name = run_name(cfg)
        if name not in specs:
            specs[name] = RunSpec(name, cfg, s.init, [])
        if exp not in specs[name].experiments:
            specs[name].experiments.append(exp)

    M = s.acc_stages
    for seed in range(s.seeds):
        add("acc", scheme="digital", stages=1, tau=s.tau, seed=seed)
        for scheme in ("wop", "sp", "ap"):
            add("acc", scheme=scheme, stages=M, tau=s.tau, seed=seed)
        # WOP's numerics do not depend on M and, with t = 1/M, neither does its clock: one
        # WOP run at M = acc_stages is the reference of every M
        add("speedup", scheme="wop", stages=M, tau=s.tau, seed=seed, speed=True)
        for m in s.stage_list:
            for scheme in ("sp", "ap"):
                add("speedup", scheme=scheme, stages=m, tau=s.tau, seed=seed, speed=True)
        add("tau", scheme="digital", stages=1, tau=s.tau, seed=seed)
        for tau in s.taus:
            for scheme in ("wop", "ap"):
                add("tau", scheme=scheme, stages=M, tau=tau, seed=seed)
    return list(specs.values())
