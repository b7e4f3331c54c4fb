"""Pipeline schedules as data: per-stage lists of actions, a validator, a renderer.

One schedule object is read by every interpreter (the single-process executor, the
distributed executor, the cycle model, the Gantt renderer), so WOP, SP and AP differ only in
the data. Stages are 0-indexed from the input (the paper's m = s + 1); in the asynchronous
pipeline stage s is M - 1 - s updates stale.

Compact text form (like ``torch.distributed.pipelining``): ``2F0`` = stage 2, forward,
micro-batch 0; ``1B3`` backward; ``0U3`` update applying micro-batch 3; ``0U0-3`` update applying
micro-batches 0..3; ``1SF0`` / ``0RF0`` / ``1SB2`` / ``0RB2`` sends and receives (lowered only).

No torch import here: the cycle model and the CLI must stay light.
"""

from __future__ import annotations

import bisect
import heapq
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "Action",
    "Kind",
    "Schedule",
    "ScheduleError",
    "execution_order",
    "lower_with_comms",
    "parse_action",
]


class ScheduleError(ValueError):
    """A schedule that an executor could not run (missing, duplicated or deadlocking actions)."""


class Kind(StrEnum):
    FORWARD = "F"
    BACKWARD = "B"
    UPDATE = "U"
    SEND_F = "SF"
    RECV_F = "RF"
    SEND_B = "SB"
    RECV_B = "RB"


COMPUTE = (Kind.FORWARD, Kind.BACKWARD)
COMMS = (Kind.SEND_F, Kind.RECV_F, Kind.SEND_B, Kind.RECV_B)


def _mbs_text(mbs: tuple[int, ...]) -> str:
    if len(mbs) == 1:
        return str(mbs[0])
    if len(mbs) > 1 and all(b == a + 1 for a, b in zip(mbs, mbs[1:])):
        return f"{mbs[0]}-{mbs[-1]}"
    return ",".join(str(m) for m in mbs)


@dataclass(frozen=True)
class Action:
    """One step of one stage: forward, backward, update (or, once lowered, a send/receive).

    ``mb`` is the micro-batch index in the whole stream. For an UPDATE, ``mbs`` lists the
    micro-batches whose stashed gradients it applies and ``mb == mbs[-1]`` (an update given
    without ``mbs`` applies just ``mb``).
    """

    stage: int
    kind: Kind
    mb: int
    mbs: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        kind = self.kind
        if type(kind) is not Kind:
            try:
                kind = Kind(kind)
            except ValueError:
                allowed = ", ".join(k.value for k in Kind)
                raise ValueError(
                    f"Action kind={self.kind!r} is unknown: use one of {allowed}"
                ) from None
            object.__setattr__(self, "kind", kind)
        if self.mbs:
            object.__setattr__(self, "mbs", tuple(int(m) for m in self.mbs))
            if any(m < 0 for m in self.mbs):
                raise ValueError(f"Action mbs={self.mbs}: indices must be >= 0")
        if self.stage < 0 or self.mb < 0:
            raise ValueError(f"Action stage={self.stage}, mb={self.mb}: indices must be >= 0")
        if kind is Kind.UPDATE:
            if not self.mbs:
                object.__setattr__(self, "mbs", (self.mb,))
            elif self.mbs[-1] != self.mb:
                raise ValueError(
                    f"update mb={self.mb} but mbs={self.mbs}: mb must be the last of mbs"
                )
        elif self.mbs:
            raise ValueError(f"Action kind={kind.value} got mbs={self.mbs}: only updates list mbs")

    def __str__(self) -> str:
        if self.kind is Kind.UPDATE:
            return f"{self.stage}U{_mbs_text(self.mbs)}"
        return f"{self.stage}{self.kind.value}{self.mb}"

    @property
    def key(self) -> tuple[int, Kind, int]:
        """Identity used for dependencies: (stage, kind, mb)."""
        return (self.stage, self.kind, self.mb)


_ACTION_RE = re.compile(r"^(\d+)(SF|RF|SB|RB|F|B|U)(\d+(?:-\d+)?(?:,\d+)*)$")


