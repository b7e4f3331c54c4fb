"""Beyond the paper (groups beyond-floor, beyond-staleness, beyond-cost): the runs are the
paper's runs where they can be, the runs differ only in what they compare, the verdict rules
follow the numbers, and the teacher run is exact on the ideal device."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from analogpipe.experiments import beyond
from analogpipe.experiments import stats as st
from analogpipe.experiments.analysis import Results, RunData
from analogpipe.experiments.paper import staleness_runs, tau_runs
from analogpipe.experiments.plan import plan, quick_settings, run_name

S = quick_settings()
TT_FIELDS = {"algorithm", "tt_gamma", "transfer_every", "n_reads_per_transfer", "transfer_lr",
             "fast_lr"}


def _diff(a, b) -> set[str]:
    da, db = a.to_dict(), b.to_dict()
    return {k for k in da if da[k] != db[k]}


# ---------------------------------------------------------------------- the runs
def test_analog_sgd_runs_are_the_paper_groups_runs() -> None:
    tau = {run_name(c): c for c in tau_runs(S)}
    stale = {run_name(c): c for c in staleness_runs(S)}
    sgd = [c for c in beyond.floor_runs(S) if c.algorithm == "analog-sgd"]
    assert sgd and all(tau[run_name(c)] == c for c in sgd)
    none = [c for c in beyond.stale_runs(S) if c.delay_compensation == "none"]
    assert none and all(stale[run_name(c)] == c for c in none)
    # and the plan trains each once, listed under both groups
    specs = {sp.name: sp for sp in plan(S)}
    assert all({"tau", "beyond-floor"} <= set(specs[run_name(c)].groups) for c in sgd)


def test_tiki_taka_runs_differ_from_analog_sgd_only_in_the_algorithm() -> None:
    runs = beyond.floor_runs(S)
    by = {(c.stages, c.device_model, c.tau, c.seed, c.algorithm): c for c in runs}
    pairs = [(c, by[(c.stages, c.device_model, c.tau, c.seed, "analog-sgd")])
             for c in runs if c.algorithm == "tiki-taka"]
    assert len(pairs) == S.seeds * len(S.bt_stages) * (len(beyond.tt_taus(S)) + 1)
    for tt, sgd in pairs:
        assert _diff(tt, sgd) <= TT_FIELDS and "algorithm" in _diff(tt, sgd)
    # along Tiki-Taka's sweep only the device bound changes
    tts = [c for c in runs if c.algorithm == "tiki-taka" and c.seed == 0]
    assert all(_diff(c, tts[0]) <= {"tau", "device_model"} for c in tts)


def test_pipemare_runs_differ_only_in_the_delay_compensation() -> None:
    runs = beyond.stale_runs(S)
    assert beyond.stale_stages(S) == (4, 8)
    for c in runs:
        if c.delay_compensation == "pipemare":
            twin = replace(c, delay_compensation="none")
            assert twin in runs and _diff(c, twin) == {"delay_compensation"}
    assert beyond.stale_stages(replace(S, stage_list=(1, 2))) == (2,)


# ---------------------------------------------------------------------- verdict rules
def _teacher(sgd_ratio: float, tt_ratio: float, spread: float) -> list[dict]:
    runs = []
    for seed in range(5):
        e = spread * (seed - 2)
        for M in S.bt_teacher_stages:
            for alg, ratio in (("analog-sgd", sgd_ratio), ("tiki-taka", tt_ratio)):
                for t, v in ((min(S.sweep_taus), 0.02 * ratio * math.exp(e)),
                             (math.inf, 0.02)):
                    runs.append({"algorithm": alg, "stages": M, "tau": t, "seed": seed,
                                 "final": v, "status": "done", "max_saturation": 0.5,
                                 "cpu_s": 1.0, "samples": 100})
    return runs


def _digits(d_sgd: float, d_tt: float) -> Results:
    runs = []
    for seed in range(S.seeds):
        for alg, M, t in beyond.floor_cells(S):
            cfg = beyond.floor_config(S, alg, M, t, seed)
            # the smallest tau: the set change plus a seed spread (paired CI half-width 0.020)
            acc = 0.9 + (0.0 if math.isinf(t) or t != min(S.sweep_taus) else
                         (d_sgd if alg == "analog-sgd" else d_tt) + 0.01 * (seed - 2))
            runs.append(RunData(run_name(cfg), cfg.to_dict(), ["beyond-floor"], "done",
                                [{"epoch": S.epochs, "test_acc": acc, "samples": 1000,
                                  "wall_s": 1.0}]))
    return Results(runs)


@pytest.mark.parametrize("sgd_ratio, tt_ratio, spread, verdict", [
    (1.5, 1.0, 0.01, st.SUPPORTED),          # SGD grows, TT flat
    (1.5, 1.5, 0.01, st.NOT_SUPPORTED),      # TT grows as much
    (0.8, 1.0, 0.01, st.NOT_SUPPORTED),      # SGD's floor shrinks
    (1.05, 1.0, 0.3, st.INCONCLUSIVE),       # CIs too wide
])
def test_teacher_floor_verdict_follows_the_rule(sgd_ratio, tt_ratio, spread, verdict) -> None:
    a = beyond.floor_analyse(_digits(-0.1, 0.0), S,
                             {"beyond-floor": _teacher(sgd_ratio, tt_ratio, spread)})
    teacher = [v for v in a["verdicts"] if v["claim"].startswith("Teacher")]
    assert len(teacher) == len(S.bt_teacher_stages)
    assert {v["verdict"] for v in teacher} == {verdict}
    test = a["teacher"]["tests"][0]
    assert _i(test["analog-sgd"]).mean == pytest.approx(sgd_ratio)  # geometric mean of ratios


def _i(d: dict) -> st.Interval:
    return st.Interval.from_dict(d)


@pytest.mark.parametrize("d_sgd, d_tt, verdict", [
    (-0.10, 0.0, st.SUPPORTED), (-0.10, -0.10, st.NOT_SUPPORTED), (0.05, 0.0, st.NOT_SUPPORTED),
    (-0.10, -0.03, st.INCONCLUSIVE),  # TT's CI straddles the -0.03 margin
])
def test_digits_floor_verdict_follows_the_rule(d_sgd, d_tt, verdict) -> None:
    a = beyond.floor_analyse(_digits(d_sgd, d_tt), S, {})
    (v,) = [v for v in a["verdicts"] if v["claim"].startswith("Digits")]
    assert v["verdict"] == verdict
    test = a["digits"]["tests"][0]
    assert _i(test["analog-sgd"]).mean == pytest.approx(d_sgd)
    assert _i(test["tiki-taka"]).mean == pytest.approx(d_tt)
    assert any(r["key"] == "0.8" and r["algorithm"] == "analog-sgd" for r in a["digits"]["rows"])


def _stale(pipemare_at: float) -> Results:
    """Digital at 1.0 (target 0.9), AP(1) and AP(M) reach 0.9 at the given samples."""
    runs = []
    for seed in range(S.seeds):
        jitter = 1 + 0.01 * seed
        cells = [(c, None) for c in beyond.stale_runs(S) if c.seed == seed]
        for cfg, _ in cells:
            if cfg.scheme == "digital":
                curve = [{"epoch": S.epochs, "test_acc": 1.0, "samples": 1000}]
            else:
                at = 100.0 * (1 if cfg.stages == 1 else 2 if cfg.delay_compensation == "none"
                              else pipemare_at) * jitter
                curve = [{"epoch": 1, "test_acc": S.chance, "samples": at / 2},
                         {"epoch": S.epochs, "test_acc": 0.9, "samples": at}]
            runs.append(RunData(run_name(cfg), cfg.to_dict(), ["beyond-staleness"], "done",
                                curve))
    return Results(runs)


@pytest.mark.parametrize("pipemare_at, verdict", [(1.5, st.SUPPORTED), (3.0, st.NOT_SUPPORTED)])
def test_pipemare_verdict_and_ratios(pipemare_at, verdict) -> None:
    a = beyond.stale_analyse(_stale(pipemare_at), S, {})
    assert a["verdicts"][0]["verdict"] == verdict
    rows = {(x["M"], x["dc"]): x for x in a["rows"]}
    assert _i(rows[(4, "none")]["ratio"]).mean == pytest.approx(2.0)
    assert _i(rows[(8, "pipemare")]["ratio"]).mean == pytest.approx(pipemare_at)
    assert _i(rows[(8, "pipemare")]["effect"]).mean == pytest.approx(pipemare_at / 2)


# ---------------------------------------------------------------------- the teacher run
def test_teacher_run_on_the_ideal_device_is_plain_sgd() -> None:
    """Analog SGD, ideal device, perfect IO, expected update, M = 1 = digital SGD on the same
    stream (a float64 torch loop written independently from the pipeline)."""
    s = replace(S, bt_teacher_steps=60)
    r = beyond.teacher_run(s, "analog-sgd", 1, math.inf, seed=3)
    _, x, y, xt, yt = beyond.teacher_data(3, s.bt_teacher_noise)
    g = torch.Generator().manual_seed(20_011 + 3)
    dims = beyond.TEACHER_DIMS
    ws = [((torch.rand(dims[i + 1], dims[i], generator=g) * 2 - 1) * beyond.TEACHER_SCALE
           ).double() for i in range(len(dims) - 1)]
    gen = torch.Generator().manual_seed(30_011 + 3)
    order = torch.cat([torch.randperm(x.shape[0], generator=gen) for _ in range(2)])
    b = beyond.TEACHER_BATCH
    for k in range(s.bt_teacher_steps):
        idx = order[k * b:(k + 1) * b]
        params = [w.clone().requires_grad_(True) for w in ws]
        h = x[idx].double()
        for w in params:
            h = h @ w.T
        torch.nn.functional.mse_loss(h, y[idx].double()).backward()
        ws = [w - s.lr * p.grad for w, p in zip(ws, params)]
    h = xt.double()
    for w in ws:
        h = h @ w.T
    assert r["status"] == "done" and r["curve"][-1][0] == s.bt_teacher_steps * b
    assert r["curve"][-1][1] == pytest.approx(float(torch.nn.functional.mse_loss(
        h, yt.double())), rel=1e-4)


def test_tiki_taka_teacher_run_learns() -> None:
    s = replace(S, bt_teacher_steps=100)
    r = beyond.teacher_run(s, "tiki-taka", 2, 0.5, seed=0)
    assert r["status"] == "done" and r["curve"][-1][1] < r["curve"][0][1]
    assert 0 < r["max_saturation"] < 1
