"""Multi-process executor: bit-identical to LocalPipeline; faults end every worker; shape check.

Every spawn costs seconds (each child imports torch), so one 2-process launch runs all 2-rank
checks and module-scoped fixtures hand its results to the individual tests. Workers live at
module level: the "spawn" start method imports them by name.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
import torch
from torch import nn

from analogpipe.nn import convert_to_analog
from analogpipe.pipeline import schedules
from analogpipe.pipeline.dist import (
    HEADER_LEN,
    DistributedPipeline,
    PipelineCommError,
    StageShapeError,
    _header,
    _parse_header,
)
from analogpipe.pipeline.launch import WorkerFailed, launch_local
from analogpipe.pipeline.local import LocalPipeline
from analogpipe.presets import paper_config

LOSS = nn.functional.cross_entropy
LR = 0.05
B, STEPS = 2, 2  # per run: 4 micro-batches; two runs (the second with offset) per case
SCHEMES = ("wop", "sp", "ap")


# --- model, data, cases (identical in the workers and in the test process) -----------------
def _net(kind: str) -> nn.Sequential:
    torch.manual_seed(11)
    layers: list[nn.Module] = [nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16)]
    if kind == "digital":
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.Tanh(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 4)]
    model = nn.Sequential(*layers)
    if kind == "analog":  # output noise + 8-bit IO: the per-tile generators must line up
        model = convert_to_analog(model, paper_config(0.8), seed=7)
    return model


def _split(model: nn.Sequential, M: int) -> list[nn.Sequential]:
    n = len(model)
    cuts = [round(i * n / M) for i in range(M + 1)]
    return [model[cuts[i]:cuts[i + 1]] for i in range(M)]


def _batch(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + k)
    return torch.randn(6, 12, generator=g), torch.randint(0, 4, (6,), generator=g)


def _momentum(kind: str, scheme: str) -> float:
    return 0.5 if (kind, scheme) == ("digital", "ap") else 0.0  # exercises optimizer state


def _cases(M: int) -> list[tuple[str, str]]:
    return [(kind, scheme) for kind in ("analog", "digital") for scheme in SCHEMES]


def _tensors(sd: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _reference(kind: str, scheme: str, M: int):
    """LocalPipeline on the same model and data: two runs (offset 0 and 4*), then a third."""
    stages = _split(_net(kind), M)
    pipe = LocalPipeline(stages, lr=LR, loss_fn=LOSS, momentum=_momentum(kind, scheme))
    sched = schedules.build(scheme, M, B, STEPS)
    runs = [pipe.run(sched, _batch, offset=0), pipe.run(sched, _batch, offset=B * STEPS)]
    states = [_tensors(s.state_dict()) for s in stages]
    resumed = pipe.run(sched, _batch, offset=2 * B * STEPS)
    resumed_states = [_tensors(s.state_dict()) for s in stages]
    return runs, states, resumed, resumed_states


# --- workers -----------------------------------------------------------------------------------
def _parity_worker(rank: int, world_size: int, args: dict) -> dict:
    out: dict = {"cases": {}}
    for kind, scheme in args["cases"]:
        stage = _split(_net(kind), world_size)[rank]
        pipe = DistributedPipeline(stage, rank, world_size, lr=LR, loss_fn=LOSS,
                                   momentum=_momentum(kind, scheme))
        # the nccl receive order (header and payload at the RF/RB action), exercised on gloo
        pipe.eager_recv = bool(args.get("eager"))
        sched = schedules.build(scheme, world_size, B, STEPS)
        runs = [pipe.run(sched, _batch, offset=0),
                pipe.run(sched, _batch, offset=B * STEPS)]
        dicts = pipe.stage_state_dicts()
        case = {"runs": runs, "stats": pipe.last_stats}
        if rank == 0:
            case["states"] = [_tensors(d["stage"]) for d in dicts]
        # resume: a differently initialised stage restored from rank 0's gathered states
        fresh = _split(_net(kind), world_size)[rank]
        with torch.no_grad():  # make sure nothing of the fresh stage survives the load
            for t in fresh.state_dict().values():
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    t.add_(0.25)
        resumed = DistributedPipeline(fresh, rank, world_size, lr=LR, loss_fn=LOSS,
                                      momentum=_momentum(kind, scheme))
        resumed.load_stage_state(dicts if rank == 0 else None)
        case["resumed"] = resumed.run(sched, _batch, offset=2 * B * STEPS)
        after = resumed.stage_state_dicts()
        if rank == 0:
            case["resumed_states"] = [_tensors(d["stage"]) for d in after]
        out["cases"][(kind, scheme)] = case
    if args.get("mismatch"):
        out["mismatch"] = _mismatch_check(rank, world_size)
    return out


def _mismatch_check(rank: int, world_size: int) -> dict:
    """Stage 0 outputs 8 features, stage 1 expects 7: every rank must raise at start-up."""
    torch.manual_seed(0)
    model = convert_to_analog(nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(7, 4)),
                              paper_config(0.8), seed=3)
    stages = [model[:2], model[2:]] + [nn.Identity()] * (world_size - 2)
    stage = stages[rank]
    tiles = [m for m in stage.modules() if hasattr(m, "_generators")]
    for t in tiles:  # create the generators so their states can be compared
        for purpose in ("forward", "backward", "update"):
            t.generator(purpose)
    gen_before = [{k: g.get_state() for k, g in t._generators.items()} for t in tiles]
    rng_before = torch.get_rng_state()
    weights_before = _tensors(stage.state_dict())
    pipe = DistributedPipeline(stage, rank, world_size, lr=LR, loss_fn=LOSS)
    try:
        pipe.check_shapes(torch.zeros(6, 12) if rank == 0 else None)
        message = None
    except StageShapeError as exc:
        message = str(exc)
    gen_after = [{k: g.get_state() for k, g in t._generators.items()} for t in tiles]
    untouched = (torch.equal(rng_before, torch.get_rng_state())
                 and all(torch.equal(a[k], b[k]) for a, b in zip(gen_before, gen_after)
                         for k in a)
                 and all(torch.equal(v, stage.state_dict()[k])
                         for k, v in weights_before.items()))
    return {"message": message, "untouched": untouched}


class _Fault(nn.Module):
    """Identity that raises, or SIGKILLs its own process, on its `at`-th forward call."""

    def __init__(self, mode: str, at: int) -> None:
        super().__init__()
        self.mode, self.at, self.calls = mode, at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure in stage 1 at forward call {self.calls}")
        return x


def _fault_worker(rank: int, world_size: int, mode: str) -> None:
    stages = _split(_net("digital"), world_size)
    stage = stages[rank]
    if rank == 1:
        # the start-up shape check runs a deep copy, so `at` counts real forwards only
        stage = nn.Sequential(_Fault(mode, at=3), stage)
    pipe = DistributedPipeline(stage, rank, world_size, lr=LR, loss_fn=LOSS)
    pipe.run(schedules.build("ap", world_size, 4, 4), _batch)


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_ranks():
    cases = _cases(2)
    t0 = time.monotonic()
    results = launch_local(_parity_worker, 2, {"cases": cases, "mismatch": True},
                           threads_per_worker=1, timeout_s=240)
    return results, time.monotonic() - t0


@pytest.fixture(scope="module")
def references():
    """References computed with the workers' thread count (1), so kernels match exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {(kind, scheme, M): _reference(kind, scheme, M)
                for M in (2, 3) for kind, scheme in _cases(M)}
    finally:
        torch.set_num_threads(threads)