def parse_action(text: str) -> Action:
    """Inverse of ``str(action)``: ``'2F0'``, ``'0U0-3'``, ``'0U1,4'``, ``'1SB2'``."""
    m = _ACTION_RE.match(text.strip())
    if not m:
        raise ValueError(
            f"action {text!r} is not in compact form: use <stage><kind><mb> with kind in "
            "F, B, U, SF, RF, SB, RB (e.g. '2F0', '0U0-3')"
        )
    stage, kind, rest = int(m.group(1)), Kind(m.group(2)), m.group(3)
    if "-" in rest or "," in rest:
        if kind is not Kind.UPDATE:
            raise ValueError(f"action {text!r}: only updates may list several micro-batches")
        if "-" in rest:
            lo, hi = (int(x) for x in rest.split("-"))
            if hi < lo:
                raise ValueError(f"action {text!r}: range {lo}-{hi} is empty")
            mbs = tuple(range(lo, hi + 1))
        else:
            mbs = tuple(int(x) for x in rest.split(","))
        return Action(stage, kind, mbs[-1], mbs)
    return Action(stage, kind, int(rest))


# --------------------------------------------------------------------------------------------
# dependency engine shared by validate, render, execution_order, lowering and timing.simulate


class _Deadlock(Exception):
    def __init__(self, stuck: list[tuple[int, int]]):
        super().__init__("deadlock")
        self.stuck = stuck


Pos = tuple[int, int]  # (stage, index in that stage's list)


@dataclass(frozen=True)
class _Graph:
    """Actions numbered stage by stage (id = offsets[s] + index) and their prerequisites."""

    flat: tuple[Action, ...]
    offsets: tuple[int, ...]  # M + 1 entries
    strict: tuple[tuple[int, ...], ...]  # -1 = a prerequisite that is not in the schedule
    lenient: tuple[tuple[int, ...], ...]  # missing prerequisites dropped
    stage: tuple[int, ...]  # stage of each id

    def pos(self, i: int) -> Pos:
        s = bisect.bisect_right(self.offsets, i) - 1
        return (s, i - self.offsets[s])


def _graph(sched: Schedule) -> _Graph:
    """Dependency graph of a schedule, built once and cached (schedules are immutable).

    Un-lowered: F(s,k) needs F(s-1,k); B(s,k) needs B(s+1,k) and F(s,k); U needs the B of each
    micro-batch it applies. Lowered (torch.distributed.pipelining semantics): SF/SB/RF/RB only
    *post* an isend/irecv and never wait; a compute waits for its posted receive and for the
    peer's send: F(s,k) needs RF(s,k) and SF(s-1,k), B(s,k) needs RB(s,k) and SB(s+1,k); a send
    needs the compute that produced it.
    """
    cached = sched.__dict__.get("_graph")
    if cached is not None:
        return cached
    flat = tuple(a for row in sched.per_stage for a in row)
    offsets = [0]
    for row in sched.per_stage:
        offsets.append(offsets[-1] + len(row))
    where: dict[tuple[int, Kind, int], int] = {}
    for i, a in enumerate(flat):
        where.setdefault((a.stage, a.kind, a.mb), i)
    lowered = sched.is_lowered
    last = sched.num_stages - 1
    get = where.get
    FWD, BWD = Kind.FORWARD, Kind.BACKWARD
    strict: list[tuple[int, ...]] = []
    for s, row in enumerate(sched.per_stage):
        for a in row:
            k, kind = a.mb, a.kind
            if kind is FWD:
                if s == 0:
                    keys: tuple = ()
                elif lowered:
                    keys = ((s, Kind.RECV_F, k), (s - 1, Kind.SEND_F, k))
                else:
                    keys = ((s - 1, FWD, k),)
            elif kind is BWD:
                if s == last:
                    keys = ((s, FWD, k),)
                elif lowered:
                    keys = ((s, FWD, k), (s, Kind.RECV_B, k), (s + 1, Kind.SEND_B, k))
                else:
                    keys = ((s, FWD, k), (s + 1, BWD, k))
            elif kind is Kind.UPDATE:
                keys = tuple((s, BWD, j) for j in a.mbs)
            elif kind is Kind.SEND_F:
                keys = ((s, FWD, k),)
            elif kind is Kind.SEND_B:
                keys = ((s, BWD, k),)
            else:  # a receive only posts
                keys = ()
            strict.append(tuple(get(key, -1) for key in keys))
    g = _Graph(flat, tuple(offsets), tuple(strict),
               tuple(tuple(p for p in d if p >= 0) for d in strict),
               tuple(s for s, row in enumerate(sched.per_stage) for _ in row))
    object.__setattr__(sched, "_graph", g)
    return g


