"""The multi-process pipeline executor: one process per stage over torch.distributed P2P.

`DistributedPipeline` runs ONE stage (rank r = stage r) and interprets its own row of
`lower_with_comms(schedule)` in list order. Forward, backward and update do exactly what
`LocalPipeline` does for that stage, so with the same seed the two executors produce
bit-identical weights, losses and weight versions (SPEC section 4: "the multi-process executor
equals the single-process one"). That holds because everything a stage computes depends only
on its own action order, its own modules (tiles draw noise from per-tile, per-purpose
generators) and the bytes it receives, never on how the stages interleave in time. A model that
draws from torch's *global* RNG in its forward (nn.Dropout) would break the parity.

Communication (why it looks like this):

- every send is a `dist.isend` whose `Work` (and tensor) is kept until it completes, so a
  send never blocks and the classic two-ranks-in-blocking-send deadlock cannot happen; all
  outstanding sends are waited on at the end of `run` and before `close`;
- a receive is posted (`irecv` of the header) at the schedule's RF/RB action and waited on by
  the F/B that consumes it (gloo); nccl ignores tags and matches messages per peer in posting
  order, so there header and payload are received at the RF/RB action itself, in the order
  `lower_with_comms` made identical on both ends of each link (deadlock-free even when
  blocking). The nccl path is untested: one GPU cannot host two nccl ranks;
- every payload is preceded by a small int64 header (ndim, dtype code, dims, and which part
  of how many), so a peer that sends a different shape fails loudly instead of being
  truncated into a stale buffer (pytorch#113376); a gradient whose shape differs from the
  stage output it belongs to raises;
- a stage may pass a tuple of tensors (up to MAX_PARTS, e.g. a skip connection across the
  boundary): each part travels as its own header + payload, a missing gradient part as a
  header alone;
- tags encode micro-batch, part and message kind (activation/gradient, header/payload), so a
  mis-ordered message fails under gloo instead of being silently consumed.

At start-up (first `run`, or an explicit `check_shapes`) each rank tells the next one its
output shape (or the shapes of its tuple) and the next rank checks that its stage accepts it,
on a deep copy under `torch.no_grad`, with the global and tile RNG states saved and restored,
so that the check perturbs no generator, BatchNorm statistic or weight. A mismatch raises
`StageShapeError` on every rank, naming both stages and both shapes.

Failures: an exception on one rank (e.g. `DivergenceError` on the last stage) leaves its
peers blocked in a receive until the process-group timeout; the launcher (`launch_local` or
torchrun's agent) ends them. See `analogpipe.pipeline.launch`.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from analogpipe.optim import AnalogSGD
from analogpipe.pipeline.local import (
    Activation,
    BatchFn,
    LossFn,
    MicrobatchRecord,
    PipelineRun,
    as_received,
    backward_on_version,
    backward_through,
    input_grad,
    record_loss,
    stage_weights,
    structure,
    update_group_sizes,
)
from analogpipe.pipeline.schedule import Kind, Schedule, lower_with_comms
from analogpipe.tiles.tile import AnalogTile

__all__ = [
    "DistributedPipeline",
    "PipelineCommError",
    "StageShapeError",
    "StageStats",
    "init_process_group_from_env",
]

MAX_NDIM = 8
MAX_PARTS = 16  # tensors in one stage output tuple
# ndim, dtype code, dims (zero padded), parts (0: a bare tensor), part index, 1 if no payload
HEADER_LEN = 2 + MAX_NDIM + 3

_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
)
_DTYPE_CODE = {dt: i for i, dt in enumerate(_DTYPES)}

# message kinds, folded into the tag: tag = 4 * (MAX_PARTS * micro-batch + part) + kind
_ACT_HEADER, _ACT, _GRAD_HEADER, _GRAD = 0, 1, 2, 3
_CHECK_TAG = 2**30  # start-up shape check (beyond any realistic micro-batch count)


def _tag(k: int, part: int, kind: int) -> int:
    return 4 * (MAX_PARTS * k + part) + kind


class StageShapeError(ValueError):
    """Adjacent stages disagree on the activation shape (raised on every rank)."""


class PipelineCommError(RuntimeError):
    """A message between stages was not what the receiver expected (shape, dtype, header)."""


@dataclass
class _Received:
    value: Any  # eager (nccl) receive: the value itself


@dataclass
class StageStats:
    """Where one stage spent the wall time of a `run` (seconds).

    compute_s: inside F/B/U (and loss); wait_s: blocked on receives (the pipeline bubble plus
    transfer); send_s: posting sends and waiting for them to complete at the end.
    """

    rank: int
    wall_s: float = 0.0
    compute_s: float = 0.0
    wait_s: float = 0.0
    send_s: float = 0.0
    forwards: int = 0
    backwards: int = 0
    updates: int = 0

    @property
    def busy_fraction(self) -> float:
        return self.compute_s / self.wall_s if self.wall_s > 0 else math.nan


def init_process_group_from_env(backend: str | None = None, timeout_s: float = 30.0) -> None:
    """`dist.init_process_group` from RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT.

    backend None picks nccl when CUDA is usable and LOCAL_RANK names a device, else gloo. A
    finite `timeout_s` bounds every blocking operation, so a dead peer ends a run with an error
    instead of a hang. No-op if a group is already initialised.
    """
    if dist.is_initialized():
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"init_process_group_from_env: environment lacks {', '.join(missing)}; start the "
            "workers with torchrun or analogpipe.pipeline.launch.launch_local")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and "LOCAL_RANK" in os.environ else "gloo"
    if backend == "gloo":
        _prefer_loopback_for_local_runs()
    dist.init_process_group(backend=backend, rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]),
                            timeout=datetime.timedelta(seconds=timeout_s))


def _prefer_loopback_for_local_runs() -> None:
    """Single-host runs on 127.0.0.1: make gloo use the loopback interface too (not whatever
    interface the host name resolves to)."""
    if os.environ.get("MASTER_ADDR") in ("127.0.0.1", "localhost") and \
            "GLOO_SOCKET_IFNAME" not in os.environ:
        try:
            import socket

            names = [n for _, n in socket.if_nameindex() if n == "lo" or n.startswith("lo")]
        except (OSError, AttributeError):
            names = []
        if names:
            os.environ["GLOO_SOCKET_IFNAME"] = names[0]


# ------------------------------------------------------------------------------------------
def _header(t: Tensor | None, parts: int = 0, part: int = 0) -> Tensor:
    """Header of one message: a tensor (or, t None, a missing gradient part of a tuple)."""
    h = torch.zeros(HEADER_LEN, dtype=torch.int64)
    h[-3], h[-2] = parts, part
    if t is None:
        h[-1] = 1
        return h
    if t.dim() > MAX_NDIM:
        raise PipelineCommError(f"tensor of shape {tuple(t.shape)} has {t.dim()} dims; the "
                                f"pipeline sends at most {MAX_NDIM}")
    if t.dtype not in _DTYPE_CODE:
        raise PipelineCommError(f"tensor dtype {t.dtype} cannot be sent; supported: "
                                f"{', '.join(str(d) for d in _DTYPES)}")
    h[0] = t.dim()
    h[1] = _DTYPE_CODE[t.dtype]
    if t.dim():
        h[2:2 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
    return h


def _parse_header(h: Tensor, what: str) -> tuple[tuple[int, ...], torch.dtype]:
    vals = [int(v) for v in h.cpu().tolist()]
    ndim, code = vals[0], vals[1]
    if not 0 <= ndim <= MAX_NDIM or not 0 <= code < len(_DTYPES) or \
            any(d < 0 for d in vals[2:2 + ndim]):
        raise PipelineCommError(f"{what}: corrupt message header {vals} (expected ndim in "
                                f"0..{MAX_NDIM}, a dtype code < {len(_DTYPES)}, dims >= 0)")
    return tuple(vals[2:2 + ndim]), _DTYPES[code]


def _parse_parts(h: Tensor, what: str) -> tuple[int, int, bool]:
    """(parts, part index, no payload) of a header; parts 0 means a bare tensor."""
    parts, part, empty = (int(v) for v in h[-3:].cpu().tolist())
    if not 0 <= parts <= MAX_PARTS or not 0 <= part < max(parts, 1) or empty not in (0, 1):
        raise PipelineCommError(f"{what}: corrupt message header (part {part} of {parts}, "
                                f"flag {empty}; at most {MAX_PARTS} parts)")
    return parts, part, bool(empty)


def _zeros_like_spec(spec: Any, device: torch.device) -> Activation:
    """Zeros with the structure of a shape spec: (shape, dtype) or ("tuple", [(shape, dtype)])."""
    if spec[0] == "tuple":
        return tuple(torch.zeros(sh, dtype=dt, device=device) for sh, dt in spec[1])
    return torch.zeros(spec[0], dtype=spec[1], device=device)


def _spec_of(value: Any) -> Any:
    if isinstance(value, tuple):
        if not all(isinstance(t, Tensor) for t in value):
            raise TypeError("a stage output tuple must hold tensors only, got "
                            f"({', '.join(type(t).__name__ for t in value)})")
        return ("tuple", [(tuple(t.shape), t.dtype) for t in value])
    if not isinstance(value, Tensor):
        raise TypeError(f"a stage must return a tensor or a tuple of tensors, not "
                        f"{type(value).__name__}")
    return (tuple(value.shape), value.dtype)


def _shape_text(st: tuple) -> str:
    """A `structure` in words: [6, 8], or ([6, 8], [6, 12]) for a tuple."""
    if st and (st[0] is None or isinstance(st[0], tuple)):
        return "(" + ", ".join("none" if p is None else str(list(p)) for p in st) + ")"
    return str(list(st))


def _spec_shapes(spec: Any) -> Any:
    """The shape (or tuple of shapes) of a spec; None for None."""
    if spec is None:
        return None
    if spec[0] == "tuple":
        return tuple(tuple(sh) for sh, _ in spec[1])
    return tuple(spec[0])


def _spec_text(spec: Any) -> str:
    if spec[0] == "tuple":
        return "a tuple of shapes (" + ", ".join(str(list(sh)) for sh, _ in spec[1]) + ")"
    return f"shape {list(spec[0])}"


def _module_device(m: nn.Module) -> torch.device:
    for t in m.parameters():
        return t.device
    for t in m.buffers():
        return t.device
    return torch.device("cpu")


def _first_layer_expectation(m: nn.Module) -> str:
    """What the stage's first layer wants, in words (for the shape-mismatch message)."""
    for name, sub in m.named_modules():
        if sub is m:
            continue
        for attr, form in (("in_features", "[..., {}]"), ("in_channels", "[N, {}, ...]"),
                           ("num_features", "[N, {}, ...]")):
            v = getattr(sub, attr, None)
            if isinstance(v, int):
                return (f"its first layer {name!r} ({type(sub).__name__}) expects "
                        f"{form.format(v)} ({attr}={v})")
    return "its first layer's expectation is unknown"


