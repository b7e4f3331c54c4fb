"""`analogpipe reproduce`: each isolating property of the plan, the statistics on known cases,
the verdict rules, the AIMC clock, and a tiny end-to-end reproduction (report, resume)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from analogpipe.cli import main
from analogpipe.experiments import stats as st
from analogpipe.experiments.analysis import Results, RunData, samples_to_target
from analogpipe.experiments.paper import (
    equivalence_runs,
    staleness_analyse,
    staleness_runs,
    target_of,
    tau_configs,
)
from analogpipe.experiments.plan import config, full_settings, plan, quick_settings

TINY = ["--quick", "--subset", "320", "--epochs", "2", "--seeds", "2", "--workers", "1",
        "--taus", "0.5,1.6", "--stage-list", "1,2", "--convergence-steps", "200",
        "--width", "16"]


def _diff(a: dict, b: dict, prefix: str = "") -> set[str]:
    """Keys (dotted) where two nested dicts differ."""
    out = set()
    for k in set(a) | set(b):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out |= _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.add(prefix + k)
    return out


# ---------------------------------------------------------------------- isolation by design
def test_tau_sweep_runs_differ_only_in_the_device_bound() -> None:
    s = quick_settings()
    cfgs = tau_configs(s, seed=3)
    base = cfgs[0]
    for c in cfgs[1:-1]:  # soft bounds at another tau
        assert _diff(base.to_dict(), c.to_dict()) == {"tau"}
        assert _diff(base.tile_config().to_dict(), c.tile_config().to_dict()) == {
            "device.w_max", "device.w_min"}
    ideal = cfgs[-1]  # the tau -> inf end: same mapping, IO, init, lr, stream
    assert _diff(base.to_dict(), ideal.to_dict()) == {"device_model"}
    tc = ideal.tile_config().to_dict()
    assert tc["mapping"] == base.tile_config().to_dict()["mapping"]
    assert tc["mapping"]["weight_scaling_omega"] == s.sweep_omega  # absolute units, fixed
    assert tc["forward"] == base.tile_config().to_dict()["forward"]
    # the sweep's tau = 0.8 point is the main AP run (mapped at tau / 2 = omega): trained once
    main_ap = config(s, scheme="ap", stages=s.acc_stages, seed=3)
    assert main_ap in cfgs
    # the same initial weights: the logical weights after mapping are identical
    from analogpipe.train.loop import build

    small = replace(s, width=8, subset=200)
    w = []
    for c in tau_configs(small, seed=0)[:2] + tau_configs(small, seed=0)[-1:]:
        m = build(c).model
        w.append(torch.cat([t.get_weights().flatten() * (
            t.out_scale.detach()[:, None].expand(t.out_size, t.in_size).flatten())
            for t in (mod.tile for mod in m.modules() if hasattr(mod, "tile"))]))
    torch.testing.assert_close(w[0], w[1])
    torch.testing.assert_close(w[0], w[2])


def test_staleness_runs_differ_only_in_the_stage_count() -> None:
    s = quick_settings()
    aps = [c for c in staleness_runs(s) if c.scheme == "ap" and c.seed == 1]
    assert [c.stages for c in aps] == list(s.stage_list)
    for c in aps[1:]:
        assert _diff(aps[0].to_dict(), c.to_dict()) <= {"stages", "t_f", "t_b"}
        assert c.lr == s.lr  # the same lr at every M (policy `same`)


def test_lr_policies() -> None:
    s = quick_settings()
    cfgs = [c for c in equivalence_runs(s) if c.seed == 0]
    lrs = {(c.scheme, c.lr) for c in cfgs}
    assert lrs == {("digital", s.lr), ("sp", s.lr), ("ap", s.lr), ("ap", s.lr / s.microbatches)}


def test_ap_at_one_stage_is_plain_analog_sgd_on_the_micro_batch_stream(tmp_path: Path) -> None:
    from analogpipe.nn import analog_tiles
    from analogpipe.optim import AnalogSGD
    from analogpipe.train import train
    from analogpipe.train.loop import build, epoch_batches

    s = quick_settings(width=8, depth=2, pipe_width=8, pipe_depth=2, subset=128, epochs=1)
    cfg = next(c for c in staleness_runs(s) if c.scheme == "ap" and c.stages == 1)
    train(cfg, tmp_path, progress=False, log=lambda _: None)
    piped = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    # the reference: a plain loop, one analog SGD step per micro-batch of the same stream
    setup = build(cfg)
    opt = AnalogSGD(setup.model, lr=cfg.lr)
    batch, steps = epoch_batches(setup, 0)
    for k in range(steps * cfg.microbatches):
        x, y = batch(k)
        setup.loss_fn(setup.model(x), y).backward()
        opt.step()
        opt.zero_grad()
    ref = setup.model.state_dict()
    assert len(list(analog_tiles(setup.model))) == 3
    for k, v in ref.items():
        if isinstance(v, torch.Tensor):
            torch.testing.assert_close(piped[k], v, rtol=0, atol=0, msg=k)


# ---------------------------------------------------------------------- statistics
def test_t_interval_on_a_known_case() -> None:
    iv = st.mean_interval([1, 2, 3, 4, 5])
    t975_4 = 2.7764451051977987  # Student t quantile, 4 degrees of freedom (tables)
    half = t975_4 * math.sqrt(2.5) / math.sqrt(5)
    assert iv.mean == 3 and iv.lo == pytest.approx(3 - half) and iv.hi == pytest.approx(3 + half)
    assert (iv.n, iv.total) == (5, 5)
    part = st.mean_interval([1.0, float("nan"), 3.0])
    assert (part.n, part.total, part.mean) == (2, 3, 2.0)
    assert not st.mean_interval([4.0]).defined
    # paired: the interval of the differences, not of each side
    d = st.paired_difference({0: 10.0, 1: 20.0, 2: 30.0}, {0: 9.0, 1: 19.0, 2: 29.5})
    assert d.mean == pytest.approx(5 / 6) and d.n == 3
    # ratios on the log scale: a constant ratio of 2 has a zero-width interval at 2
    r = st.log_ratio_interval({0: 2.0, 1: 6.0}, {0: 1.0, 1: 3.0})
    assert r.mean == pytest.approx(2.0) and r.lo == pytest.approx(2.0)


@pytest.mark.parametrize("lo, hi, verdict", [
    (-0.01, 0.02, st.SUPPORTED),  # inside ±0.03
    (-0.02, 0.05, st.INCONCLUSIVE),  # straddles +0.03
    (-0.05, 0.05, st.INCONCLUSIVE),  # wider than the margin on both sides
    (0.04, 0.10, st.NOT_SUPPORTED),  # entirely above
    (-0.2, -0.031, st.NOT_SUPPORTED),  # entirely below
])
def test_equivalence_rule(lo, hi, verdict) -> None:
    assert st.equivalence(st.Interval((lo + hi) / 2, lo, hi, 5, 5), 0.03) == verdict


def test_no_interval_is_inconclusive_and_claims_combine() -> None:
    assert st.equivalence(st.Interval(0.0, math.nan, math.nan, 1, 1), 0.03) == st.INCONCLUSIVE
    assert st.at_least(st.Interval(0.9, 0.8, 1.0, 5, 5), 0.7) == st.SUPPORTED
    assert st.at_least(st.Interval(0.7, 0.5, 0.9, 5, 5), 0.7) == st.INCONCLUSIVE
    assert st.combine([st.SUPPORTED, st.INCONCLUSIVE]) == st.INCONCLUSIVE
    assert st.combine([st.SUPPORTED, st.NOT_SUPPORTED, st.INCONCLUSIVE]) == st.NOT_SUPPORTED
    assert st.combine([st.SUPPORTED] * 3) == st.SUPPORTED


def test_fits_recover_known_constants() -> None:
    K = [10, 100, 1000, 10000]
    f = st.slope_fit(K, [3.0 / math.sqrt(k) for k in K])
    assert f["slope"] == pytest.approx(-0.5) and f["r2"] == pytest.approx(1.0)
    shape = [0.9, 0.3, 0.1]
    fit = st.fit_one_constant(shape, [0.004 * x for x in shape])
    assert fit["c"] == pytest.approx(0.004)
    assert all(abs(r) < 1e-12 for r in fit["residuals"])
    fit2 = st.fit_one_constant(shape, [0.004 * shape[0], 0.004 * shape[1], 0.016 * shape[2]])
    assert fit2["residuals"][2] > math.log10(2)  # a factor 4 above the others


# ---------------------------------------------------------------------- verdicts from data
def _results(s, acc_of, samples_of) -> Results:
    """Fabricated finished runs of the staleness group: accuracy rises linearly per epoch."""
    runs = []
    for c in staleness_runs(s):
        d = c.to_dict()
        key = "digital" if c.scheme == "digital" else c.stages
        final, reach = acc_of(key, c.seed), samples_of(key, c.seed)
        curve = []
        for e in range(1, c.epochs + 1):
            samples = 1000 * e
            a = min(final, s.chance + (final - s.chance) * samples / reach) if reach else final
            curve.append({"epoch": e, "samples": samples, "test_acc": a, "test_loss": 1.0})
        runs.append(RunData(f"r{len(runs)}", d, ["staleness"], "done", curve))
    return Results(runs)


def test_staleness_verdicts_follow_the_numbers() -> None:
    s = quick_settings(epochs=8)
    jitter = [0.0, 0.004, -0.003, 0.002, -0.001]
    same = _results(s, lambda k, sd: 0.95 + jitter[sd], lambda k, sd: 3000 * (1 + jitter[sd]))
    a = staleness_analyse(same, s, {})
    assert a["target"]["target"] == pytest.approx(0.9 * 0.95 + 0.9 * sum(jitter) / 5)
    assert a["verdicts"][0]["verdict"] == st.SUPPORTED
    worse = _results(s, lambda k, sd: (0.95 if k in (1, "digital") else 0.80) + jitter[sd],
                     lambda k, sd: 3000.0)
    assert staleness_analyse(worse, s, {})["verdicts"][0]["verdict"] == st.NOT_SUPPORTED
    # a noisy difference whose CI straddles the margin: inconclusive
    noisy = [0.0, 0.06, -0.06, 0.05, -0.02]
    mixed = _results(s, lambda k, sd: 0.95 + (noisy[sd] if k not in (1, "digital") else 0),
                     lambda k, sd: 3000.0)
    assert staleness_analyse(mixed, s, {})["verdicts"][0]["verdict"] == st.INCONCLUSIVE


def test_target_follows_the_digital_reference_and_crossing() -> None:
    s = quick_settings(epochs=4)
    res = _results(s, lambda k, sd: 0.8 if k == "digital" else 0.9, lambda k, sd: 2000.0)
    assert target_of(res, s, pipe=True)["target"] == pytest.approx(0.72)
    run = RunData("x", {"epochs": 2, "seed": 0}, [], "done",
                  [{"epoch": 1, "samples": 100, "test_acc": 0.5},
                   {"epoch": 2, "samples": 200, "test_acc": 0.9}])
    assert samples_to_target(run, 0.7, 0.1) == pytest.approx(150)
    assert samples_to_target(run, 0.3, 0.1) == pytest.approx(50)  # from chance at 0 samples
    assert math.isnan(samples_to_target(run, 0.95, 0.1))


# ---------------------------------------------------------------------- the clock
def test_aimc_clock_at_one_stage_matches_the_closed_form() -> None:
    from analogpipe.experiments.clock import run_clock

    s = quick_settings(subset=256)
    cfg = config(s, scheme="ap", stages=1, seed=0, pipe=True)
    bl = 7.5
    c = run_clock(cfg, bl)
    # 8 analog layers, one MVM per sample each; no transposed MVM for the input layer;
    # a pulse train of BL slots of 1/31 MVM per MVM; one stage: no bubbles, no transfers
    assert c["aimc"] == pytest.approx(8 + 7 + 8 * bl / 31)
    assert c["balanced"] == pytest.approx(2.0 / s.micro_batch_size)
    c8 = run_clock(config(s, scheme="ap", stages=8, seed=0, pipe=True), bl)
    assert len(c8["stage_blocks"]) == 8 and c8["aimc"] < c["aimc"] / 5


def test_mean_pulse_train_length_follows_bl_management() -> None:
    from analogpipe.experiments.clock import mean_pulse_train_length

    s = quick_settings(subset=256, width=8, pipe_width=8)
    cfg = config(s, scheme="ap", stages=1, seed=0, pipe=True)
    assert mean_pulse_train_length(cfg, lr=1e-9) == 1.0  # ceil(k) = 1 for tiny updates
    # capped at desired_bl = 31 (a sample whose error is exactly 0 in a layer, e.g. behind
    # dead ReLUs, keeps the minimum train of 1: a few percent of (sample, layer) pairs here)
    big = mean_pulse_train_length(cfg, lr=1e6)
    assert 28.0 < big <= 31.0
    mid = mean_pulse_train_length(cfg)
    assert 1.0 < mid < big


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repro") / "out"
    assert main(["reproduce", *TINY, "--out", str(out)]) == 0
    return out


def test_clock_measures_the_pulse_trains_of_each_finished_run(tiny_run: Path) -> None:
    # the end-of-run BL reads each run's own checkpoint (folder = name + settings hash)
    extras = json.loads((tiny_run / "measurements.json").read_text())["extras"]
    bl = extras["speedup"]["bl"]
    assert bl and all(math.isfinite(v["start"]) and math.isfinite(v["end"])
                      for v in bl.values())


def test_tiny_reproduction_writes_report_and_figures(tiny_run: Path) -> None:
    report = (tiny_run / "report.md").read_text()
    for section in ("## What was run", "## Rules fixed before the runs", "## Verdicts",
                    "## 1. Staleness", "## 2. AP against SP", "## 3. Speedup",
                    "## 4. Saturation sweep", "## 5. Convergence",
                    "## 6. Beyond the paper", "## 7. Beyond the paper", "## 8. Beyond the paper"):
        assert section in report, section
    assert "git commit" in report and "torch 2." in report and "Command: `" in report
    assert "shared/" not in report
    verdicts = [ln for ln in report.splitlines() if ln.startswith("- **")]
    assert len(verdicts) == 10  # 7 of the paper's claims; beyond: teacher M=1, digits M=4, PipeMare
    assert all(re.match(r"- \*\*(supported|not supported|inconclusive)\*\*", v) for v in verdicts)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) == 8
    for link in links:
        assert (tiny_run / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan_file = json.loads((tiny_run / "reproduce.json").read_text())
    assert plan_file["rules"]["acc_margin"] == 0.03  # the rules are on disk before the runs
    assert not list(tiny_run.glob("**/.*.tmp*"))


def test_report_and_figures_are_drawn_from_the_analysis_data_alone(tiny_run: Path,
                                                                   tmp_path: Path) -> None:
    from analogpipe.experiments.plan import groups
    from analogpipe.experiments.render import render
    from analogpipe.experiments.report import _restore

    data = _restore(json.loads((tiny_run / "analysis.json").read_text()))
    s = quick_settings(subset=320, epochs=2, seeds=2, sweep_taus=(0.5, 1.6), stage_list=(1, 2),
                       conv_steps=200, bt_teacher_steps=200, width=16, depth=7, pipe_width=16)
    gs = groups(s)
    figs = {g.key: g.figures(data["analyses"][g.key], s, tmp_path) for g in gs}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"fig_{g.key}.png" for g in gs)
    text = render(data["header"], s, gs, data["analyses"], figs)
    verdicts = [ln for ln in text.splitlines() if ln.startswith("- **")]
    assert verdicts == [ln for ln in (tiny_run / "report.md").read_text().splitlines()
                        if ln.startswith("- **")]


def test_rendering_modules_do_not_import_the_analysis_back() -> None:
    import subprocess
    import sys

    code = ("import sys, analogpipe.experiments.plots, analogpipe.experiments.render; "
            "bad = [m for m in ('analogpipe.experiments.report', 'analogpipe.experiments.paper', "
            "'analogpipe.experiments.clock') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rerun_reuses_runs_and_measurements(tiny_run: Path, capsys) -> None:
    assert main(["reproduce", *TINY, "--out", str(tiny_run)]) == 0
    out = capsys.readouterr().err  # progress lines go to stderr
    assert " done " not in out and "measured" not in out and " skipped " in out
    # a run cut short (no completion record) is resumed from its checkpoint, the rest skipped
    victim = next((tiny_run / "runs").glob("*-ap-M2-*"))
    (victim / "reproduce.json").unlink()
    assert main(["reproduce", *TINY, "--out", str(tiny_run)]) == 0
    out = capsys.readouterr().err
    name = victim.name.rsplit("-", 1)[0]  # the folder adds a hash of the run's settings
    assert out.count(" done ") == 1 and name in out


# ---------------------------------------------------------------------- bad input and modes
@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "seeds"),
    (["--workers", "0"], "workers"),
    (["--epochs", "0"], "epochs"),
    (["--taus", "0.05,0.8"], "omega"),
    (["--groups", "nonsense"], "nonsense"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "cifar"),
    (["--device", "cuda", "--workers", "1"], None),
])
def test_bad_input_exits_2_before_writing(tmp_path: Path, capsys, args, message) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = tmp_path / "never"
    assert main(["reproduce", "--quick", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error" in err
    if message:
        assert message in err.lower()
    assert not out.exists()


def test_full_mode_uses_the_same_design() -> None:
    s = full_settings(data_dir="/data/cifar")
    assert (s.dataset, s.model, s.pipe_model, s.epochs, s.lr, s.seeds) == (
        "cifar10", "resnet10", "resnet18", 300, 0.1, 3)
    assert s.microbatches * s.micro_batch_size == 128
    specs = plan(s)
    assert {sp.config.model for sp in specs if "staleness" in sp.groups} == {"resnet18"}
    assert max(sp.config.stages for sp in specs) == 8
    assert {sp.config.partition_metric for sp in specs} == {"aimc"}
    json.dumps(s.to_dict())
    q = plan(quick_settings())
    assert len({sp.config.seed for sp in q}) == 5  # >= 5 seeds per cell in quick mode