def _dependencies(sched: Schedule, strict: bool) -> dict[Pos, list[Pos]]:
    """Prerequisites as positions (stage, index); missing ones are (-1, -1) when ``strict``."""
    g = _graph(sched)
    deps = g.strict if strict else g.lenient
    return {g.pos(i): [g.pos(p) if p >= 0 else (-1, -1) for p in d] for i, d in enumerate(deps)}


def _run(
    sched: Schedule,
    duration: Callable[[Action], float],
    delay: Callable[[int, int], float] | None = None,
    strict: bool = True,
) -> tuple[list[float], list[float]]:
    """List-schedule every stage in order; return (start, end) per action id (see ``_Graph``).

    An action starts at max(its stage is free, each prerequisite's end + transfer time), the
    transfer time being ``delay(from_stage, to_stage)`` for a cross-stage prerequisite.
    Start times do not depend on the order in which stages are advanced, so a simple sweep is
    exact. Raises ``_Deadlock`` with the stuck head actions when no stage can advance.
    """
    g = _graph(sched)
    deps = g.strict if strict else g.lenient
    flat = g.flat
    n = len(flat)
    dur = [duration(a) for a in flat]
    if delay is None:
        gaps: list[tuple[float, ...] | None] = [None] * n
    else:
        st = g.stage
        gaps = [None] * n
        for i, d in enumerate(deps):
            if any(p >= 0 and st[p] != st[i] for p in d):
                gaps[i] = tuple(delay(st[p], st[i]) if p >= 0 and st[p] != st[i] else 0.0
                                for p in d)
    start = [0.0] * n
    end = [0.0] * n
    done = bytearray(n)
    M = sched.num_stages
    heads = list(g.offsets[:-1])
    stops = g.offsets[1:]
    free = [0.0] * M
    remaining = n
    while remaining:
        progressed = False
        for s in range(M):
            h0 = h = heads[s]
            stop, t_free = stops[s], free[s]
            while h < stop:
                t = t_free
                gap = gaps[h]
                blocked = False
                for j, p in enumerate(deps[h]):
                    if p < 0 or not done[p]:
                        blocked = True
                        break
                    e = end[p] + gap[j] if gap is not None else end[p]
                    if e > t:
                        t = e
                if blocked:
                    break
                start[h] = t
                t_free = end[h] = t + dur[h]
                done[h] = 1
                h += 1
            if h != h0:
                progressed = True
                remaining -= h - h0
                heads[s], free[s] = h, t_free
        if not progressed:
            raise _Deadlock([g.pos(heads[s]) for s in range(M) if heads[s] < stops[s]])
    return start, end


