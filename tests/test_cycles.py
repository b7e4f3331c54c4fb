"""Cycle model: closed forms of SPEC section 5, versions/staleness, AIMC costs, Gantt output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analogpipe.pipeline.schedule import Kind, lower_with_comms
from analogpipe.pipeline.schedules import async_1f1b, build, gpipe, pipedream, wop
from analogpipe.timing import (
    AimcCosts,
    Costs,
    LayerSpec,
    closed_form,
    layer_times,
    num_tiles,
    save_png,
    save_trace,
    simulate,
    stage_costs,
    to_chrome_trace,
    wop_makespan,
)

# ------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("scheme", ["wop", "sp", "ap", "pipedream"])
@pytest.mark.parametrize("M", [1, 2, 4, 8])
@pytest.mark.parametrize("B", [1, 4, 8])
@pytest.mark.parametrize("steps", [1, 3])
def test_simulate_equals_closed_form_unit_costs(scheme, M, B, steps) -> None:
    tl = simulate(build(scheme, M, B, steps))
    cf = closed_form(scheme, M, B, steps)
    assert tl.makespan == pytest.approx(cf["makespan"])
    assert tl.density == pytest.approx(cf["density"])
    assert tl.bubble_fraction == pytest.approx(1 - cf["density"])
    assert tl.speedup_over_wop == pytest.approx(cf["speedup_over_wop"])


def test_closed_form_table_values() -> None:
    # SPEC table with M = 4, B = 4, t_f = t_b = 1
    assert closed_form("wop", 4, 4, 1) == {"makespan": 32, "density": 0.25, "speedup_over_wop": 1}
    sp = closed_form("sp", 4, 4, 1)
    assert sp["makespan"] == 14 and sp["density"] == pytest.approx(4 / 7)
    assert sp["speedup_over_wop"] == pytest.approx(16 / 7)
    ap = closed_form("ap", 4, 4, 5)  # K = 20
    assert ap["makespan"] == 46 and ap["density"] == pytest.approx(20 / 23)
    with pytest.raises(ValueError, match="scheme='x' is unknown"):
        closed_form("x", 2, 2)
    with pytest.raises(ValueError, match="stages=0"):
        closed_form("ap", 0, 2)


@settings(max_examples=50, deadline=None)
@given(
    scheme=st.sampled_from(["wop", "sp", "ap", "pipedream"]),
    M=st.integers(1, 6),
    B=st.integers(1, 6),
    steps=st.integers(1, 3),
    t_f=st.integers(1, 4),
    t_b=st.integers(1, 4),
)
def test_closed_forms_hold_for_any_uniform_costs(scheme, M, B, steps, t_f, t_b) -> None:
    s = build(scheme, M, B, steps)
    tl = simulate(s, Costs(t_f=t_f, t_b=t_b))
    cf = closed_form(scheme, M, B, steps, t_f, t_b)
    assert tl.makespan == pytest.approx(cf["makespan"])
    assert tl.density == pytest.approx(cf["density"])
    K = B * steps
    assert tl.busy == pytest.approx([K * (t_f + t_b)] * M)
    assert 0 < tl.density <= 1
    # lowering never changes the timing, even with transfer costs
    c = Costs(t_f=t_f, t_b=t_b, t_u=0.5, t_comm=0.25)
    assert simulate(lower_with_comms(s), c).makespan == pytest.approx(simulate(s, c).makespan)


@settings(max_examples=40, deadline=None)
@given(
    M=st.integers(1, 5),
    B=st.integers(1, 4),
    steps=st.integers(1, 3),
    data=st.data(),
)
def test_wop_recurrence_equals_simulation(M, B, steps, data) -> None:
    per_stage = st.lists(st.floats(0, 3), min_size=M, max_size=M)
    costs = Costs(t_f=data.draw(per_stage), t_b=data.draw(per_stage), t_u=data.draw(per_stage),
                  t_comm=data.draw(st.lists(st.floats(0, 2), min_size=M - 1, max_size=M - 1)))
    want = simulate(wop(M, B, steps), costs).makespan
    assert wop_makespan(M, B, B * steps, costs) == pytest.approx(want)


def test_pipedream_has_ap_timing() -> None:
    a, p = simulate(async_1f1b(4, 4, 3)), simulate(pipedream(4, 4, 3))
    assert a.makespan == p.makespan and a.density == p.density
    assert a.staleness == p.staleness and a.versions == p.versions


# --------------------------------------------------------------------- versions, staleness


@pytest.mark.parametrize("M, B, steps", [(1, 4, 2), (2, 3, 2), (4, 4, 3), (8, 2, 8)])
def test_ap_versions_staleness_and_in_flight(M, B, steps) -> None:
    K = B * steps
    tl = simulate(async_1f1b(M, B, steps))
    for s in range(M):
        for k in range(K):
            assert tl.versions[(s, k)] == (max(0, k - (M - 1 - s)), k)
    assert K >= M
    assert tl.staleness == [M - 1 - s for s in range(M)]
    assert tl.peak_in_flight == [M - s for s in range(M)]
    assert tl.num_updates == [K] * M


def test_ap_short_stream_in_flight_is_capped_by_stream() -> None:
    tl = simulate(async_1f1b(6, 2, 1))  # K = 2 < M
    assert tl.peak_in_flight == [2, 2, 2, 2, 2, 1]


@pytest.mark.parametrize("per_mb", [False, True])
def test_sp_and_wop_have_no_staleness(per_mb) -> None:
    M, B, steps = 4, 3, 3
    sp = simulate(gpipe(M, B, steps, update_per_microbatch=per_mb))
    assert sp.staleness == [0] * M
    per_step = B if per_mb else 1
    for (_, k), (fv, bv) in sp.versions.items():
        assert fv == bv == (k // B) * per_step  # every step sees the weights after the flush
    assert sp.peak_in_flight == [B] * M
    assert sp.num_updates == [steps * per_step] * M
    w = simulate(wop(M, B, steps))
    assert w.staleness == [0] * M and w.peak_in_flight == [1] * M
    assert all(fv == bv == k // B for (_, k), (fv, bv) in w.versions.items())


# ------------------------------------------------------------------------------ costs


def test_per_stage_costs_and_transfers_by_hand() -> None:
    # WOP, 2 stages, 1 micro-batch: F0 [0,1], transfer 0.5, F1 [1.5,3.5], B1 [3.5,6.5],
    # transfer 0.5, B0 [7,9], U0 [9, 9.25]
    tl = simulate(wop(2, 1, 1), Costs(t_f=[1, 2], t_b=[2, 3], t_u=0.25, t_comm=[0.5]))
    got = {str(e.action): (e.start, e.end) for e in tl.events}
    assert got == {
        "0F0": (0, 1), "1F0": (1.5, 3.5), "1B0": (3.5, 6.5), "1U0": (6.5, 6.75),
        "0B0": (7, 9), "0U0": (9, 9.25),
    }
    assert tl.makespan == 9.25
    assert tl.busy == [3, 5]
    assert tl.density == pytest.approx(8 / (2 * 9.25))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"t_f": -1}, "Costs.t_f=-1"),
        ({"t_b": float("nan")}, "Costs.t_b"),
        ({"t_f": [1, 2, 3]}, "Costs.t_f has 3 values but the schedule has 2 stages"),
        ({"t_comm": [1, 1]}, "Costs.t_comm has 2 values but the schedule has 1 stage boundaries"),
    ],
)
def test_costs_are_checked(kw, match) -> None:
    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
        simulate(wop(2, 1, 1), Costs(**kw))


# ------------------------------------------------------------------------------- AIMC


def test_aimc_stage_costs_by_hand() -> None:
    layers = [
        LayerSpec("stem.0", "stem", "conv2d", 27, 16, mvms_per_sample=64,
                  out_elements_per_sample=1024),
        LayerSpec("block.0", "block", "conv2d", 144, 16, 64, 1024),
        LayerSpec("fc", "fc", "linear", 16, 10, 1, 10),
    ]
    aimc = AimcCosts(t_mvm=1.0, t_pulse=0.5, bl=4, t_transfer=0.01)
    c = stage_costs(layers, [["stem", "block"], ["fc"]], micro_batch_size=2, aimc=aimc)
    # stage 0: 2 convs * 64 px * 2 samples = 256 MVMs; backward: the transposed MVMs of
    # "block" only (128: the input layer "stem" needs none) + 256 * 4 * 0.5 pulse slots
    assert c.t_f == [256.0, 2.0]
    assert c.t_b == [128.0 + 512.0, 2.0 + 4.0]
    # counting the stem's transposed MVM as well (a stage that is not the network's input)
    assert stage_costs(layers, [["stem", "block"], ["fc"]], 2, aimc,
                       first_is_input=False).t_b[0] == 256.0 + 512.0
    assert c.t_comm == [pytest.approx(1024 * 2 * 0.01)]
    # same with a block -> stage mapping and index groups
    assert stage_costs(layers, {"stem": 0, "block": 0, "fc": 1}, 2, aimc) == c
    assert stage_costs(layers, [[0, 1], [2]], 2, aimc) == c
    # digital work per output element adds to both passes
    d = stage_costs(layers, [[0], [1, 2]], 1, AimcCosts(t_mvm=1, t_pulse=0, t_digital=0.1))
    assert d.t_f == [pytest.approx(64 + 102.4), pytest.approx(64 + 102.4 + 1 + 1.0)]
    # the output size leaving a stage can be overridden (e.g. a pooling block)
    e = stage_costs(layers, [[0, 1], [2]], 2, aimc, block_out_elements={"block": 16})
    assert e.t_comm == [pytest.approx(16 * 2 * 0.01)]


def test_aimc_defaults_make_update_cost_one_mvm() -> None:
    layer = LayerSpec("fc", "fc", "linear", 2000, 1000, 1, 1000)
    t_f, t_b = layer_times(layer, 8)
    assert t_f == 8 and t_b == pytest.approx(16)  # BL = 31 pulses of 1/31 = one MVM time
    # the input layer has no transposed MVM; a measured mean BL of 15.5 halves the update
    assert layer_times(layer, 8, input_layer=True)[1] == pytest.approx(8)
    assert layer_times(layer, 8, AimcCosts(bl=15.5))[1] == pytest.approx(12)
    with pytest.raises(ValueError, match="AimcCosts.bl=0.5"):
        AimcCosts(bl=0.5)
    assert num_tiles(layer) == 4 * 2  # ceil(2000/512) * ceil(1000/512), in parallel: same time


def test_aimc_rejects_bad_mappings() -> None:
    layers = [LayerSpec("a", "a", "linear", 4, 4, 1, 4), LayerSpec("b", "b", "linear", 4, 4, 1, 4)]
    with pytest.raises(ValueError, match="not assigned"):
        stage_costs(layers, {"a": 0}, 1)
    with pytest.raises(ValueError, match="contiguous"):
        stage_costs(layers, {"a": 1, "b": 0}, 1)
    with pytest.raises(ValueError, match="micro_batch_size=0"):
        stage_costs(layers, [["a"], ["b"]], 0)
    with pytest.raises(ValueError, match="kind='dense'"):
        LayerSpec("x", "x", "dense", 1, 1, 1, 1)  # type: ignore[arg-type]


def test_aimc_costs_feed_the_simulator() -> None:
    layers = [LayerSpec(f"l{i}", f"l{i}", "linear", 64, 64, 1, 64) for i in range(4)]
    c = stage_costs(layers, [[0, 1], [2, 3]], 4, AimcCosts(t_transfer=0.0), first_is_input=False)
    tl = simulate(async_1f1b(2, 4, 2), c)
    assert tl.makespan == pytest.approx(closed_form("ap", 2, 4, 2, t_f=8, t_b=16)["makespan"])


# ------------------------------------------------------------------------------ Gantt


def test_chrome_trace_events(tmp_path) -> None:
    tl = simulate(gpipe(2, 2, 1))
    trace = to_chrome_trace(tl)
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == len(tl.events) == 2 * (2 + 2 + 1)
    first = next(e for e in xs if e["name"] == "1F1")
    assert (first["pid"], first["tid"], first["ts"], first["dur"]) == (0, 1, 2000.0, 1000.0)
    path = save_trace(tl, tmp_path / "t.json")
    assert json.loads(path.read_text())["traceEvents"][-1]["ph"] == "X"
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temp file left behind


def test_png_is_written_atomically(tmp_path) -> None:
    tl = simulate(async_1f1b(3, 2, 2))
    path = save_png(tl, tmp_path / "g.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_png(tl, tmp_path / "missing" / "g.png")


def test_timing_and_schedules_do_not_import_torch() -> None:
    code = (
        "import sys, analogpipe.timing, analogpipe.pipeline.schedules, "
        "analogpipe.pipeline.partition, analogpipe.commands.schedule\n"
        "from analogpipe.timing import simulate\n"
        "from analogpipe.pipeline.schedules import build\n"
        "simulate(build('ap', 3, 2, 2))\n"
        "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_update_events_take_t_u() -> None:
    tl = simulate(async_1f1b(2, 1, 2), Costs(t_u=0.5))
    ups = [e for e in tl.events if e.action.kind is Kind.UPDATE]
    assert len(ups) == 4 and all(e.end - e.start == 0.5 for e in ups)
