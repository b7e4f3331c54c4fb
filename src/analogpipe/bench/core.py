"""Group "core": one analog training step vs the same step in plain PyTorch.

Cases: a 512x512 linear layer at batch 1 and 64, and a CIFAR ResNet10 (3x32x32 inputs), each
in expected and pulsed update mode (`paper_config`). The analog model is
`convert_to_analog(model, config)` stepped by `AnalogSGD(lr=0.1)`; the baseline is the
unconverted model with `torch.optim.SGD(lr=0.1)`. One step = zero_grad, forward, mean
cross-entropy on random labels, backward, optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analogpipe.bench.harness import Row, median, register, time_pair
from analogpipe.models import resnet10
from analogpipe.nn import convert_to_analog
from analogpipe.optim import AnalogSGD
from analogpipe.presets import paper_config

LR = 0.1
TARGETS = {"expected": 1.5, "pulsed": 3.0}
LOSS_NOTE = ("mean CE over the batch on random labels (as in real training; keeps d and so "
             "the pulse trains short)")


@dataclass(frozen=True)
class Case:
    """A model builder, its input shape, the batch size, the timing budget."""

    name: str
    build: Callable[[], nn.Module]
    in_shape: tuple[int, ...]
    classes: int
    batch: int
    warmup: int
    repeats: int
    budget_s: float  # per (case, mode): stop repeating after this long


def cases(quick: bool) -> list[Case]:
    def linear() -> nn.Module:
        return nn.Sequential(nn.Linear(512, 512))  # convert_to_analog wants a container

    if quick:
        return [
            Case("linear512 b1", linear, (512,), 512, 1, 3, 15, 1.0),
            Case("linear512 b64", linear, (512,), 512, 64, 2, 9, 1.0),
            Case("resnet10 w8 b8", lambda: resnet10(num_classes=10, width=8), (3, 32, 32), 10,
                 8, 1, 3, 6.0),
        ]
    return [
        Case("linear512 b1", linear, (512,), 512, 1, 20, 200, 5.0),
        Case("linear512 b64", linear, (512,), 512, 64, 10, 60, 5.0),
        Case("resnet10 w16 b32", lambda: resnet10(num_classes=10, width=16), (3, 32, 32), 10,
             32, 1, 10, 25.0),
    ]


def make_step(model: nn.Module, opt, x: Tensor, y: Tensor) -> Callable[[], None]:
    """One training step closure (works for torch.optim.SGD and AnalogSGD)."""

    def step() -> None:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)  # reduction="mean"
        loss.backward()
        opt.step()

    return step


def build_pair(case: Case, mode: str, seed: int = 0):
    """(digital model, digital step, analog model, analog step) on the same batch."""
    torch.manual_seed(seed)
    digital = case.build().train()
    analog = convert_to_analog(digital, paper_config(update=mode), seed=seed).train()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((case.batch, *case.in_shape), generator=gen)
    y = torch.randint(0, case.classes, (case.batch,), generator=gen)
    d_step = make_step(digital, torch.optim.SGD(digital.parameters(), lr=LR), x, y)
    a_step = make_step(analog, AnalogSGD(analog, lr=LR), x, y)
    return digital, d_step, analog, a_step


@register("core")
def bench_core(quick: bool) -> list[Row]:
    """Analog vs digital training step, expected and pulsed mode."""
    rows = []
    for case in cases(quick):
        for mode in ("expected", "pulsed"):
            _, d_step, _, a_step = build_pair(case, mode)
            base, subj = time_pair(d_step, a_step, case.warmup, case.repeats, case.budget_s)
            rows.append(Row(
                group="core", case=f"{case.name} {mode}",
                baseline_name="torch", baseline_s=median(base),
                subject_name="analog", subject_s=median(subj),
                target=TARGETS[mode], repeats=len(subj),
                notes=f"paper_config(update=mode), SGD lr {LR}; {LOSS_NOTE}"))
    return rows