def _unit_duration(a: Action) -> float:
    return 1.0 if a.kind in COMPUTE else 0.0


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Per-stage action lists for M stages and a stream of K micro-batches (B per step).

    ``weight_stashing`` is True for PipeDream: a backward uses the weight version its own
    forward used (a digital reference; the analog AP scheme does not stash weights).
    """

    scheme: str
    num_stages: int
    num_microbatches: int
    microbatches_per_step: int
    per_stage: tuple[tuple[Action, ...], ...]
    weight_stashing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_stage", tuple(tuple(r) for r in self.per_stage))

    # -- facts --------------------------------------------------------------------------------
    @property
    def is_lowered(self) -> bool:
        """True once send/receive actions are present (see ``lower_with_comms``)."""
        return any(a.kind in COMMS for row in self.per_stage for a in row)

    def num_updates(self, stage: int) -> int:
        """How many analog updates stage ``stage`` applies over the whole stream."""
        return sum(1 for a in self.per_stage[stage] if a.kind is Kind.UPDATE)

    def actions(self) -> list[Action]:
        """All actions, stage by stage."""
        return [a for row in self.per_stage for a in row]

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> Schedule:
        """Raise ``ScheduleError`` (with marked per-stage lists) unless every executor can run it.

        Returns ``self`` so builders can ``return sched.validate()``.
        """
        if self.__dict__.get("_valid"):  # immutable, so once valid always valid
            return self
        problems: list[str] = []
        marks: list[Pos] = []
        M, K = self.num_stages, self.num_microbatches

        def bad(msg: str, *pos: Pos) -> None:
            problems.append(msg)
            marks.extend(pos)

        if M < 1 or K < 1 or self.microbatches_per_step < 1:
            raise ScheduleError(
                f"schedule {self.scheme!r}: num_stages={M}, num_microbatches={K}, "
                f"microbatches_per_step={self.microbatches_per_step}: all must be >= 1"
            )
        if len(self.per_stage) != M:
            raise ScheduleError(
                f"schedule {self.scheme!r}: num_stages={M} but per_stage has "
                f"{len(self.per_stage)} lists: give exactly one list per stage"
            )
        # structure: right stage, micro-batch in range, comm on a stage that has that peer
        for s, row in enumerate(self.per_stage):
            for i, a in enumerate(row):
                if a.stage != s:
                    bad(f"{a} is in the list of stage {s}: its stage must be {s}", (s, i))
                if any(m >= K for m in (a.mb, *a.mbs)):
                    bad(f"{a} names a micro-batch >= num_microbatches={K}", (s, i))
                if a.kind in (Kind.RECV_F, Kind.SEND_B) and s == 0:
                    bad(f"{a}: stage 0 has no previous stage to talk to", (s, i))
                if a.kind in (Kind.SEND_F, Kind.RECV_B) and s == M - 1:
                    bad(f"{a}: the last stage has no next stage to talk to", (s, i))
        if problems:
            self._fail(problems, marks)

        # duplicates: the same action twice, or two actions with one identity (stage, kind, mb);
        # positions[s] maps (stage, kind, mb) to the first index in stage s's list
        positions: list[dict[tuple[int, Kind, int], int]] = []
        for s, row in enumerate(self.per_stage):
            seen: dict[tuple[int, Kind, int], int] = {}
            for i, a in enumerate(row):
                j = seen.setdefault((s, a.kind, a.mb), i)
                if j != i:
                    what = "appears twice" if row[j] == a else f"clashes with {row[j]}"
                    bad(f"stage {s}: {a} {what} (duplicate action)", (s, j), (s, i))
            positions.append(seen)

        # forward/backward present once each, backward after forward; update bookkeeping
        FWD, BWD = Kind.FORWARD, Kind.BACKWARD
        for s, row in enumerate(self.per_stage):
            pos = positions[s]
            for k in range(K):
                f = pos.get((s, FWD, k))
                b = pos.get((s, BWD, k))
                if f is None:
                    bad(f"stage {s}: forward {s}F{k} is missing")
                if b is None:
                    bad(f"stage {s}: backward {s}B{k} is missing")
                if f is not None and b is not None and b < f:
                    bad(f"stage {s}: backward {s}B{k} comes before its forward {s}F{k}", (s, b))
            covered: dict[int, int] = {}
            for i, a in enumerate(row):
                if a.kind is not Kind.UPDATE:
                    continue
                for m, n in Counter(a.mbs).items():
                    if n > 1:
                        bad(f"stage {s}: update {a} lists micro-batch {m} {n} times", (s, i))
                for m in dict.fromkeys(a.mbs):
                    b = pos.get((s, Kind.BACKWARD, m))
                    if b is not None and b > i:
                        bad(f"stage {s}: update {a} applies micro-batch {m} before its backward "
                            f"{s}B{m}", (s, i), (s, b))
                    if m in covered:
                        bad(f"stage {s}: micro-batch {m} is applied by two updates "
                            f"({row[covered[m]]} and {a})", (s, covered[m]), (s, i))
                    else:
                        covered[m] = i
            for k in range(K):
                b = pos.get((s, BWD, k))
                if b is not None and k not in covered:
                    bad(f"stage {s}: the gradient of {s}B{k} is never applied (missing update)",
                        (s, b))

        if self.is_lowered:
            self._check_comms(bad, positions)
        if problems:
            self._fail(problems, marks)

        try:
            _run(self, _unit_duration, strict=True)
        except _Deadlock as dl:
            heads = ", ".join(str(self.per_stage[s][i]) for s, i in dl.stuck)
            self._fail(
                [f"deadlock: no stage can advance; stuck waiting: {heads} "
                 "(each waits for an action that waits, directly or not, for it)"],
                dl.stuck,
            )
        object.__setattr__(self, "_valid", True)
        return self

    def _check_comms(self, bad: Callable[..., None], positions: list[dict]) -> None:
        """Lowered schedules: every transfer has its compute and its peer, in a safe order."""
        M = self.num_stages
        for s, row in enumerate(self.per_stage):
            pos = positions[s]
            for i, a in enumerate(row):
                k = a.mb
                if a.kind is Kind.FORWARD:
                    if s > 0 and pos.get((s, Kind.RECV_F, k), i + 1) > i:
                        bad(f"stage {s}: {a} has no {s}RF{k} before it", (s, i))
                    if s < M - 1 and pos.get((s, Kind.SEND_F, k), -1) < i:
                        bad(f"stage {s}: {a} has no {s}SF{k} after it", (s, i))
                elif a.kind is Kind.BACKWARD:
                    if s < M - 1 and pos.get((s, Kind.RECV_B, k), i + 1) > i:
                        bad(f"stage {s}: {a} has no {s}RB{k} before it", (s, i))
                    if s > 0 and pos.get((s, Kind.SEND_B, k), -1) < i:
                        bad(f"stage {s}: {a} has no {s}SB{k} after it", (s, i))
                elif a.kind in COMMS:
                    forward = a.kind in (Kind.SEND_F, Kind.RECV_F)
                    compute = Kind.FORWARD if forward else Kind.BACKWARD
                    if (s, compute, k) not in pos:
                        bad(f"stage {s}: {a} has no matching {s}{compute.value}{k}", (s, i))
        # Blocking-send safety: on each link both sides must list their messages in the same
        # order. Then a rendezvous can never wait in a cycle (the stages form a chain), so the
        # order is deadlock-free whether sends are blocking or isend.
        for s in range(M - 1):
            up = [(a, i) for i, a in enumerate(self.per_stage[s])
                  if a.kind in (Kind.SEND_F, Kind.RECV_B)]
            down = [(a, i) for i, a in enumerate(self.per_stage[s + 1])
                    if a.kind in (Kind.RECV_F, Kind.SEND_B)]
            msg_up = [("F" if a.kind is Kind.SEND_F else "B", a.mb) for a, _ in up]
            msg_down = [("F" if a.kind is Kind.RECV_F else "B", a.mb) for a, _ in down]
            for n, (x, y) in enumerate(zip(msg_up, msg_down)):
                if x != y:
                    bad(f"link {s}<->{s + 1}: message #{n} is {up[n][0]} on stage {s} but "
                        f"{down[n][0]} on stage {s + 1}: with blocking sends this order can "
                        "deadlock (both sides must post messages in the same order)",
                        (s, up[n][1]), (s + 1, down[n][1]))
                    break
            if len(msg_up) != len(msg_down) and not any(x != y for x, y in zip(msg_up, msg_down)):
                bad(f"link {s}<->{s + 1}: stage {s} posts {len(msg_up)} messages but stage "
                    f"{s + 1} posts {len(msg_down)}")

    def _fail(self, problems: list[str], marks: Iterable[Pos]) -> None:
        shown = problems[:12]
        more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
        head = (
            f"invalid schedule {self.scheme!r} (M={self.num_stages}, K={self.num_microbatches}): "
            f"{len(problems)} problem(s):\n  - " + "\n  - ".join(shown) + more
        )
        raise ScheduleError(head + "\nper-stage actions (>>marked<< = offending):\n"
                            + self.render_lists(marks=marks))

    # -- rendering ----------------------------------------------------------------------------
    def render_lists(self, marks: Iterable[Action | Pos] | None = None) -> str:
        """One line per stage with its actions in order; works even for broken schedules."""
        marked = self._marked(marks)
        lines = []
        for s, row in enumerate(self.per_stage):
            cells = [f">>{a}<<" if (s, i) in marked else str(a) for i, a in enumerate(row)]
            lines.append(f"stage {s}: " + (" ".join(cells) if cells else "(empty)"))
        return "\n".join(lines)

    def _marked(self, marks: Iterable[Action | Pos] | None) -> set[Pos]:
        out: set[Pos] = set()
        for m in marks or ():
            if isinstance(m, Action):
                out.update((s, i) for s, row in enumerate(self.per_stage)
                           for i, a in enumerate(row) if a == m)
            else:
                out.add((int(m[0]), int(m[1])))
        return out

    def render(self, marks: Iterable[Action | Pos] | None = None) -> str:
        """Time x stage grid of the unit-cost simulation (F = B = 1 cycle, the rest 0).

        Rows are stages, columns time slots; idle slots are ``.``. Zero-time actions are shown
        beside the compute they follow (``0B3+U0-3``, ``1F0+SF0``), receives before the compute
        they feed (``RF0+1F0``). Marked actions are wrapped as ``>>1B0<<``. A schedule that
        cannot be simulated (deadlock) is shown as per-stage lists instead.
        """
        marked = self._marked(marks)
        try:
            start, end = _run(self, _unit_duration, strict=False)
        except _Deadlock as dl:
            return ("(no time grid: the schedule deadlocks)\n"
                    + self.render_lists(marks=[*marked, *dl.stuck]))
        offsets = _graph(self).offsets
        T = int(max(end, default=0))
        grid: list[list[str]] = []
        for s, row in enumerate(self.per_stage):
            cells: list[list[str]] = [[] for _ in range(T)]
            txt = [f">>{a}<<" if (s, i) in marked else str(a) for i, a in enumerate(row)]
            slot_of: list[int | None] = [None] * len(row)
            for i, a in enumerate(row):
                if a.kind in COMPUTE:
                    slot_of[i] = int(start[offsets[s] + i])
            pending_prefix: list[str] = []
            last_slot: int | None = None
            for i, a in enumerate(row):
                if slot_of[i] is not None:
                    t = slot_of[i]
                    cells[t].extend(pending_prefix)
                    cells[t].append(txt[i])
                    pending_prefix, last_slot = [], t
                    continue
                short = txt[i] if (s, i) in marked else txt[i][len(str(s)):]
                if a.kind in (Kind.RECV_F, Kind.RECV_B) or last_slot is None:
                    pending_prefix.append(short)
                else:
                    cells[last_slot].append(short)
            if pending_prefix:  # trailing zero-time actions with no compute after them
                if last_slot is None:
                    cells.append(pending_prefix)
                else:
                    cells[last_slot].extend(pending_prefix)
            grid.append(["+".join(c) if c else "." for c in cells])
        ncols = max((len(r) for r in grid), default=0)
        for r in grid:
            r.extend(["."] * (ncols - len(r)))
        width = max([len(c) for r in grid for c in r] + [len(str(max(ncols - 1, 0)))])
        label = len(f"stage {self.num_stages - 1}")
        header = " " * label + " " + " ".join(str(t).rjust(width) for t in range(ncols))
        lines = [header.rstrip()]
        for s, r in enumerate(grid):
            lines.append(f"stage {s}".ljust(label) + " " + " ".join(c.rjust(width) for c in r))
        return "\n".join(lines)

    # -- text round trip ----------------------------------------------------------------------
    def to_text(self) -> str:
        """Plain text that ``Schedule.from_text`` reads back exactly (for files and diffs)."""
        lines = [
            "# analogpipe schedule v1",
            f"scheme: {self.scheme}",
            f"stages: {self.num_stages}",
            f"microbatches: {self.num_microbatches}",
            f"microbatches_per_step: {self.microbatches_per_step}",
            f"weight_stashing: {str(self.weight_stashing).lower()}",
        ]
        for s, row in enumerate(self.per_stage):
            lines.append(f"{s}: " + " ".join(str(a) for a in row))
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Schedule:
        """Parse ``to_text`` output (does not validate: call ``validate()``)."""
        meta: dict[str, str] = {}
        rows: dict[int, tuple[Action, ...]] = {}
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"schedule text line {n}: {raw!r} has no ':'")
            key = key.strip()
            if key.isdigit():
                rows[int(key)] = tuple(parse_action(t) for t in value.split())
            else:
                meta[key] = value.strip()
        need = ("scheme", "stages", "microbatches", "microbatches_per_step")
        missing = [k for k in need if k not in meta]
        if missing:
            raise ValueError(f"schedule text lacks the header line(s) {', '.join(missing)}")
        M = int(meta["stages"])
        if sorted(rows) != list(range(M)):
            raise ValueError(f"schedule text has stage lines {sorted(rows)}; expected 0..{M - 1}")
        return cls(
            scheme=meta["scheme"],
            num_stages=M,
            num_microbatches=int(meta["microbatches"]),
            microbatches_per_step=int(meta["microbatches_per_step"]),
            per_stage=tuple(rows[s] for s in range(M)),
            weight_stashing=meta.get("weight_stashing", "false").lower() in ("true", "1", "yes"),
        )


# --------------------------------------------------------------------------------------------


def lower_with_comms(schedule: Schedule) -> Schedule:
    """Add the sends and receives a multi-process executor needs.

    RF before each F on stages s > 0, SF after each F on s < M-1, RB before each B on s < M-1,
    SB after each B on s > 0. As in torch.distributed.pipelining a send/receive only posts an
    isend/irecv; the compute that needs a receive waits for it, so the cycle model gives the
    lowered schedule the same timing as the original.

    Where exactly: by the unit-cost simulation of the un-lowered schedule. A send is posted
    when its producer ends, a receive at the time its message is ready (no later than its
    consumer starts); ties are broken by a key both peers share. So the two stages of every
    link post their messages in the same order, which stays deadlock-free even if an executor
    made sends and receives blocking (``validate`` checks this on lowered schedules).
    """
    if schedule.is_lowered:
        raise ScheduleError(f"schedule {schedule.scheme!r} is already lowered (has send/recv)")
    schedule.validate()
    start, end = _run(schedule, _unit_duration)
    M = schedule.num_stages
    offsets = _graph(schedule).offsets
    where = {a.key: offsets[s] + i for s, row in enumerate(schedule.per_stage)
             for i, a in enumerate(row)}
    rows = []
    for s, row in enumerate(schedule.per_stage):
        items: list[tuple[tuple, Action]] = []
        for i, a in enumerate(row):
            me = offsets[s] + i
            items.append(((start[me], 1, 0, 0, i), a))
            k = a.mb
            if a.kind is Kind.FORWARD:
                if s > 0:  # message ready when F(s-1,k) ends
                    t = end[where[(s - 1, Kind.FORWARD, k)]]
                    items.append(((t, 0, 0, k, 0), Action(s, Kind.RECV_F, k)))
                if s < M - 1:
                    items.append(((end[me], 0, 0, k, 0), Action(s, Kind.SEND_F, k)))
            elif a.kind is Kind.BACKWARD:
                if s < M - 1:
                    t = end[where[(s + 1, Kind.BACKWARD, k)]]
                    items.append(((t, 0, 1, k, 0), Action(s, Kind.RECV_B, k)))
                if s > 0:
                    items.append(((end[me], 0, 1, k, 0), Action(s, Kind.SEND_B, k)))
        items.sort(key=lambda x: x[0])
        rows.append(tuple(a for _, a in items))
    lowered = Schedule(
        scheme=schedule.scheme,
        num_stages=M,
        num_microbatches=schedule.num_microbatches,
        microbatches_per_step=schedule.microbatches_per_step,
        per_stage=tuple(rows),
        weight_stashing=schedule.weight_stashing,
    )
    return lowered.validate()


def execution_order(schedule: Schedule) -> list[Action]:
    """One total order of all actions for a single-process executor.

    Sorted by unit-cost simulated start time, ties by stage then list position; a
    topological pass guarantees that per-stage order and data dependencies hold even for
    zero-time actions (updates, messages) that share a start time.
    """
    schedule.validate()
    start, _ = _run(schedule, _unit_duration)
    g = _graph(schedule)
    n = len(g.flat)
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    first = set(g.offsets)
    for i, pre in enumerate(g.strict):
        allpre = set(pre)
        if i not in first:
            allpre.add(i - 1)  # the previous action of the same stage
        indeg[i] = len(allpre)
        for q in allpre:
            succ[q].append(i)
    stage = [s for s in range(schedule.num_stages) for _ in range(g.offsets[s], g.offsets[s + 1])]
    heap = [(start[i], stage[i], i) for i in range(n) if indeg[i] == 0]
    heapq.heapify(heap)
    out: list[Action] = []
    while heap:
        _, _, i = heapq.heappop(heap)
        out.append(g.flat[i])
        for q in succ[i]:
            indeg[q] -= 1
            if indeg[q] == 0:
                heapq.heappush(heap, (start[q], stage[q], q))
    return out
