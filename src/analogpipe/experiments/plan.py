"""The plan of `analogpipe reproduce`: what runs, and the rules fixed before any run.

Everything that decides a verdict is here and is written to ``reproduce.json`` and the report
*before* training starts: the settings (``Settings``), the decision rules and margins
(``Rules``) and the run set (``plan``). Nothing in the analysis may change them after looking
at the results.

Experiment groups register themselves (``register``): a group names its runs (``runs``),
analyses the finished runs (``analyse``, returning plain JSON data with its verdicts) and
renders its report section and figures from that data alone (``render``, ``figures``). The
paper's claims are the groups of ``analogpipe.experiments.paper``; a further experiment is a
new module that calls ``register`` with its own ``Group``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from analogpipe.train.config import TrainConfig

CHANCE = {"digits": 0.1, "cifar10": 0.1, "cifar100": 0.01}
LR_POLICIES = ("same", "scaled")


@dataclass(frozen=True, kw_only=True)
class Rules:
    """Decision rules, fixed before the runs (all accuracies are fractions, not points).

    - ``target_fraction``: the accuracy target of samples/cycles-to-target is this fraction of
      the digital reference's mean final test accuracy *in the same reproduction*.
    - ``acc_margin``: two-sided equivalence margin on a paired difference of final test
      accuracy (AP vs SP, AP vs digital, AP(M) vs AP(1)): equivalent when the whole 95% CI of
      the difference lies within ± this margin.
    - ``samples_ratio``: two-sided margin on the samples-to-target ratio AP(M) / AP(1): the
      CI of the geometric-mean ratio must lie within [1 / r, r].
    - ``near_linear``: "near-linear speedup" = measured speedup / ideal (M x density) >= this,
      for the whole CI, at every M.
    - ``floor_factor``: the floor-vs-tau shape holds when every point lies within this factor
      of the one-constant fit (|log10 residual| <= log10 factor).
    - ``rate_slope``: the theory's O(1/sqrt(K)) bound holds before the floor when the whole CI
      of the log-log slope of E_K is <= this value (the bound is an upper bound: faster
      decrease, a more negative slope, also satisfies it).
    - ``trend_p``: significance level of the Spearman test in the tau sweep.
    - ``floor_ratio`` (Beyond the paper): two-sided margin on the teacher problem's final-loss
      ratio loss(smallest tau) / loss(ideal device) of one algorithm: "the floor does not
      grow" when the CI of the geometric-mean ratio lies within [1 / r, r]; "it grows" when
      the whole CI lies above 1. On digits the same two statements use the accuracy
      difference and ``acc_margin``.
    """

    target_fraction: float = 0.9
    acc_margin: float = 0.03
    samples_ratio: float = 1.5
    near_linear: float = 0.7
    floor_factor: float = 2.0
    rate_slope: float = -0.4
    trend_p: float = 0.05
    floor_ratio: float = 1.1

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(kw_only=True)
class Settings:
    """Everything that decides the run set; stored in reproduce.json and the report."""

    quick: bool = True
    dataset: str = "digits"
    data_dir: str | None = None
    subset: int | None = None
    seeds: int = 5
    device: str = "cpu"
    epochs: int = 10
    lr: float = 0.05
    lr_milestones: tuple[int, ...] = ()
    microbatches: int = 4
    micro_batch_size: int = 16
    tau: float = 0.8
    acc_stages: int = 4
    stage_list: tuple[int, ...] = (1, 2, 4, 8)
    model: str = "mlp"  # claims 2 and 4
    width: int | None = 64
    depth: int | None = 7
    pipe_model: str = "mlp"  # claims 1 and 3 (needs >= max(stage_list) blocks)
    pipe_width: int | None = 64
    pipe_depth: int | None = 7
    init: str = "he"
    sweep_taus: tuple[float, ...] = (0.5, 0.8, 1.6, 3.2)
    sweep_omega: float = 0.4  # mapping of the tau sweep, conductance units (<= min tau)
    convergence: bool = True
    conv_taus: tuple[float, ...] = (0.35, 0.5, 0.7, 1.0, 2.0)
    conv_w_star: float = 0.25  # max |w*| of the teacher: inside every tau of conv_taus
    conv_steps: int = 3000
    conv_lr: float = 0.05
    conv_batch: int = 8
    # Beyond the paper (analogpipe.experiments.beyond): Tiki-Taka (aihwkit TransferCompound
    # names; A and C are both the run's device) and PipeMare
    tt_gamma: float = 0.5
    tt_transfer_every: int = 1
    tt_n_reads: int = 1
    tt_transfer_lr: float = 1.6
    tt_fast_lr: float = 1.0
    bt_taus: str = "all"  # Tiki-Taka's taus of the sweep: "all" or "smallest" (+ ideal)
    bt_stages: tuple[int, ...] = (1, 4)  # M of the digits floor runs (AP)
    bt_teacher_stages: tuple[int, ...] = (1, 4)
    bt_teacher_steps: int = 6000  # micro-batch updates per teacher run
    bt_teacher_noise: float = 0.1
    bt_stale_stages: tuple[int, ...] = (4, 8)  # PipeMare against none at these M
    rules: Rules = field(default_factory=Rules)
    groups: tuple[str, ...] = ()  # empty: every registered group
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chance(self) -> float:
        return CHANCE.get(self.dataset, 0.1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


def _milestones(epochs: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """lr decay epochs at fixed fractions of the run (so --epochs keeps the schedule's shape)."""
    return tuple(sorted({m for f in fractions if 1 <= (m := int(round(f * epochs))) < epochs}))


def quick_settings(**overrides: Any) -> Settings:
    """`make run`: digits, a 9-block MLP (flatten, fc1..fc7, out), 5 seeds, 10 epochs, lr 0.05
    decayed x0.1 at 70% of the epochs (lr 0.1, the paper's, diverges AP at M = 8 with
    micro-batches of 16 under the `same` policy; 0.05 is the next halving).

    Beyond the paper is cut to fit the 10-minute budget: Tiki-Taka on digits only at the
    smallest tau and the ideal device, only in AP at M = acc_stages; the teacher problem only
    at M = 1, the smallest tau and the ideal device, 1000 updates per run."""
    over = {k: v for k, v in overrides.items() if v is not None}
    epochs = over.get("epochs", 10)
    base = Settings(quick=True, epochs=epochs, lr_milestones=_milestones(epochs, (0.7,)),
                    bt_taus="smallest", bt_stages=(over.get("acc_stages", 4),),
                    bt_teacher_stages=(1,), bt_teacher_steps=1000)
    return replace(base, **over)


def full_settings(**overrides: Any) -> Settings:
    """The paper's setting: CIFAR-10 ResNet10, lr 0.1 /10 at epochs 100 and 200, 300 epochs,
    mini-batch 128 = 4 x 32, tau 0.8, 3 seeds; ResNet18 (10 blocks) for the 1..8-stage
    claims (staleness, speedup)."""
    over = {k: v for k, v in overrides.items() if v is not None}
    epochs = over.get("epochs", 300)
    s = Settings(
        quick=False, dataset="cifar10", seeds=3, epochs=epochs, lr=0.1,
        lr_milestones=_milestones(epochs, (1 / 3, 2 / 3)), microbatches=4, micro_batch_size=32,
        model="resnet10", width=None, depth=None, pipe_model="resnet18", pipe_width=None,
        pipe_depth=None, init="default", conv_steps=20000)
    return replace(s, **over)


# ------------------------------------------------------------------------------ runs
@dataclass
class RunSpec:
    """One training run: folder name, resolved settings, and the groups that use it."""

    name: str
    config: TrainConfig
    groups: list[str]

    @property
    def init(self) -> str:
        return self.config.init


def lr_of(s: Settings, scheme: str, policy: str) -> float:
    """`same` (the paper's): every scheme uses lr. `scaled`: AP (one update per micro-batch)
    uses lr / B, the other schemes (one update per mini-batch of B micro-batches) lr."""
    if policy not in LR_POLICIES:
        raise ValueError(f"lr policy {policy!r}: use one of {LR_POLICIES}")
    if scheme == "ap" and policy == "scaled":
        return s.lr / s.microbatches
    return s.lr


def config(s: Settings, *, scheme: str, stages: int = 1, seed: int, policy: str = "same",
           tau: float | None = None, omega: float | None = None, device_model: str = "softbounds",
           pipe: bool = False, **more: Any) -> TrainConfig:
    """The resolved TrainConfig of one run of the plan (every setting explicit).

    The clock recorded by the trainer is the balanced one (t_f = t_b = 1/M: every stage gets
    its share of the model); the AIMC clock of the actual partition is computed afterwards
    (``analogpipe.experiments.clock``).
    """
    model, width, depth = ((s.pipe_model, s.pipe_width, s.pipe_depth) if pipe
                           else (s.model, s.width, s.depth))
    stages = 1 if scheme == "digital" else stages
    tau = s.tau if tau is None else tau
    if omega is None and scheme != "digital":
        omega = tau / 2  # explicit in the resolved settings (the trainer's default mapping)
    return TrainConfig(
        init=s.init, dataset=s.dataset, data_dir=s.data_dir, subset=s.subset, model=model,
        width=width, depth=depth, scheme=scheme, stages=stages, microbatches=s.microbatches,
        micro_batch_size=s.micro_batch_size, epochs=s.epochs, lr=lr_of(s, scheme, policy),
        lr_milestones=s.lr_milestones, tau=tau, omega=omega,
        device_model=device_model, seed=seed, device=s.device, partition_metric="aimc",
        t_f=1.0 / stages, t_b=1.0 / stages, **more)


def _model_tag(cfg: TrainConfig) -> str:
    tag = cfg.model
    if cfg.depth is not None:
        tag += f"{cfg.depth}"
    if cfg.width is not None:
        tag += f"x{cfg.width}"
    return tag


def run_name(cfg: TrainConfig) -> str:
    """Folder name from the settings that vary in the plan (model, scheme, M, lr, device,
    algorithm and delay compensation when not the default)."""
    if cfg.scheme == "digital":
        return f"{_model_tag(cfg)}-digital-lr{cfg.lr:g}-s{cfg.seed}"
    dev = "ideal" if cfg.device_model == "ideal" else f"tau{cfg.tau:g}"
    om = "" if cfg.omega is None else f"-om{cfg.omega:g}"
    alg = "" if cfg.algorithm == "analog-sgd" else "-tt"
    dc = "" if cfg.delay_compensation == "none" else f"-{cfg.delay_compensation}"
    return (f"{_model_tag(cfg)}-{cfg.scheme}{alg}{dc}-M{cfg.stages}-lr{cfg.lr:g}-{dev}{om}"
            f"-s{cfg.seed}")


# ------------------------------------------------------------------------------ groups
@dataclass(frozen=True)
class Group:
    """One experiment of the reproduction (see the module docstring).

    ``runs(settings)``: the TrainConfigs it needs (shared runs are trained once);
    ``analyse(results, settings, extras)``: JSON-ready data with a ``verdicts`` list (dicts
    with claim, verdict, rule, numbers, confounds); ``render(data, settings, figures)``:
    markdown lines of its section; ``figures(data, settings, out)``: {key: png name};
    ``measure(results, settings, out)``: optional work after the runs (in-process
    measurements such as the teacher problem), whose result is passed to ``analyse`` as
    ``extras[key]``; ``measure_needs_runs=False`` lets it run while the workers train.
    """

    key: str
    title: str
    runs: Callable[[Settings], list[TrainConfig]]
    analyse: Callable[[Any, Settings, dict[str, Any]], dict[str, Any]]
    render: Callable[[dict[str, Any], Settings, dict[str, str]], list[str]]
    figures: Callable[[dict[str, Any], Settings, Path], dict[str, str]] | None = None
    measure: Callable[[Any, Settings, Path], Any] | None = None
    order: int = 100
    # False: ``measure`` reads no run (it may go while the workers train)
    measure_needs_runs: bool = True


def plot_figures(name: str) -> Callable[[dict[str, Any], Settings, Path], dict[str, str]]:
    """A Group's ``figures``: the function ``name`` of experiments.plots (imported when the
    figures are drawn, so planning and analysis never import matplotlib)."""
    def draw(a: dict[str, Any], s: Settings, out: Path) -> dict[str, str]:
        from analogpipe.experiments import plots

        return getattr(plots, name)(a, s, out)
    return draw


GROUPS: dict[str, Group] = {}
# modules whose import registers groups (a further experiment adds its module here)
GROUP_MODULES: list[str] = ["analogpipe.experiments.paper",
                            "analogpipe.experiments.beyond"]


def register(group: Group) -> Group:
    """Add an experiment group (idempotent for the same key)."""
    GROUPS[group.key] = group
    return group


def groups(s: Settings) -> list[Group]:
    """The groups of this reproduction, in report order."""
    import importlib

    for mod in GROUP_MODULES:
        importlib.import_module(mod)  # registers its groups

    chosen = [g for g in GROUPS.values() if not s.groups or g.key in s.groups]
    unknown = sorted(set(s.groups) - set(GROUPS))
    if unknown:
        from analogpipe.errors import ConfigError

        raise ConfigError(f"experiment groups {unknown} are unknown: use some of "
                          f"{sorted(GROUPS)}")
    return sorted(chosen, key=lambda g: (g.order, g.key))


def plan(s: Settings) -> list[RunSpec]:
    """The run pool of every group; raises ConfigError on settings a TrainConfig rejects."""
    specs: dict[str, RunSpec] = {}
    for g in groups(s):
        for cfg in g.runs(s):
            name = run_name(cfg)
            if name in specs and specs[name].config != cfg:
                raise RuntimeError(f"plan: two different runs named {name!r}")  # a bug
            spec = specs.setdefault(name, RunSpec(name, cfg, []))
            if g.key not in spec.groups:
                spec.groups.append(g.key)
    return list(specs.values())


def finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)
