"""The schedule builders: WOP, SP (GPipe), AP (asynchronous 1F1B) and PipeDream.

All take M stages, B micro-batches per mini-batch (step) and ``steps`` mini-batches, so a
stream of K = B * steps micro-batches; they differ only in the order of the actions and in
where the updates go. Every builder returns a validated ``Schedule``.
"""

from __future__ import annotations

from collections.abc import Callable

from analogpipe.pipeline.schedule import Action, Kind, Schedule

__all__ = ["SCHEMES", "async_1f1b", "build", "gpipe", "pipedream", "wop"]

F, B_, U = Kind.FORWARD, Kind.BACKWARD, Kind.UPDATE


def _check(M: int, B: int, steps: int) -> None:
    for name, value in (("stages", M), ("microbatches", B), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid: use an integer >= 1")


def _schedule(scheme: str, M: int, B: int, steps: int, rows: list[list[Action]],
              weight_stashing: bool = False) -> Schedule:
    return Schedule(
        scheme=scheme,
        num_stages=M,
        num_microbatches=B * steps,
        microbatches_per_step=B,
        per_stage=tuple(tuple(r) for r in rows),
        weight_stashing=weight_stashing,
    ).validate()


def wop(M: int, B: int, steps: int = 1) -> Schedule:
    """No pipeline: F k then B k on every stage, one update per stage after each step.

    Since F(0, k+1) follows B(0, k) on stage 0, only one stage is ever busy:
    M (t_f + t_b) cycles per micro-batch, density 1/M. Numerically plain analog SGD.
    """
    _check(M, B, steps)
    rows: list[list[Action]] = [[] for _ in range(M)]
    for s in range(M):
        for j in range(steps):
            mbs = tuple(range(j * B, (j + 1) * B))
            for k in mbs:
                rows[s] += [Action(s, F, k), Action(s, B_, k)]
            rows[s].append(Action(s, U, mbs[-1], mbs))
    return _schedule("wop", M, B, steps, rows)


def gpipe(M: int, B: int, steps: int = 1, update_per_microbatch: bool = False) -> Schedule:
    """SP (GPipe): per step all forwards, then all backwards (0..B-1), then the update.

    One update per stage with the mini-batch gradient after the flush, or with
    ``update_per_microbatch`` B sequential updates of one micro-batch each (also after the
    flush, so every forward and backward of the step still sees the same weights).
    (B + M - 1)(t_f + t_b) cycles per step, density B / (B + M - 1), no staleness.
    """
    _check(M, B, steps)
    rows: list[list[Action]] = [[] for _ in range(M)]
    for s in range(M):
        for j in range(steps):
            mbs = tuple(range(j * B, (j + 1) * B))
            rows[s] += [Action(s, F, k) for k in mbs]
            rows[s] += [Action(s, B_, k) for k in mbs]
            if update_per_microbatch:
                rows[s] += [Action(s, U, k) for k in mbs]
            else:
                rows[s].append(Action(s, U, mbs[-1], mbs))
    return _schedule("sp", M, B, steps, rows)


def _one_f_one_b(M: int, K: int) -> list[list[Action]]:
    """1F1B over a continuous stream: warm-up of min(M-1-s, K) forwards, steady F/B, drain.

    In the steady phase stage s runs F(W+i), B(i), U(i): so it holds at most M - s
    micro-batches in flight, and F(k) runs after k - W updates, W = M - 1 - s.
    """
    rows: list[list[Action]] = []
    for s in range(M):
        warm = min(M - 1 - s, K)
        row = [Action(s, F, k) for k in range(warm)]
        for i in range(K - warm):
            row += [Action(s, F, warm + i), Action(s, B_, i), Action(s, U, i)]
        for i in range(K - warm, K):
            row += [Action(s, B_, i), Action(s, U, i)]
        rows.append(row)
    return rows


def async_1f1b(M: int, B: int, steps: int = 1) -> Schedule:
    """AP: asynchronous 1F1B without weight stashing; an update right after each backward.

    No flush at step boundaries (B only says how samples are counted). (K + M - 1)(t_f + t_b)
    cycles for K micro-batches, density K / (K + M - 1); the forward of micro-batch k at stage
    s sees max(0, k - (M-1-s)) updates, its backward k updates: staleness M - 1 - s.
    """
    _check(M, B, steps)
    return _schedule("ap", M, B, steps, _one_f_one_b(M, B * steps))


def pipedream(M: int, B: int, steps: int = 1) -> Schedule:
    """PipeDream 1F1B with weight stashing: AP's order and timing, but each backward uses the
    weight version of its own forward (a digital reference: stashing copies are not free)."""
    _check(M, B, steps)
    return _schedule("pipedream", M, B, steps, _one_f_one_b(M, B * steps), weight_stashing=True)


SCHEMES: dict[str, Callable[..., Schedule]] = {
    "wop": wop,
    "sp": gpipe,
    "ap": async_1f1b,
    "pipedream": pipedream,
}


def build(scheme: str, M: int, B: int, steps: int = 1, **kw) -> Schedule:
    """Build a schedule by name: ``wop``, ``sp``, ``ap`` or ``pipedream``."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is unknown: use one of {', '.join(SCHEMES)}")
    _check(M, B, steps)
    try:
        return SCHEMES[scheme](M, B, steps, **kw)
    except TypeError as exc:
        raise ValueError(f"scheme={scheme!r} does not take options {sorted(kw)}: {exc}") from None
