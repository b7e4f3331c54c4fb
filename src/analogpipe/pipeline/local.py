"""The single-process pipeline executor: interprets a Schedule on stage modules.

Every stage is an `nn.Module` with its own `AnalogSGD`. Actions run in `execution_order`:

- F(s, k): run stage s on micro-batch k's input (the data, or stage s-1's output detached into
  a leaf, exactly what a receive would give) with the weights the stage holds *now*;
- B(s, k): backpropagate micro-batch k through stage s from the loss (last stage) or from the
  gradient stage s+1 produced for its input; analog layers read their conductances *now* and
  stash their update;
- U(s, mbs): stage s applies the stashed updates of those micro-batches (one AnalogSGD step).

A stage may return a tensor or a tuple of tensors (e.g. a skip connection across a stage
boundary); the next stage receives exactly that value (as one argument, as inside an
`nn.Sequential`), with every floating-point tensor detached into its own leaf, and its
backward sends back one gradient per tensor (None where there is none).

Which weight version a forward sees is therefore not a setting: it emerges from where the
updates sit in each stage's action list. In the asynchronous 1F1B schedule the forward of
micro-batch k at stage s runs after max(0, k-(M-1-s)) updates and its backward after k, the
paper's staleness M - m. No weight copies are kept for that: as on hardware, there is one
array per stage and activations are stashed digitally. Only PipeDream-style weight stashing
(`schedule.weight_stashing`, a digital reference) keeps copies, one per micro-batch in flight
on the stage (at most M - s); those copies are simulation bookkeeping standing in for the extra
memory such a system would need, not something an analog accelerator could do cheaply.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from analogpipe.optim import AnalogSGD
from analogpipe.pipeline.schedule import Kind, Schedule, execution_order
from analogpipe.tiles.tile import AnalogTile

Activation = Tensor | tuple[Tensor, ...]  # what a stage returns and the next one takes
BatchFn = Callable[[int], tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]
RecordHook = Callable[[int, "MicrobatchRecord"], None]


class DivergenceError(FloatingPointError):
    """The loss became NaN or infinite."""


@dataclass
class MicrobatchRecord:
    loss: float = math.nan  # mean loss of the micro-batch (unscaled)
    correct: int = 0  # classification: number of arg-max hits
    count: int = 0


@dataclass
class PipelineRun:
    """What one interpretation of a schedule produced."""

    records: dict[int, MicrobatchRecord] = field(default_factory=dict)
    # (stage, micro-batch) -> (updates applied on the stage before its F, before its B)
    versions: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    peak_in_flight: list[int] = field(default_factory=list)
    # weight copies held per stage at once (PipeDream stashing only; 0 for AP: no copies)
    peak_weight_copies: list[int] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return [self.records[k].loss for k in sorted(self.records)]

    def staleness(self, stage: int) -> dict[int, int]:
        """Histogram {backward_version - forward_version: count} for one stage."""
        hist: dict[int, int] = {}
        for (s, _), (vf, vb) in self.versions.items():
            if s == stage:
                hist[vb - vf] = hist.get(vb - vf, 0) + 1
        return hist


def _leaf(t: Tensor) -> Tensor:
    t = t.detach()
    return t.requires_grad_() if t.is_floating_point() or t.is_complex() else t


def as_received(out: Activation) -> Activation:
    """A stage output as the next stage receives it: detached leaves (floating-point tensors
    require grad), a tuple kept a tuple."""
    if isinstance(out, tuple):
        return tuple(_leaf(t) for t in out)
    return out.detach().requires_grad_()


def input_grad(inp: Activation) -> Tensor | tuple[Tensor | None, ...] | None:
    """The gradient a stage's backward produced for its (received) input, same structure."""
    if isinstance(inp, tuple):
        return tuple(t.grad if t.requires_grad else None for t in inp)
    return inp.grad


def structure(value: Activation) -> tuple:
    """Shapes of a tensor, or of each part of a tuple (None for a missing gradient part)."""
    if isinstance(value, tuple):
        return tuple(None if t is None else tuple(t.shape) for t in value)
    return tuple(value.shape)


def backward_through(out: Activation, grad: Tensor | tuple | None) -> None:
    """Backpropagate a stage's output (a tensor, or a tuple with one gradient per part);
    a first stage without weights (a flatten) has no graph."""
    if not isinstance(out, tuple):
        if out.requires_grad:
            out.backward(grad)
        return
    grads = grad if isinstance(grad, tuple) else (None,) * len(out)
    pairs = [(o, g) for o, g in zip(out, grads)
             if isinstance(o, Tensor) and o.requires_grad and g is not None]
    if pairs:
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])


def record_loss(loss_fn: LossFn, out: Tensor, y: Tensor, k: int, group: int,
                records: dict[int, MicrobatchRecord], where: str = "") -> Tensor:
    """The last stage's loss of micro-batch k: record it, scale it for its update.

    An update averages the gradient over the `group` micro-batches it covers, so the loss
    that is backpropagated is divided by the group size.
    """
    loss = loss_fn(out, y)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise DivergenceError(f"loss of micro-batch {k} is {value}{where}")
    rec = MicrobatchRecord(loss=value, count=int(y.shape[0]))
    if isinstance(out, Tensor) and out.dim() == 2 and y.dtype == torch.int64:
        rec.correct = int((out.detach().argmax(1) == y).sum())
    records[k] = rec
    return loss / group if group != 1 else loss