def _tile_generator_states(m: nn.Module) -> list[tuple[dict, dict[str, Tensor]]]:
    out = []
    for t in m.modules():
        if isinstance(t, AnalogTile):
            gens = t._generators
            out.append((gens, {k: g.get_state() for k, g in gens.items()}))
    return out


# ------------------------------------------------------------------------------------------
class DistributedPipeline:
    """One pipeline stage in its own process, driven by the same schedules as `LocalPipeline`.

    Every rank constructs one with its own stage module (rank r = stage r of world_size), the
    same lr / momentum / weight_decay and loss function. The process group must already be
    initialised (`init_process_group_from_env`, `launch.init_from_torchrun`, or inside a
    `launch.launch_local` worker). All public methods except `close` are collective: every
    rank must call them in the same order.

    example_input_shape: the shape of one micro-batch input of stage 0 (only rank 0 reads
    it); when given, the start-up shape check uses a zero tensor of that shape instead of
    calling `batch(offset)` on the first run.
    """

    def __init__(self, stage: nn.Module, rank: int, world_size: int, lr: float,
                 loss_fn: LossFn, momentum: float = 0.0, weight_decay: float = 0.0,
                 example_input_shape: tuple[int, ...] | None = None,
                 optimizer: AnalogSGD | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError(
                f"DistributedPipeline(rank={rank}): torch.distributed is not initialised; "
                "call init_process_group_from_env() or run inside launch_local/torchrun")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is invalid for world_size={world_size}: "
                             f"use 0..{world_size - 1}")
        gsize = dist.get_world_size(group)
        grank = dist.get_rank(group)
        if gsize != world_size or grank != rank:
            raise ValueError(f"DistributedPipeline(rank={rank}, world_size={world_size}) but "
                             f"the process group says rank {grank} of {gsize}: they must match")
        self.stage = stage
        self.rank, self.world_size = rank, world_size
        self.loss_fn = loss_fn
        self.group = group
        self.optimizer = optimizer if optimizer is not None else AnalogSGD(
            stage, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.version = 0  # updates applied on this stage (persists across runs)
        self.device = _module_device(stage)
        backend = dist.get_backend(group)
        if self.device.type == "cuda" and backend != "nccl":
            raise RuntimeError(f"rank {rank}: stage module is on {self.device} but the process "
                               f"group backend is {backend}; use nccl for CUDA stages")
        # gloo communicates CPU tensors; nccl device tensors
        self.comm_device = self.device if backend == "nccl" else torch.device("cpu")
        self.eager_recv = backend == "nccl"
        self.example_input_shape = (tuple(example_input_shape)
                                    if example_input_shape is not None else None)
        self.shapes_checked = False
        self.last_stats: list[StageStats] = []
        self._sends: list[tuple[Any, Tensor]] = []
        self._lowered: tuple[Schedule, Schedule] | None = None

    # -- facts ------------------------------------------------------------------------------
    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.world_size - 1

    def set_lr(self, lr: float) -> None:
        self.optimizer.lr = lr

    # -- point to point -----------------------------------------------------------------------
    def _peer(self, offset: int) -> int:
        return dist.get_global_rank(self.group, self.rank + offset) if self.group else \
            self.rank + offset

    def _isend(self, t: Tensor, peer_offset: int, tag: int) -> None:
        t = t.detach().to(self.comm_device).contiguous()
        work = dist.isend(t, self._peer(peer_offset), group=self.group, tag=tag)
        self._sends.append((work, t))

    def _send_value(self, value: Any, peer_offset: int, k: int, kind_header: int,
                    kind: int) -> None:
        """Send a tensor, or a tuple part by part (None: a header saying "no gradient")."""
        parts = value if isinstance(value, tuple) else (value,)
        n = len(parts) if isinstance(value, tuple) else 0
        if n > MAX_PARTS:
            raise PipelineCommError(f"rank {self.rank}: a stage output tuple of {n} tensors; "
                                    f"the pipeline sends at most {MAX_PARTS}")
        for i, t in enumerate(parts):
            self._isend(_header(t, n, i), peer_offset, _tag(k, i, kind_header))
            if t is not None:
                self._isend(t, peer_offset, _tag(k, i, kind))
        if len(self._sends) > 64:  # free completed sends so memory stays bounded
            self._sends = [(w, x) for w, x in self._sends if not w.is_completed()]

    def _post_header_recv(self, peer_offset: int, tag: int) -> tuple[Any, Tensor]:
        buf = torch.empty(HEADER_LEN, dtype=torch.int64, device=self.comm_device)
        return dist.irecv(buf, self._peer(peer_offset), group=self.group, tag=tag), buf

    def _post_recv(self, peer_offset: int, k: int, kind_header: int, kind: int,
                   what: str) -> Any:
        """At an RF/RB action: post the first header's irecv (gloo: tags keep messages
        apart, so the payload can be received later), or with nccl, which ignores tags and
        matches messages per peer in posting order, receive everything right here, in the
        order `lower_with_comms` made identical on both ends of the link."""
        posted = self._post_header_recv(peer_offset, _tag(k, 0, kind_header))
        if self.eager_recv:
            return _Received(self._finish_recv(posted, peer_offset, k, kind_header, kind, what))
        return posted

    def _recv_part(self, hbuf: Tensor, peer_offset: int, tag: int,
                   what: str) -> tuple[int, Tensor | None]:
        shape, dtype = _parse_header(hbuf, what)
        parts, _, empty = _parse_parts(hbuf, what)
        if empty:
            return parts, None
        buf = torch.empty(shape, dtype=dtype, device=self.comm_device)
        dist.irecv(buf, self._peer(peer_offset), group=self.group, tag=tag).wait()
        return parts, buf.to(self.device)

    def _finish_recv(self, posted: Any, peer_offset: int, k: int, kind_header: int, kind: int,
                     what: str) -> Any:
        if isinstance(posted, _Received):  # already received (eager mode)
            return posted.value
        work, hbuf = posted
        work.wait()
        what = f"rank {self.rank}: {what}"
        parts, first = self._recv_part(hbuf, peer_offset, _tag(k, 0, kind), what)
        if parts == 0:
            if first is None:
                raise PipelineCommError(f"{what}: a header without payload for a bare tensor")
            return first
        values = [first]
        for i in range(1, parts):
            work, h = self._post_header_recv(peer_offset, _tag(k, i, kind_header))
            work.wait()
            got, t = self._recv_part(h, peer_offset, _tag(k, i, kind), what)
            if got != parts or _parse_parts(h, what)[1] != i:
                raise PipelineCommError(f"{what}: part {i} of a {parts}-tuple arrived with "
                                        f"header {h.tolist()}")
            values.append(t)
        return tuple(values)

    def wait_sends(self) -> None:
        """Wait for every outstanding send (before shutdown or reusing a buffer)."""
        for work, _ in self._sends:
            work.wait()
        self._sends.clear()

    def close(self) -> None:
        """Wait for outstanding sends; the process group stays (it is the caller's)."""
        self.wait_sends()

    # -- start-up shape check ------------------------------------------------------------------
    def check_shapes(self, example_input: Tensor | None = None) -> list[Any]:
        """Verify that every stage accepts the previous stage's output; collective.

        Rank 0 runs its stage on `example_input` (one micro-batch; other ranks pass None) and
        sends its output's shape on (of every part, for a tuple); each rank runs a deep copy
        of its stage on zeros of the received structure. Nothing observable changes: the copy
        runs under no_grad in eval mode, and the global RNG and every tile generator are
        restored. Returns the input shape of every stage (and the last stage's output shape)
        on every rank, a tuple of shapes where a stage passes a tuple; raises
        `StageShapeError` on every rank if any stage rejects its input.
        """
        error: str | None = None
        in_spec: Any = None
        if self.is_first:
            if example_input is None:
                if self.example_input_shape is None:
                    error = ("rank 0: check_shapes needs an example micro-batch input on rank 0 "
                             "(or example_input_shape in the constructor)")
                else:
                    in_spec = (self.example_input_shape, torch.float32)
            else:
                in_spec = _spec_of(example_input)
        else:
            box: list[Any] = [None]
            dist.recv_object_list(box, self._peer(-1), group=self.group,
                                  device=self.comm_device)
            in_spec = box[0]  # None: upstream already failed
        out_spec: Any = None
        if in_spec is not None and error is None:
            try:
                out_spec = _spec_of(self._dry_run(in_spec))
            except Exception as exc:  # the stage rejects what the previous one produces
                src = "the example input" if self.is_first else \
                    f"stage {self.rank - 1}'s output"
                error = (f"stage {self.rank} (rank {self.rank}) cannot take {src} of "
                         f"{_spec_text(in_spec)}: {_first_layer_expectation(self.stage)}; "
                         f"the stage raised {type(exc).__name__}: {exc}")
                if not self.is_first:
                    out_words = _spec_text(in_spec).replace("shape ", "", 1)
                    error = f"stage shape mismatch: stage {self.rank - 1} outputs " \
                        f"{out_words} but " + error
        if not self.is_last:
            dist.send_object_list([out_spec], self._peer(1), group=self.group,
                                  device=self.comm_device)
        reports: list[Any] = [None] * self.world_size
        dist.all_gather_object(reports, (error, _spec_shapes(in_spec), _spec_shapes(out_spec)),
                               group=self.group)
        errors = [r[0] for r in reports if r[0]]
        if errors:
            raise StageShapeError("; ".join(errors))
        self.shapes_checked = True
        return [r[1] for r in reports] + [reports[-1][2]]

    def _dry_run(self, spec: Any) -> Activation:
        saved = _tile_generator_states(self.stage)
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                probe = copy.deepcopy(self.stage)
                probe.eval()
                return probe(_zeros_like_spec(spec, self.device))
        finally:
            for gens, states in saved:  # belt and braces: deepcopy already separates them
                for k, s in states.items():
                    if k in gens:
                        gens[k].set_state(s)

    # -- the interpreter -------------------------------------------------------------------
    def _lower(self, schedule: Schedule) -> Schedule:
        if self._lowered is not None and self._lowered[0] is schedule:
            return self._lowered[1]
        lowered = schedule if schedule.is_lowered else lower_with_comms(schedule)
        self._lowered = (schedule, lowered)
        return lowered

    def run(self, schedule: Schedule, batch: BatchFn, offset: int = 0) -> PipelineRun:
        """Interpret this rank's row of the lowered `schedule`; collective.

        Micro-batch k of the schedule is `batch(offset + k)`: rank 0 uses its x, the last rank
        its y. Returns the same complete `PipelineRun` on every rank (records from the last
        stage, versions and peak in-flight counts of every stage); per-stage timings are left
        in `last_stats`.
        """
        M, s = self.world_size, self.rank
        if schedule.num_stages != M:
            raise ValueError(f"rank {s}: schedule {schedule.scheme!r} has "
                             f"{schedule.num_stages} stages but the pipeline has {M} ranks")
        lowered = self._lower(schedule)
        if not self.shapes_checked:
            example = None
            if self.is_first and self.example_input_shape is None:
                example = batch(offset)[0]
            self.check_shapes(example)
        group = update_group_sizes(schedule)
        stats = StageStats(rank=s)
        t_start = time.perf_counter()
        records: dict[int, MicrobatchRecord] = {}
        versions: dict[tuple[int, int], tuple[int, int]] = {}
        peak = 0
        in_flight = 0
        inputs: dict[int, Activation] = {}  # leaf inputs (ranks > 0)
        outputs: dict[int, Activation] = {}  # stage outputs (graph) or scaled losses
        out_shapes: dict[int, tuple] = {}
        targets: dict[int, Tensor] = {}
        posted_f: dict[int, Any] = {}  # header irecv in flight, or (nccl) the tensor
        posted_b: dict[int, Any] = {}
        stash: dict[int, list[Tensor]] = {}
        pending: deque[int] = deque()
        clock = time.perf_counter

        for a in lowered.per_stage[s]:
            k = a.mb
            kind = a.kind
            if kind is Kind.RECV_F:
                t0 = clock()
                posted_f[k] = self._post_recv(-1, k, _ACT_HEADER, _ACT,
                                              f"activation of micro-batch {k} from stage {s - 1}")
                stats.wait_s += clock() - t0
            elif kind is Kind.RECV_B:
                t0 = clock()
                posted_b[k] = self._post_recv(1, k, _GRAD_HEADER, _GRAD,
                                              f"gradient of micro-batch {k} from stage {s + 1}")
                stats.wait_s += clock() - t0
            elif kind is Kind.FORWARD:
                if self.is_first:
                    t0 = clock()
                    x, y = batch(offset + k)
                    if self.is_last:
                        targets[k] = y
                    inp = x.to(self.device)
                else:
                    if k not in posted_f:  # a hand-lowered schedule without RF
                        posted_f[k] = self._post_header_recv(-1, _tag(k, 0, _ACT_HEADER))
                    t0 = clock()
                    inp = self._finish_recv(posted_f.pop(k), -1, k, _ACT_HEADER, _ACT,
                                            f"activation of micro-batch {k} from stage {s - 1}")
                    t1 = clock()
                    stats.wait_s += t1 - t0
                    t0 = t1
                    inp = as_received(inp)
                    inputs[k] = inp
                    if self.is_last:
                        targets[k] = batch(offset + k)[1]
                if lowered.weight_stashing:
                    stash[k] = [t.detach().clone() for t in stage_weights(self.stage)]
                out = self.stage(inp)
                if self.is_last:
                    out = record_loss(self.loss_fn, out, targets.pop(k).to(out.device), k,
                                      group.get(k, 1), records, where=f" (rank {self.rank})")
                else:
                    out_shapes[k] = structure(out)
                outputs[k] = out
                versions[(s, k)] = (self.version, -1)
                in_flight += 1
                peak = max(peak, in_flight)
                stats.compute_s += clock() - t0
                stats.forwards += 1
            elif kind is Kind.SEND_F:
                t0 = clock()
                out = outputs[k]
                self._send_value(tuple(t.detach() for t in out) if isinstance(out, tuple)
                                 else out.detach(), 1, k, _ACT_HEADER, _ACT)
                stats.send_s += clock() - t0
            elif kind is Kind.BACKWARD:
                grad = None
                t0 = clock()
                if not self.is_last:
                    if k not in posted_b:
                        posted_b[k] = self._post_header_recv(1, _tag(k, 0, _GRAD_HEADER))
                    grad = self._finish_recv(posted_b.pop(k), 1, k, _GRAD_HEADER, _GRAD,
                                             f"gradient of micro-batch {k} from stage {s + 1}")
                    expect = out_shapes.pop(k)
                    got = structure(grad)
                    if isinstance(expect[0] if expect else None, tuple) or \
                            isinstance(grad, tuple):
                        ok = isinstance(grad, tuple) and len(got) == len(expect) and all(
                            g is None or g == e for g, e in zip(got, expect))
                    else:
                        ok = got == expect
                    if not ok:
                        raise PipelineCommError(
                            f"rank {s}: stage {s + 1} sent a gradient of shape "
                            f"{_shape_text(got)} for micro-batch {k}, but stage {s}'s output "
                            f"has shape {_shape_text(expect)}: they must be equal")
                    t1 = clock()
                    stats.wait_s += t1 - t0
                    t0 = t1
                out = outputs.pop(k)
                if lowered.weight_stashing:
                    backward_on_version(self.stage, stash.pop(k), out, grad)
                else:
                    backward_through(out, grad)
                self.optimizer.end_microbatch()  # all uses of a shared layer: one entry
                vf, _ = versions[(s, k)]
                versions[(s, k)] = (vf, self.version)
                pending.append(k)
                in_flight -= 1
                stats.compute_s += clock() - t0
                stats.backwards += 1
            elif kind is Kind.SEND_B:
                t0 = clock()
                grad_in = input_grad(inputs.pop(k))
                parts = grad_in if isinstance(grad_in, tuple) else (grad_in,)
                if all(g is None for g in parts):
                    raise RuntimeError(
                        f"rank {s}: stage {s}'s input of micro-batch {k} got no gradient in "
                        "its backward (the stage output does not depend on its input); a "
                        "pipeline stage must be differentiable in its input")
                self._send_value(grad_in, -1, k, _GRAD_HEADER, _GRAD)
                stats.send_s += clock() - t0
            elif kind is Kind.UPDATE:
                t0 = clock()
                got = [pending.popleft() for _ in range(len(a.mbs)) if pending]
                if tuple(got) != a.mbs:
                    raise RuntimeError(
                        f"update {a} must apply exactly the backwards done since the last "
                        f"update on stage {s}, in order; pending were {got}")
                self.optimizer.step(count=len(a.mbs))
                self.version += 1
                stats.compute_s += clock() - t0
                stats.updates += 1
        t0 = clock()
        self.wait_sends()
        stats.send_s += clock() - t0
        stats.wall_s = clock() - t_start

        gathered: list[Any] = [None] * M
        dist.all_gather_object(gathered, (records if self.is_last else None, versions, peak,
                                          stats), group=self.group)
        run = PipelineRun(peak_in_flight=[g[2] for g in gathered])
        run.records = dict(sorted(gathered[-1][0].items()))
        for g in gathered:
            run.versions.update(g[1])
        self.last_stats = [g[3] for g in gathered]
        return run

    # -- checkpoints ---------------------------------------------------------------------------
    def _own_state(self) -> dict[str, Any]:
        return {"rank": self.rank, "stage": self.stage.state_dict(),
                "optimizer": self.optimizer.state_dict(), "version": self.version}

    def stage_state_dicts(self, dst: int = 0) -> list[dict[str, Any]] | None:
        """Every stage's state on rank `dst` (None elsewhere); collective.

        Entry r is {"rank", "stage": state_dict (tile generators included via extra state),
        "optimizer": AnalogSGD.state_dict(), "version": updates applied}. Lets rank 0 write one
        checkpoint or evaluate the whole model without the other ranks touching files.
        """
        self.wait_sends()
        out: list[Any] | None = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(copy.deepcopy(self._own_state()), out, dst=dst, group=self.group)
        return out

    def load_stage_state(self, dicts: list[dict[str, Any]] | None, src: int = 0) -> None:
        """Restore every rank from the list held by rank `src` (others pass None); collective.

        Raises on every rank if the list does not have one entry per stage.
        """
        mine: list[Any] = [None]
        if self.rank == src:
            if dicts is None or len(dicts) != self.world_size:
                n = None if dicts is None else len(dicts)
                msg = (f"load_stage_state: rank {src} holds {n} stage states; expected one per "
                       f"stage ({self.world_size})")
                scatter: list[Any] = [("error", msg)] * self.world_size
            else:
                scatter = [("ok", d) for d in dicts]
        else:
            scatter = None  # type: ignore[assignment]
        dist.scatter_object_list(mine, scatter, src=src, group=self.group)
        status, payload = mine[0]
        if status == "error":
            raise ValueError(f"rank {self.rank}: {payload}")
        if payload.get("rank", self.rank) != self.rank:
            raise ValueError(f"rank {self.rank}: got the state of rank {payload['rank']}")
        self.stage.load_state_dict(payload["stage"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.version = int(payload.get("version", self.version))