def _assert_same(dist_runs, dist_states, ref_runs, ref_states, what):
    for i, (got, ref) in enumerate(zip(dist_runs, ref_runs)):
        assert got.losses == ref.losses, f"{what} run {i}: losses differ"
        assert [(r.correct, r.count) for r in got.records.values()] == \
            [(r.correct, r.count) for r in ref.records.values()], f"{what} run {i}: records"
        assert got.versions == ref.versions, f"{what} run {i}: weight versions differ"
        assert got.peak_in_flight == ref.peak_in_flight, f"{what} run {i}: peak in flight"
    assert len(dist_states) == len(ref_states)
    for s, (got, ref) in enumerate(zip(dist_states, ref_states)):
        assert got.keys() == ref.keys(), f"{what} stage {s}: state_dict keys differ"
        for k in ref:
            assert torch.equal(got[k], ref[k]), f"{what} stage {s}: {k} differs"


# --- tests: 2 processes --------------------------------------------------------------------
@pytest.mark.parametrize("kind,scheme", _cases(2), ids=lambda v: str(v))
def test_two_processes_equal_local_pipeline_bit_for_bit(two_ranks, references, kind, scheme):
    results, _ = two_ranks
    case = results[0]["cases"][(kind, scheme)]
    ref_runs, ref_states, _, _ = references[(kind, scheme, 2)]
    _assert_same(case["runs"], case["states"], ref_runs, ref_states, f"{kind}/{scheme} M=2")


@pytest.mark.parametrize("kind,scheme", _cases(2), ids=lambda v: str(v))
def test_restored_state_continues_exactly(two_ranks, references, kind, scheme):
    """stage_state_dicts -> load_stage_state into fresh stages -> the next run equals the
    single-process pipeline continuing (weights, momentum, tile generators all restored)."""
    results, _ = two_ranks
    case = results[0]["cases"][(kind, scheme)]
    _, _, ref_resumed, ref_resumed_states = references[(kind, scheme, 2)]
    _assert_same([case["resumed"]], case["resumed_states"], [ref_resumed],
                 ref_resumed_states, f"{kind}/{scheme} resumed")


