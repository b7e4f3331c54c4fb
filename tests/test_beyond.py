"""The "Beyond the paper" analysis: intervals, samples-to-target, verdicts, one real run."""

import math

import pytest

from analogpipe.experiments import beyond
from analogpipe.experiments.beyond import BeyondRun, mean_ci, samples_to_target


def test_mean_ci_is_the_student_t_interval():
    m, lo, hi, n = mean_ci([0.0, 2.0])  # mean 1, sem 1, t(0.975, 1) = 12.7062 (table)
    assert (m, n) == (1.0, 2)
    assert lo == pytest.approx(1 - 12.7062, abs=1e-3) and hi == pytest.approx(1 + 12.7062,
                                                                              abs=1e-3)
    m, lo, hi, n = mean_ci([1.0, 2.0, 3.0, math.nan, math.inf])  # t(0.975, 2) = 4.3027
    assert n == 3 and hi - m == pytest.approx(4.3027 / math.sqrt(3), abs=1e-3)
    assert math.isnan(mean_ci([])[0])


def test_samples_to_target():
    curve = [(100, 0.5), (200, 0.72), (300, 0.69), (400, 0.9)]
    assert samples_to_target(curve, 0.7) == 200
    assert samples_to_target(curve, 0.95) == math.inf


def _fake(s, kind, problem, alg, tau, M, seed, final, dc="none", curve=None):
    r = BeyondRun(kind, problem, alg, tau, M, seed, dc)
    return {"name": r.name, "kind": kind, "problem": problem, "algorithm": alg, "tau": tau,
            "stages": M, "seed": seed, "delay_compensation": dc, "status": "done",
            "final": final, "curve": curve or [], "max_saturation": 0.5,
            "wall_per_sample_us": 10.0 if alg == "analog-sgd" else 30.0}


def test_analysis_reports_a_growing_sgd_floor_and_a_flat_tiki_taka_floor():
    s = beyond.quick_settings(seeds=3, taus=(0.4, 1.0), floor_stages=(1,), stale_stages=(4,),
                              stale_target=0.75)
    res = []
    for k in range(s.seeds):
        for problem in ("teacher", "digits"):
            sign = 1 if problem == "teacher" else -1
            for i, tau in enumerate((0.4, 1.0, math.inf)):
                base = 0.5 if problem == "digits" else 0.01
                grow = sign * (0.02 if tau == 0.4 else 0.0) + 0.001 * k
                res.append(_fake(s, "floor", problem, "analog-sgd", tau, 1, k, base + grow))
                res.append(_fake(s, "floor", problem, "tiki-taka", tau, 1, k,
                                 base + 0.001 * ((k + i) % 3 - 1)))
        res.append(_fake(s, "staleness", "digits", "analog-sgd", s.stale_tau, 1, k, 0.8,
                         curve=[(100, 0.5), (200, 0.8)]))
        for dc, at in (("none", 400), ("pipemare", 300)):
            res.append(_fake(s, "staleness", "digits", "analog-sgd", s.stale_tau, 4, k, 0.8,
                             dc, curve=[(100, 0.1), (at, 0.8)]))
    a = beyond.analyse(s, res)
    text = beyond.render(s, a)
    assert text.count("the expectation holds") == 2
    rows = {r["delay_compensation"]: r for r in a["staleness"]["rows"]}
    assert rows["none"]["ratio"] == 2.0 and rows["pipemare"]["ratio"] == 1.5
    assert "| teacher | 1 | 10 [10, 10] | 30 [30, 30] |" in text


def test_one_real_teacher_run_learns_and_reports():
    s = beyond.quick_settings(teacher_microbatches=60, evals=2)
    r = beyond.execute(s, BeyondRun("floor", "teacher", "tiki-taka", 0.6, 2, 0))
    assert r["status"] == "done" and [c[0] for c in r["curve"]] == [240, 480]
    assert r["curve"][1][1] < r["curve"][0][1]  # test MSE falls
    assert r["transfer_reads_per_update"] == 4 * s.n_reads_per_transfer
