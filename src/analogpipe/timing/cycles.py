"""Cycle model: simulate a schedule on per-stage costs; closed forms of SPEC section 5.

One cycle is one stage's forward (``t_f``) or backward-with-update (``t_b``) of one
micro-batch; by default both are 1. ``simulate`` is a dry run of the same schedule object
the executors interpret: each action starts when its stage is free and its prerequisites are
done (plus the transfer time between adjacent stages). No torch here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from analogpipe.pipeline.schedule import Action, Kind, Schedule, _run

__all__ = ["Costs", "Event", "Timeline", "closed_form", "simulate", "wop_makespan"]

Number = float | int


def _per(name: str, value: Number | Sequence[Number], n: int, what: str) -> list[float]:
    """Broadcast a scalar or check a list: non-negative finite numbers, one per ``what``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        values = [float(value)] * n
    else:
        values = [float(v) for v in value]
        if len(values) != n:
            raise ValueError(
                f"Costs.{name} has {len(values)} values but the schedule has {n} {what}: "
                f"give one number or a list of {n}"
            )
    for v in values:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"Costs.{name}={value!r}: every value must be finite and >= 0")
    return values


@dataclass
class Costs:
    """Per-action durations in cycles.

    ``t_f``/``t_b``/``t_u``: one number or one per stage; ``t_b`` is the backward including
    its analog update, ``t_u`` the extra time of an UPDATE action (0 by default: the update
    is inside ``t_b``). ``t_comm``: one number or one per boundary (M - 1 values), the time to
    move a micro-batch's activations (or errors) between adjacent stages.
    """

    t_f: Number | Sequence[Number] = 1.0
    t_b: Number | Sequence[Number] = 1.0
    t_u: Number | Sequence[Number] = 0.0
    t_comm: Number | Sequence[Number] = 0.0

    def __post_init__(self) -> None:
        for name in ("t_f", "t_b", "t_u", "t_comm"):
            value = getattr(self, name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                _per(name, value, 1, "stages")
            else:
                _per(name, value, len(list(value)), "stages")

    def resolve(self, num_stages: int) -> dict[str, list[float]]:
        """Per-stage lists (``t_comm`` per boundary) for M stages; raises on length mismatch."""
        return {
            "t_f": _per("t_f", self.t_f, num_stages, "stages"),
            "t_b": _per("t_b", self.t_b, num_stages, "stages"),
            "t_u": _per("t_u", self.t_u, num_stages, "stages"),
            "t_comm": _per("t_comm", self.t_comm, max(num_stages - 1, 0),
                           "stage boundaries (M - 1)"),
        }


@dataclass(frozen=True)
class Event:
    action: Action
    start: float
    end: float


@dataclass
class Timeline:
    """Result of ``simulate``: when every action ran, and the figures the reports quote."""

    schedule: Schedule
    costs: Costs
    events: list[Event]
    makespan: float
    busy: list[float]  # per stage: time spent in F and B (updates' t_u and transfers excluded)
    density: float
    bubble_fraction: float
    peak_in_flight: list[int]
    versions: dict[tuple[int, int], tuple[int, int]]
    staleness: list[int]
    speedup_over_wop: float | None = None
    num_updates: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no events)."""
        return {
            "scheme": self.schedule.scheme,
            "stages": self.schedule.num_stages,
            "microbatches_total": self.schedule.num_microbatches,
            "microbatches_per_step": self.schedule.microbatches_per_step,
            "makespan_cycles": self.makespan,
            "busy": self.busy,
            "density": self.density,
            "bubble_fraction": self.bubble_fraction,
            "peak_in_flight": self.peak_in_flight,
            "staleness": self.staleness,
            "num_updates": self.num_updates,
            "speedup_over_wop": self.speedup_over_wop,
            "weight_stashing": self.schedule.weight_stashing,
        }


def simulate(schedule: Schedule, costs: Costs | None = None) -> Timeline:
    """Dry-run ``schedule`` on ``costs`` (default: unit costs) and measure it.

    Staleness per stage is the most common (backward version - forward version) over the
    stream, ties going to the larger value (the steady state comes last); versions count the
    UPDATE actions a stage ran before the forward / before the backward. For PipeDream the
    number is the same; its executor then uses the stashed weights of the forward.
    """
    costs = Costs() if costs is None else costs
    schedule.validate()
    M = schedule.num_stages
    c = costs.resolve(M)

    def duration(a: Action) -> float:
        if a.kind is Kind.FORWARD:
            return c["t_f"][a.stage]
        if a.kind is Kind.BACKWARD:
            return c["t_b"][a.stage]
        if a.kind is Kind.UPDATE:
            return c["t_u"][a.stage]
        return 0.0  # a send/receive: the transfer time is charged on the edge below

    def delay(from_stage: int, to_stage: int) -> float:  # adjacent stages: boundary min()
        return c["t_comm"][min(from_stage, to_stage)]

    start, end = _run(schedule, duration, delay)
    flat = [a for row in schedule.per_stage for a in row]  # the ids _run numbers
    events = [Event(a, t0, t1) for a, t0, t1 in zip(flat, start, end)]
    events.sort(key=lambda e: (e.start, e.action.stage, e.end))
    makespan = max((e.end for e in events), default=0.0)
    busy = [0.0] * M
    for e in events:
        if e.action.kind in (Kind.FORWARD, Kind.BACKWARD):
            busy[e.action.stage] += e.end - e.start
    density = sum(busy) / (M * makespan) if makespan > 0 else 0.0

    peak: list[int] = []
    versions: dict[tuple[int, int], tuple[int, int]] = {}
    staleness: list[int] = []
    for s, row in enumerate(schedule.per_stage):
        in_flight = top = updates = 0
        fwd_version: dict[int, int] = {}
        for a in row:
            if a.kind is Kind.FORWARD:
                in_flight += 1
                top = max(top, in_flight)
                fwd_version[a.mb] = updates
            elif a.kind is Kind.BACKWARD:
                in_flight -= 1
                versions[(s, a.mb)] = (fwd_version[a.mb], updates)
            elif a.kind is Kind.UPDATE:
                updates += 1
        peak.append(top)
        gaps = Counter(b - f for (st, _), (f, b) in versions.items() if st == s)
        staleness.append(max(gaps, key=lambda g: (gaps[g], g)) if gaps else 0)

    speedup = _speedup_over_wop(schedule, costs, makespan)
    return Timeline(
        schedule=schedule,
        costs=costs,
        events=events,
        makespan=makespan,
        busy=busy,
        density=density,
        bubble_fraction=1.0 - density,
        peak_in_flight=peak,
        versions=versions,
        staleness=staleness,
        speedup_over_wop=speedup,
        num_updates=[schedule.num_updates(s) for s in range(M)],
    )


def wop_makespan(num_stages: int, microbatches_per_step: int, num_microbatches: int,
                 costs: Costs | None = None) -> float:
    """Makespan of ``wop(M, B, K // B)`` under ``costs``, by an O(K M) recurrence.

    Exactly what ``simulate`` computes for that schedule (a test checks it), without building
    it: micro-batches go down and up the stages one at a time; each stage updates after the
    last backward of each step.
    """
    M, B, K = num_stages, microbatches_per_step, num_microbatches
    c = (costs or Costs()).resolve(M)
    t_f, t_b, t_u, comm = c["t_f"], c["t_b"], c["t_u"], c["t_comm"]
    free = [0.0] * M
    for k in range(K):
        done = 0.0
        for s in range(M):
            done = max(free[s], done + comm[s - 1] if s else 0.0) + t_f[s]
            free[s] = done
        for s in range(M - 1, -1, -1):
            done = max(free[s], done + comm[s] if s < M - 1 else 0.0) + t_b[s]
            free[s] = done
            if (k + 1) % B == 0:
                free[s] = done + t_u[s]
    return max(free)


def _speedup_over_wop(schedule: Schedule, costs: Costs, makespan: float) -> float | None:
    """WOP makespan on the same costs and stream / this makespan (None if not comparable)."""
    K, B = schedule.num_microbatches, schedule.microbatches_per_step
    if makespan <= 0 or K % B:
        return None
    return wop_makespan(schedule.num_stages, B, K, costs) / makespan


def closed_form(scheme: str, M: int, B: int, steps: int = 1, t_f: float = 1.0,
                t_b: float = 1.0) -> dict[str, float]:
    """SPEC section 5 table: makespan (cycles), density and speedup over WOP.

    WOP: M (t_f + t_b) per micro-batch, density 1/M. SP: (B + M - 1)(t_f + t_b) per mini-batch,
    density B / (B + M - 1). AP and PipeDream: (K + M - 1)(t_f + t_b) for K = B * steps
    micro-batches, density K / (K + M - 1). Uniform stage costs, no transfer time, t_u = 0.
    """
    for name, v in (("stages", M), ("microbatches", B), ("steps", steps)):
        if v < 1:
            raise ValueError(f"{name}={v} is invalid: use an integer >= 1")
    K = B * steps
    cyc = t_f + t_b
    if scheme == "wop":
        makespan, density = K * M * cyc, 1.0 / M
    elif scheme == "sp":
        makespan, density = steps * (B + M - 1) * cyc, B / (B + M - 1)
    elif scheme in ("ap", "pipedream"):
        makespan, density = (K + M - 1) * cyc, K / (K + M - 1)
    else:
        raise ValueError(f"scheme={scheme!r} is unknown: use one of wop, sp, ap, pipedream")
    wop_makespan = K * M * cyc
    return {
        "makespan": makespan,
        "density": density,
        "speedup_over_wop": wop_makespan / makespan if makespan else float("nan"),
    }