def test_every_rank_returns_the_same_complete_run(two_ranks):
    results, _ = two_ranks
    for key, case in results[0]["cases"].items():
        other = results[1]["cases"][key]
        assert case["runs"] == other["runs"], key
        run = case["runs"][0]
        assert sorted(run.records) == list(range(B * STEPS))
        assert {s for s, _ in run.versions} == {0, 1}
        assert len(run.peak_in_flight) == 2
        stats = case["stats"]
        assert [s.rank for s in stats] == [0, 1]
        assert all(s.forwards == s.backwards == B * STEPS for s in stats)
    ap = results[0]["cases"][("analog", "ap")]["runs"][0]
    assert ap.staleness(0) == {0: 1, 1: B * STEPS - 1} and ap.staleness(1) == {0: B * STEPS}


def test_shape_mismatch_is_reported_on_every_rank_at_start_up(two_ranks):
    results, _ = two_ranks
    for rank in (0, 1):
        report = results[rank]["mismatch"]
        msg = report["message"]
        assert msg is not None, f"rank {rank} did not raise"
        assert "stage 0 outputs [6, 8]" in msg and "stage 1" in msg, msg
        assert "in_features=7" in msg, msg
        assert report["untouched"], f"rank {rank}: the check changed RNG state or weights"


# --- tests: 3 processes --------------------------------------------------------------------
@pytest.mark.slow
def test_three_processes_equal_local_pipeline_bit_for_bit(references):
    """Also runs the receive order used with nccl (blocking receives at RF/RB)."""
    cases = _cases(3)
    results = launch_local(_parity_worker, 3, {"cases": cases, "eager": True},
                           threads_per_worker=1, timeout_s=300)
    for kind, scheme in cases:
        case = results[0]["cases"][(kind, scheme)]
        ref_runs, ref_states, ref_resumed, ref_resumed_states = references[(kind, scheme, 3)]
        what = f"{kind}/{scheme} M=3"
        _assert_same(case["runs"], case["states"], ref_runs, ref_states, what)
        _assert_same([case["resumed"]], case["resumed_states"], [ref_resumed],
                     ref_resumed_states, what + " resumed")
        for r in (1, 2):
            assert results[r]["cases"][(kind, scheme)]["runs"] == case["runs"]
    ap = results[0]["cases"][("analog", "ap")]["runs"][0]
    assert ap.peak_in_flight == [3, 2, 1]


# --- tests: faults -------------------------------------------------------------------------
def _assert_reaped(exc: WorkerFailed) -> None:
    assert len(exc.pids) == 2
    for pid in exc.pids:  # a zombie would still answer signal 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_failing_worker_ends_all_and_names_rank_and_cause(mode):
    t0 = time.monotonic()
    with pytest.raises(WorkerFailed) as info:
        launch_local(_fault_worker, 2, mode, threads_per_worker=1, timeout_s=120)
    elapsed = time.monotonic() - t0
    exc = info.value
    assert exc.rank == 1, str(exc)
    if mode == "raise":
        assert "injected failure in stage 1" in str(exc)
        assert "RuntimeError" in exc.cause
    else:
        assert "killed by signal 9 (SIGKILL)" in exc.cause, str(exc)
    assert "rank 1" in str(exc)
    assert exc.cleanup_s < 30, f"ending the other workers took {exc.cleanup_s:.1f} s"
    assert elapsed < 90, f"took {elapsed:.1f} s (start-up included)"
    _assert_reaped(exc)


# --- tests: in-process pieces --------------------------------------------------------------
def test_header_round_trip_and_rejects_corrupt_headers():
    t = torch.zeros(3, 4, 5, dtype=torch.float64)
    h = _header(t)
    assert h.shape == (HEADER_LEN,)
    assert _parse_header(h, "x") == ((3, 4, 5), torch.float64)
    assert _parse_header(_header(torch.tensor(1.0)), "x") == ((), torch.float32)
    bad = h.clone()
    bad[0] = 42
    with pytest.raises(PipelineCommError, match="corrupt message header"):
        _parse_header(bad, "rank 1: activation")
    with pytest.raises(PipelineCommError, match="dims"):
        _header(torch.zeros([1] * 9))


def test_worker_failed_message_names_rank_cause_and_others():
    exc = WorkerFailed(1, "RuntimeError: boom", "Traceback ...\nRuntimeError: boom",
                       {0: "RuntimeError: Connection closed by peer"}, [1, 2])
    text = str(exc)
    assert text.startswith("pipeline worker rank 1 failed: RuntimeError: boom")
    assert "Traceback" in text and "rank 0: RuntimeError: Connection closed by peer" in text


def test_launch_local_rejects_bad_arguments():
    with pytest.raises(ValueError, match="world_size"):
        launch_local(_fault_worker, 0, None)
    with pytest.raises(ValueError, match="timeout_s"):
        launch_local(_fault_worker, 2, None, timeout_s=0)


def test_pipeline_needs_an_initialised_process_group():
    with pytest.raises(RuntimeError, match="not initialised"):
        DistributedPipeline(nn.Linear(2, 2), 0, 1, lr=LR, loss_fn=LOSS)