def stage_weights(stage: nn.Module) -> list[Tensor]:
    """The tensors a stage's weight version consists of: conductances and digital parameters."""
    tiles = [m.weight for m in stage.modules() if isinstance(m, AnalogTile)]
    return tiles + [p.data for p in stage.parameters()]


def backward_on_version(stage: nn.Module, version: list[Tensor], out: Activation,
                        grad: Tensor | tuple | None) -> None:
    """Backward with the weights of the micro-batch's own forward (PipeDream stashing):
    swap the stashed version in, backpropagate, swap the current weights back."""
    live = stage_weights(stage)
    current = [t.clone() for t in live]
    with torch.no_grad():
        for t, v in zip(live, version):
            t.copy_(v)
    backward_through(out, grad)
    with torch.no_grad():
        for t, c in zip(live, current):
            t.copy_(c)


def update_group_sizes(schedule: Schedule) -> dict[int, int]:
    """Micro-batch k -> number of micro-batches its update averages over (last stage's U)."""
    sizes: dict[int, int] = {}
    for a in schedule.per_stage[-1]:
        if a.kind is Kind.UPDATE:
            for k in a.mbs:
                sizes[k] = len(a.mbs)
    return sizes


class LocalPipeline:
    """Stage modules + one optimizer per stage, driven by schedules."""

    def __init__(self, stages: Sequence[nn.Module], lr: float, loss_fn: LossFn,
                 momentum: float = 0.0, weight_decay: float = 0.0,
                 optimizers: Sequence[AnalogSGD] | None = None) -> None:
        self.stages = list(stages)
        self.loss_fn = loss_fn
        self.optimizers = list(optimizers) if optimizers is not None else [
            AnalogSGD(m, lr=lr, momentum=momentum, weight_decay=weight_decay)
            for m in self.stages
        ]
        self.version = [0] * len(self.stages)  # updates applied per stage (persist across runs)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers:
            opt.lr = lr

    def run(self, schedule: Schedule, batch: BatchFn, offset: int = 0,
            on_record: RecordHook | None = None) -> PipelineRun:
        """Interpret `schedule`; micro-batch k of the schedule is `batch(offset + k)`.

        `on_record(k, record)` is called when micro-batch k's loss is known (progress bars,
        divergence checks); an exception it raises stops the run.
        """
        M = self.num_stages
        if schedule.num_stages != M:
            raise ValueError(f"schedule has {schedule.num_stages} stages but the pipeline has {M}")
        group = update_group_sizes(schedule)
        run = PipelineRun(peak_in_flight=[0] * M, peak_weight_copies=[0] * M)
        inputs: dict[tuple[int, int], Activation] = {}  # leaf inputs of stage s for mb k
        outputs: dict[tuple[int, int], Activation] = {}  # stage outputs or scaled losses
        targets: dict[int, Tensor] = {}
        stash: dict[tuple[int, int], list[Tensor]] = {}  # PipeDream weight copies
        pending: list[deque[int]] = [deque() for _ in range(M)]  # backwards awaiting update
        in_flight = [0] * M

        for a in execution_order(schedule):
            s, k = a.stage, a.mb
            if a.kind is Kind.FORWARD:
                if s == 0:
                    x, y = batch(offset + k)
                    targets[k] = y
                    inp = x
                else:
                    inp = as_received(outputs[(s - 1, k)])
                    inputs[(s, k)] = inp
                if schedule.weight_stashing:
                    stash[(s, k)] = [t.detach().clone() for t in stage_weights(self.stages[s])]
                    held = sum(1 for (st, _) in stash if st == s)
                    run.peak_weight_copies[s] = max(run.peak_weight_copies[s], held)
                out = self.stages[s](inp)
                if s == M - 1:
                    out = record_loss(self.loss_fn, out, targets.pop(k), k, group.get(k, 1),
                                      run.records)
                    if on_record is not None:
                        on_record(k, run.records[k])
                outputs[(s, k)] = out
                run.versions[(s, k)] = (self.version[s], -1)
                in_flight[s] += 1
                run.peak_in_flight[s] = max(run.peak_in_flight[s], in_flight[s])
            elif a.kind is Kind.BACKWARD:
                out = outputs.pop((s, k))
                grad = None if s == M - 1 else input_grad(inputs.pop((s + 1, k)))
                if schedule.weight_stashing:
                    backward_on_version(self.stages[s], stash.pop((s, k)), out, grad)
                else:
                    backward_through(out, grad)
                self.optimizers[s].end_microbatch()  # all uses of a shared layer: one entry
                vf, _ = run.versions[(s, k)]
                run.versions[(s, k)] = (vf, self.version[s])
                pending[s].append(k)
                in_flight[s] -= 1
            elif a.kind is Kind.UPDATE:
                got = [pending[s].popleft() for _ in range(len(a.mbs)) if pending[s]]
                if tuple(got) != a.mbs:
                    raise RuntimeError(
                        f"update {a} must apply exactly the backwards done since the last "
                        f"update on stage {s}, in order; pending were {got}")
                self.optimizers[s].step(count=len(a.mbs))
                self.version[s] += 1
            # send/receive actions of a lowered schedule are no-ops in one process
        return run
