"""Schedules as data: text form, builders, validator, lowering, execution order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analogpipe.pipeline.schedule import (
    Action,
    Kind,
    Schedule,
    ScheduleError,
    _dependencies,
    execution_order,
    lower_with_comms,
    parse_action,
)
from analogpipe.pipeline.schedules import async_1f1b, build, gpipe, pipedream, wop

F, B, U = Kind.FORWARD, Kind.BACKWARD, Kind.UPDATE
SCHEMES = ["wop", "sp", "ap", "pipedream"]


def sched(rows: list[str], K: int, Bper: int | None = None, scheme: str = "test") -> Schedule:
    """A schedule from compact text, one string per stage."""
    return Schedule(
        scheme=scheme,
        num_stages=len(rows),
        num_microbatches=K,
        microbatches_per_step=Bper or K,
        per_stage=tuple(tuple(parse_action(t) for t in r.split()) for r in rows),
    )


# ------------------------------------------------------------------ actions and text form


@pytest.mark.parametrize(
    "text, action",
    [
        ("2F0", Action(2, F, 0)),
        ("1B3", Action(1, B, 3)),
        ("0U3", Action(0, U, 3, (3,))),
        ("0U0-3", Action(0, U, 3, (0, 1, 2, 3))),
        ("0U1,4", Action(0, U, 4, (1, 4))),
        ("1SF0", Action(1, Kind.SEND_F, 0)),
        ("0RB2", Action(0, Kind.RECV_B, 2)),
        ("12RF10", Action(12, Kind.RECV_F, 10)),
    ],
)
def test_action_text_round_trip(text: str, action: Action) -> None:
    assert parse_action(text) == action
    assert str(action) == text


def test_update_without_mbs_applies_its_own_microbatch() -> None:
    assert Action(0, U, 5).mbs == (5,)
    assert str(Action(0, U, 5)) == "0U5"


@pytest.mark.parametrize("bad", ["F0", "0X1", "0F", "0F1-3", "0U3-1", ""])
def test_parse_action_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_action(bad)


def test_action_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="last of mbs"):
        Action(0, U, 2, (2, 3))
    with pytest.raises(ValueError, match="only updates"):
        Action(0, F, 2, (2,))
    with pytest.raises(ValueError, match=">= 0"):
        Action(-1, F, 0)
    with pytest.raises(ValueError, match="unknown"):
        Action(0, "Z", 0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ builders


def test_wop_order_and_updates() -> None:
    s = wop(2, 2, 2)
    assert [str(a) for a in s.per_stage[0]] == [
        "0F0", "0B0", "0F1", "0B1", "0U0-1", "0F2", "0B2", "0F3", "0B3", "0U2-3",
    ]
    assert s.num_updates(1) == 2 and not s.weight_stashing


def test_gpipe_order_both_update_options() -> None:
    s = gpipe(2, 3, 1)
    assert [str(a) for a in s.per_stage[1]] == ["1F0", "1F1", "1F2", "1B0", "1B1", "1B2", "1U0-2"]
    s = gpipe(2, 3, 2, update_per_microbatch=True)
    assert [str(a) for a in s.per_stage[0][6:9]] == ["0U0", "0U1", "0U2"]
    assert s.num_updates(0) == 6


def test_async_1f1b_order() -> None:
    s = async_1f1b(3, 2, 2)  # K = 4, warm-up 2, 1, 0
    assert [str(a) for a in s.per_stage[0]] == [
        "0F0", "0F1", "0F2", "0B0", "0U0", "0F3", "0B1", "0U1", "0B2", "0U2", "0B3", "0U3",
    ]
    assert [str(a) for a in s.per_stage[2]][:6] == ["2F0", "2B0", "2U0", "2F1", "2B1", "2U1"]
    assert s.num_updates(0) == 4


def test_async_1f1b_short_stream_warmup_is_capped() -> None:
    s = async_1f1b(5, 1, 2)  # K = 2 < M - 1
    assert [str(a) for a in s.per_stage[0]] == ["0F0", "0F1", "0B0", "0U0", "0B1", "0U1"]


def test_pipedream_is_ap_order_with_stashing() -> None:
    ap, pd = async_1f1b(4, 2, 3), pipedream(4, 2, 3)
    assert ap.per_stage == pd.per_stage
    assert pd.weight_stashing and not ap.weight_stashing


@pytest.mark.parametrize(
    "args, match",
    [
        (("zz", 2, 2, 1), "scheme='zz' is unknown: use one of wop, sp, ap, pipedream"),
        (("ap", 0, 2, 1), "stages=0"),
        (("sp", 2, 0, 1), "microbatches=0"),
        (("wop", 2, 2, 0), "steps=0"),
        (("ap", 2.5, 2, 1), "stages=2.5"),
    ],
)
def test_build_rejects_bad_settings(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
        build(*args)


def test_build_rejects_unknown_option() -> None:
    with pytest.raises(ValueError, match="does not take options"):
        build("ap", 2, 2, 1, update_per_microbatch=True)


@settings(max_examples=50, deadline=None)
@given(
    scheme=st.sampled_from(SCHEMES),
    M=st.integers(1, 6),
    Bmb=st.integers(1, 5),
    steps=st.integers(1, 3),
)
def test_every_schedule_validates_lowers_and_round_trips(scheme, M, Bmb, steps) -> None:
    s = build(scheme, M, Bmb, steps)
    K = Bmb * steps
    assert s.num_microbatches == K and s.num_stages == M
    for st_ in range(M):
        kinds = [a.kind for a in s.per_stage[st_]]
        assert kinds.count(F) == K and kinds.count(B) == K
    assert Schedule.from_text(s.to_text()) == s
    low = lower_with_comms(s)
    low.validate()
    assert low.is_lowered == (M > 1)  # one stage has nobody to talk to
    assert Schedule.from_text(low.to_text()) == low
    # the compute actions keep their per-stage order
    for a, b in zip(s.per_stage, low.per_stage):
        assert [x for x in b if x.kind in (F, B, U)] == list(a)
    # comm counts: one receive per forward on stages > 0, one send per forward on stages < M-1
    for st_, row in enumerate(low.per_stage):
        kinds = [a.kind for a in row]
        assert kinds.count(Kind.RECV_F) == (K if st_ > 0 else 0)
        assert kinds.count(Kind.SEND_F) == (K if st_ < M - 1 else 0)
        assert kinds.count(Kind.RECV_B) == (K if st_ < M - 1 else 0)
        assert kinds.count(Kind.SEND_B) == (K if st_ > 0 else 0)
    for x in (s, low):
        _assert_total_order_respects_dependencies(x)


def _assert_total_order_respects_dependencies(s: Schedule) -> None:
    order = execution_order(s)
    assert sorted(map(str, order)) == sorted(map(str, s.actions()))
    index = {}
    for n, a in enumerate(order):
        index[a] = n
    for st_, row in enumerate(s.per_stage):
        positions = [index[a] for a in row]
        assert positions == sorted(positions), f"stage {st_} order broken"
    for (st_, i), pre in _dependencies(s, strict=True).items():
        for p in pre:
            assert index[s.per_stage[p[0]][p[1]]] < index[s.per_stage[st_][i]]


def test_lowered_link_messages_in_same_order_on_both_sides() -> None:
    low = lower_with_comms(async_1f1b(4, 3, 2))
    for s in range(3):
        up = [(a.kind.value[1], a.mb) for a in low.per_stage[s]
              if a.kind in (Kind.SEND_F, Kind.RECV_B)]
        down = [(a.kind.value[1], a.mb) for a in low.per_stage[s + 1]
                if a.kind in (Kind.RECV_F, Kind.SEND_B)]
        assert up == down and len(up) == 12


def test_lowered_receives_come_before_and_sends_after_their_compute() -> None:
    low = lower_with_comms(gpipe(3, 2, 1))
    row = [str(a) for a in low.per_stage[1]]
    assert row.index("1RF0") < row.index("1F0") < row.index("1SF0")
    assert row.index("1RB1") < row.index("1B1") < row.index("1SB1")


def test_lowering_twice_is_refused() -> None:
    low = lower_with_comms(wop(2, 1, 1))
    with pytest.raises(ScheduleError, match="already lowered"):
        lower_with_comms(low)


# ------------------------------------------------------------------------------- render


def test_render_grid_for_ap() -> None:
    grid = async_1f1b(2, 2, 1).render()
    lines = grid.splitlines()
    assert lines[1].split()[2:] == ["0F0", "0F1", ".", "0B0+U0", ".", "0B1+U1"]
    assert lines[2].split()[2:] == [".", "1F0", "1B0+U0", "1F1", "1B1+U1", "."]
    assert lines[0].split() == ["0", "1", "2", "3", "4", "5"]


def test_render_marks_and_falls_back_on_deadlock() -> None:
    s = async_1f1b(2, 1, 1)
    assert ">>1B0<<" in s.render(marks=[Action(1, B, 0)])
    dead = sched(["0F0 0B0 0U0 0F1 0B1 0U1", "1F1 1F0 1B0 1U0 1B1 1U1"], K=2)
    text = dead.render()
    assert "deadlocks" in text and "stage 1: >>1F1<<" in text


# ---------------------------------------------------------------------------- validator


def _rejects(s: Schedule, *fragments: str) -> str:
    with pytest.raises(ScheduleError) as info:
        s.validate()
    msg = str(info.value)
    assert "per-stage actions" in msg and "stage 0:" in msg  # the rendered lists
    for f in fragments:
        assert f in msg, f"{f!r} not in:\n{msg}"
    return msg


GOOD = ["0F0 0F1 0B0 0U0 0B1 0U1", "1F0 1B0 1U0 1F1 1B1 1U1"]


def test_good_reference_schedule_validates() -> None:
    assert sched(GOOD, K=2).validate() is not None


def test_rejects_backward_before_forward() -> None:
    msg = _rejects(sched([GOOD[0], "1B0 1F0 1U0 1F1 1B1 1U1"], K=2),
                   "backward 1B0 comes before its forward 1F0", ">>1B0<<")
    assert "stage 1: >>1B0<< 1F0" in msg


def test_rejects_missing_update() -> None:
    _rejects(sched([GOOD[0], "1F0 1B0 1U0 1F1 1B1"], K=2),
             "gradient of 1B1 is never applied (missing update)", ">>1B1<<")


def test_rejects_duplicated_action() -> None:
    _rejects(sched(["0F0 0F0 0F1 0B0 0U0 0B1 0U1", GOOD[1]], K=2),
             "0F0 appears twice (duplicate action)", ">>0F0<< >>0F0<<")


def test_rejects_update_before_its_backward() -> None:
    _rejects(sched(["0F0 0F1 0U0 0B0 0B1 0U1", GOOD[1]], K=2),
             "update 0U0 applies micro-batch 0 before its backward 0B0", ">>0U0<<")


def test_rejects_update_listing_a_microbatch_twice() -> None:
    s = sched(["0F0 0F1 0B0 0B1 0U0,0,1", GOOD[1]], K=2)
    _rejects(s, "lists micro-batch 0 2 times", ">>0U0,0,1<<")


def test_rejects_microbatch_applied_by_two_updates() -> None:
    _rejects(sched(["0F0 0F1 0B0 0U0 0B1 0U0-1", GOOD[1]], K=2),
             "micro-batch 0 is applied by two updates")


def test_rejects_missing_forward_and_out_of_range() -> None:
    _rejects(sched(["0F0 0B0 0U0 0B1 0U1", GOOD[1]], K=2), "forward 0F1 is missing")
    _rejects(sched(["0F0 0F1 0B0 0U0 0B1 0U1 0F7", GOOD[1]], K=2), ">= num_microbatches=2")


def test_rejects_action_in_wrong_stage_list_and_wrong_stage_count() -> None:
    _rejects(sched(["0F0 0F1 0B0 0U0 0B1 0U1 1F0", GOOD[1]], K=2), "its stage must be 0")
    bad = Schedule("x", 3, 2, 2, sched(GOOD, K=2).per_stage)
    with pytest.raises(ScheduleError, match="num_stages=3 but per_stage has 2 lists"):
        bad.validate()


def test_rejects_deadlock_from_swapped_orders() -> None:
    # stage 0 waits in 0B0 for 1B0; stage 1 waits in 1F1 for 0F1, which is behind 0B0
    dead = sched(["0F0 0B0 0U0 0F1 0B1 0U1", "1F1 1F0 1B0 1U0 1B1 1U1"], K=2)
    msg = _rejects(dead, "deadlock", "stuck waiting: 0B0, 1F1", ">>0B0<<", ">>1F1<<")
    assert "stage 1: >>1F1<< 1F0" in msg


def test_rejects_lowered_schedule_with_mismatched_link_order() -> None:
    # the naive lowering (receive right before, send right after each compute): fine with
    # isend, but stage 0 sends F1 before receiving B0 while stage 1 sends B0 before receiving
    # F1 -> with blocking sends both would wait forever
    naive = sched(
        ["0F0 0SF0 0F1 0SF1 0RB0 0B0 0U0 0RB1 0B1 0U1",
         "1RF0 1F0 1B0 1SB0 1U0 1RF1 1F1 1B1 1SB1 1U1"],
        K=2,
    )
    _rejects(naive, "link 0<->1: message #1 is 0SF1 on stage 0 but 1SB0 on stage 1",
             ">>0SF1<<", ">>1SB0<<")


def test_rejects_lowered_compute_without_its_receive() -> None:
    low = lower_with_comms(wop(2, 1, 1))
    rows = [tuple(a for a in r if a != Action(1, Kind.RECV_F, 0)) for r in low.per_stage]
    broken = Schedule(low.scheme, 2, 1, 1, tuple(rows))
    _rejects(broken, "1F0 has no 1RF0 before it", ">>1F0<<")


def test_execution_order_simple_case() -> None:
    # unit-cost starts: 0F0 0 | 0F1 1, 1F0 1 | 1F1 2 | 1B0 3 | 0B0 4, 1B1 4 | 0B1 5, 1U 5 | 0U 6
    order = [str(a) for a in execution_order(gpipe(2, 2, 1))]
    assert order == ["0F0", "0F1", "1F0", "1F1", "1B0", "0B0", "1B1", "0B1", "1U0-1", "0U0-1"]
