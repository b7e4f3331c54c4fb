"""Delay compensation for the asynchronous pipeline without weight copies.

PipeMare's learning-rate rescheduling (Yang et al., "PipeMare: Asynchronous Pipeline Parallel
DNN Training", MLSys 2021, arXiv 1910.05124, technique T1): stage i, whose gradients are
``delay_i`` of its own updates stale, trains with

    lr_{k,i} = lr_k * max(1, delay_i) ** (-p_k),      p_k = 1 - min(k / K, 1)

where k counts the stage's updates and K (``warmup_steps``) is the warm-up length: at the start
the step is divided by the delay (delayed gradient descent on a quadratic is stable only for
steps below about pi / (2 (2 delay + 1)), i.e. the usable step shrinks like 1 / delay), and the
exponent decays linearly to 0, after which every stage runs the base schedule. It needs one
scalar per stage: no weight copy, no velocity buffer. (PipeMare's second technique, discrepancy
correction, extrapolates the backward weights from a weight-sized velocity buffer; it is not
offered here, see docs/physics.md.) The exponent schedule is reconstructed from the paper's
description; its exact constants were not checked against the paper's full text.

In AP (1F1B without stashing) the forward of stage s (counted from 0) of M runs ``M - 1 - s``
updates before its backward: that is the delay. The factor multiplies the stage's whole rate
(analog update, and for Tiki-Taka both eta_A and eta_T, plus the stage's digital parameters,
which are read live in the same way).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from torch import nn

from analogpipe.errors import check
from analogpipe.optim.analog_sgd import AnalogSGD

__all__ = ["DELAY_COMPENSATIONS", "PipeMareSGD", "make_stage_optimizer", "pipemare_factor",
           "stage_delay"]

DELAY_COMPENSATIONS = ("none", "pipemare")
DELAYED_SCHEMES = ("ap", "pipedream")


def stage_delay(scheme: str, num_stages: int, stage: int) -> int:
    """Updates between a micro-batch's forward and backward at `stage` (0-based) of a scheme:
    M - 1 - stage for ap / pipedream (1F1B), 0 for the flushed schemes."""
    check(0 <= stage < num_stages, "stage", stage, f"an index in [0, {num_stages - 1}]")
    return num_stages - 1 - stage if scheme in DELAYED_SCHEMES else 0


def pipemare_factor(delay: int, step: int, warmup_steps: int) -> float:
    """max(1, delay) ** -(1 - min(step / warmup_steps, 1)); 1 when warmup_steps is 0."""
    check(delay >= 0, "delay", delay, "an integer >= 0")
    check(warmup_steps >= 0, "pipemare warmup", warmup_steps, "an integer >= 0")
    if warmup_steps == 0:
        return 1.0
    p = 1.0 - min(step / warmup_steps, 1.0)
    return float(max(1, delay)) ** -p


class PipeMareSGD(AnalogSGD):
    """AnalogSGD whose rate follows PipeMare's per-stage rescheduling.

    delay:        the stage's staleness in its own updates (``stage_delay``).
    warmup_steps: K, in updates of the stage.
    The optimizer counts its steps; `state_dict` stores the count, so a resume continues the
    schedule exactly.
    """

    def __init__(self, model: nn.Module | Iterable[nn.Module], lr: float, *, delay: int,
                 warmup_steps: int, momentum: float = 0.0, weight_decay: float = 0.0,
                 dampening: float = 0.0) -> None:
        super().__init__(model, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         dampening=dampening)
        check(isinstance(delay, int) and delay >= 0, "delay", delay, "an integer >= 0")
        check(isinstance(warmup_steps, int) and warmup_steps >= 0, "pipemare warmup steps",
              warmup_steps, "an integer >= 0")
        self.delay, self.warmup_steps = delay, warmup_steps
        self.steps = 0

    @property
    def factor(self) -> float:
        """The factor the next step applies."""
        return pipemare_factor(self.delay, self.steps, self.warmup_steps)

    def step(self, closure: Any = None, count: int | None = None) -> Any:  # type: ignore[override]
        """AnalogSGD.step with every group's lr times the current PipeMare factor."""
        factor = self.factor
        bases = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * factor
        try:
            loss = super().step(closure, count=count)
        finally:
            for g, base in zip(self.param_groups, bases):
                g["lr"] = base
        self.steps += 1
        return loss

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pipemare_steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps = int(state["pipemare_steps"])


def make_stage_optimizer(stage: nn.Module, *, scheme: str, num_stages: int, index: int,
                         lr: float, momentum: float, weight_decay: float,
                         delay_compensation: str, warmup_steps: int) -> AnalogSGD:
    """The optimizer of one pipeline stage for a delay-compensation setting."""
    check(delay_compensation in DELAY_COMPENSATIONS, "delay_compensation", delay_compensation,
          f"one of {DELAY_COMPENSATIONS}")
    if delay_compensation == "none":
        return AnalogSGD(stage, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return PipeMareSGD(stage, lr=lr, momentum=momentum, weight_decay=weight_decay,
                       delay=stage_delay(scheme, num_stages, index),
                       warmup_steps=max(0, int(math.ceil(warmup_steps))))
