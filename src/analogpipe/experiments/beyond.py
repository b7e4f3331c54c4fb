"""Beyond the paper: Tiki-Taka in the asynchronous pipeline, and PipeMare delay compensation.

Three experiment groups of `analogpipe reproduce` (see docs/reproduction.md, "Beyond the
paper"), built like the paper's groups (``analogpipe.experiments.paper``): runs named in the
plan, rules fixed in ``Settings.rules`` before the runs, 95% Student-t intervals over seeds,
paired by seed.

6. ``beyond-floor``: the floor against saturation. Analog SGD against Tiki-Taka over the tau
   sweep of the paper's group 4 (only the device bound changes: mapping omega in conductance
   units, IO, initial weights, lr and micro-batch stream are identical; the ideal device is
   the tau -> inf end). On digits the Analog SGD runs at M = acc_stages *are* the tau group's
   runs (same TrainConfigs, trained once). On a teacher problem whose optimum lies inside every
   range (a chain of four bias-free 16-wide linear layers with weights in [-0.3, 0.3], Gaussian
   target noise), measured in-process while the workers train. Expected (arXiv 2406.12774):
   Analog SGD's floor grows as tau shrinks, Tiki-Taka's does not.
7. ``beyond-staleness``: samples-to-target of AP(M) relative to AP(1), with and without
   PipeMare's per-stage lr rescheduling, at M in ``bt_stale_stages``; the runs without
   compensation and AP(1) are the staleness group's runs.
8. ``beyond-cost``: what Tiki-Taka costs: cycles per sample on the AIMC clock (the transfer
   reads charged: one forward MVM on A and one pulse train into C per read) and the
   simulator's wall time per sample.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from analogpipe.experiments import stats as st
from analogpipe.experiments.analysis import Results, final_acc, per_seed, samples_to_target
from analogpipe.experiments.plan import Group, Settings, config, plot_figures, register
from analogpipe.experiments.stats import Interval

ALGORITHMS = ("analog-sgd", "tiki-taka")
SHORT = {"analog-sgd": "Analog SGD", "tiki-taka": "Tiki-Taka"}
TEACHER_DIMS = (16, 16, 16, 16, 4)  # chain of four bias-free linear layers
TEACHER_SCALE = 0.3  # teacher and initial student weights uniform in [-0.3, 0.3]
TEACHER_BATCH = 8
TEACHER_EVALS = 10


def _verdict(claim: str, verdict: str, rule: str, numbers: str, confounds: str = "none named"
             ) -> dict[str, str]:
    return {"claim": claim, "verdict": verdict, "rule": rule, "numbers": numbers,
            "confounds": confounds}


def _i(d: dict) -> Interval:
    return Interval.from_dict(d)


def _key(tau: float) -> str:
    return "ideal" if math.isinf(tau) else f"{tau:g}"


def tt_settings(s: Settings) -> dict[str, Any]:
    """The TrainConfig fields of a Tiki-Taka run of the plan."""
    return {"algorithm": "tiki-taka", "tt_gamma": s.tt_gamma,
            "transfer_every": s.tt_transfer_every, "n_reads_per_transfer": s.tt_n_reads,
            "transfer_lr": s.tt_transfer_lr, "fast_lr": s.tt_fast_lr}


def tt_taus(s: Settings) -> tuple[float, ...]:
    """Tiki-Taka's finite taus: the whole sweep, or its smallest tau (quick mode)."""
    return tuple(s.sweep_taus) if s.bt_taus == "all" else (min(s.sweep_taus),)


def _taus(s: Settings, alg: str, M: int) -> tuple[float, ...]:
    # Analog SGD at acc_stages is the tau group's sweep (already in the plan): all of it
    if alg == "analog-sgd" and M == s.acc_stages:
        return tuple(s.sweep_taus)
    return tt_taus(s)


# ------------------------------------------------------------------------------ 6 floor
def floor_config(s: Settings, alg: str, M: int, tau: float, seed: int) -> Any:
    """One digits run of the floor sweep; tau = inf is the ideal device with the same mapping
    and IO (its tau field keeps the sweep's first tau, as in the tau group)."""
    more = tt_settings(s) if alg == "tiki-taka" else {}
    if math.isinf(tau):
        return config(s, scheme="ap", stages=M, seed=seed, tau=s.sweep_taus[0],
                      omega=s.sweep_omega, device_model="ideal", **more)
    return config(s, scheme="ap", stages=M, seed=seed, tau=tau, omega=s.sweep_omega, **more)


def floor_cells(s: Settings) -> list[tuple[str, int, float]]:
    return [(alg, M, t) for M in s.bt_stages for alg in ALGORITHMS
            for t in (*_taus(s, alg, M), math.inf)]


def floor_runs(s: Settings) -> list:
    return [floor_config(s, alg, M, t, seed) for seed in range(s.seeds)
            for alg, M, t in floor_cells(s)]


def teacher_data(seed: int, noise: float) -> tuple:
    """The chain teacher y = T4 T3 T2 T1 x + noise, x ~ N(0, I), teacher weights uniform in
    [-0.3, 0.3]. Returns (teacher weights, train x (4096 x 16), train y (4096 x 4), test x
    (1024 x 16), test y (1024 x 4))."""
    import torch

    g = torch.Generator().manual_seed(10_007 + seed)
    ts = [(torch.rand(TEACHER_DIMS[i + 1], TEACHER_DIMS[i], generator=g) * 2 - 1)
          * TEACHER_SCALE for i in range(len(TEACHER_DIMS) - 1)]

    def f(x: Any) -> Any:
        for t in ts:
            x = x @ t.T
        return x

    def split(n: int) -> tuple:
        x = torch.randn(n, TEACHER_DIMS[0], generator=g)
        return x, f(x) + noise * torch.randn(n, TEACHER_DIMS[-1], generator=g)

    return (ts, *split(4096), *split(1024))


def teacher_tile(s: Settings, alg: str, tau: float) -> Any:
    """The teacher's tile: soft bounds at tau (ideal for inf), perfect IO, no mapping,
    expected update per sample: the device is the only imperfection."""
    from analogpipe.devices import DeviceConfig
    from analogpipe.tiles import IOConfig, MappingConfig, TileConfig, UpdateConfig
    from analogpipe.tiles.transfer import TransferCompoundConfig

    dev = DeviceConfig(name="ideal") if math.isinf(tau) else DeviceConfig.soft_bounds(tau)
    io, mapping = IOConfig.perfect(), MappingConfig()
    update = UpdateConfig(mode="expected", granularity="sample")
    if alg == "analog-sgd":
        return TileConfig(device=dev, forward=io, backward=io, update=update, mapping=mapping)
    return TransferCompoundConfig(
        device=dev, fast_device=dev, forward=io, backward=io, update=update, mapping=mapping,
        gamma=s.tt_gamma, transfer_every=s.tt_transfer_every,
        n_reads_per_transfer=s.tt_n_reads, transfer_lr=s.tt_transfer_lr, fast_lr=s.tt_fast_lr,
        transfer_forward=io, transfer_update=update)


def teacher_run(s: Settings, alg: str, M: int, tau: float, seed: int) -> dict[str, Any]:
    """Train the student chain for ``s.bt_teacher_steps`` micro-batch updates of 8 samples in
    AP with M stages (M = 1: plain analog SGD / Tiki-Taka on the stream) at ``s.lr``.

    Returns the test MSE curve (evaluated ``TEACHER_EVALS`` times), ``final`` (mean of the
    last three evaluations; NaN if diverged), ``status``, ``cpu_s`` (this process, one
    thread) and ``max_saturation`` (max |W| / tau at the end).
    """
    import torch
    from torch import nn

    from analogpipe.nn import analog_tiles, convert_to_analog
    from analogpipe.optim.delay import make_stage_optimizer
    from analogpipe.pipeline import schedules
    from analogpipe.pipeline.local import DivergenceError, LocalPipeline
    from analogpipe.pipeline.partition import block_costs, block_names, partition, split_model

    c0 = time.process_time()
    _, x, y, xt, yt = teacher_data(seed, s.bt_teacher_noise)
    g = torch.Generator().manual_seed(20_011 + seed)
    model = nn.Sequential()
    for i in range(len(TEACHER_DIMS) - 1):
        layer = nn.Linear(TEACHER_DIMS[i], TEACHER_DIMS[i + 1], bias=False)
        with torch.no_grad():  # student init from the teacher's distribution (in range)
            layer.weight.copy_((torch.rand(layer.weight.shape, generator=g) * 2 - 1)
                               * TEACHER_SCALE)
        model.add_module(f"fc{i + 1}", layer)
    names = block_names(model)
    groups = partition(block_costs(model, x[:1], "params"), M, names)
    model = convert_to_analog(model, teacher_tile(s, alg, tau), seed=seed)
    stages = split_model(model, groups)
    opts = [make_stage_optimizer(stage, scheme="ap", num_stages=M, index=i, lr=s.lr,
                                 momentum=0.0, weight_decay=0.0, delay_compensation="none",
                                 warmup_steps=0)
            for i, stage in enumerate(stages)]
    pipe = LocalPipeline(stages, lr=s.lr, loss_fn=nn.functional.mse_loss, optimizers=opts)
    total, b = s.bt_teacher_steps, TEACHER_BATCH
    gen = torch.Generator().manual_seed(30_011 + seed)
    order = torch.cat([torch.randperm(x.shape[0], generator=gen)
                       for _ in range(-(-total * b // x.shape[0]) + 1)])

    def batch(k: int) -> tuple:
        idx = order[k * b:(k + 1) * b]
        return x[idx], y[idx]

    curve: list[tuple[int, float]] = []
    done, status = 0, "done"
    for i in range(TEACHER_EVALS):
        end = round(total * (i + 1) / TEACHER_EVALS)
        try:
            pipe.run(schedules.async_1f1b(M, 1, end - done), batch, offset=done)
        except DivergenceError:
            status = "diverged"
            break
        done = end
        for tile in analog_tiles(model):
            tile.reseed("eval", i)
        with torch.no_grad():
            curve.append((done * b, float(nn.functional.mse_loss(model(xt), yt))))
    tail = [v for _, v in curve[-3:]]
    final = sum(tail) / len(tail) if tail and status == "done" else math.nan
    sat = max(float(t.saturation().abs().max()) for t in analog_tiles(model))
    return {"algorithm": alg, "stages": M, "tau": tau, "seed": seed, "status": status,
            "curve": curve, "final": final if math.isfinite(final) else math.nan,
            "samples": done * b, "cpu_s": time.process_time() - c0, "max_saturation": sat}


def floor_measure(results: Any, s: Settings, out: Path) -> list[dict[str, Any]]:
    """Every teacher run (reads no training run: it goes while the workers train)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [teacher_run(s, alg, M, t, seed) for seed in range(s.seeds)
                for M in s.bt_teacher_stages for alg in ALGORITHMS
                for t in (*tt_taus(s), math.inf)]
    finally:
        torch.set_num_threads(threads)


def _grows(ci: Interval, up: bool, center: float) -> str:
    """"It grows" (supported) when the whole CI lies on the growing side of ``center``,
    not supported when the whole CI lies on the other side (or at it), else inconclusive."""
    if not ci.defined:
        return st.INCONCLUSIVE
    if (ci.lo > center) if up else (ci.hi < center):
        return st.SUPPORTED
    if (ci.hi <= center) if up else (ci.lo >= center):
        return st.NOT_SUPPORTED
    return st.INCONCLUSIVE


def _log(ci: Interval) -> Interval:
    """A ratio interval on the log scale (for the equivalence rule)."""
    if not ci.n:
        return ci
    return Interval(math.log(ci.mean), math.log(ci.lo) if ci.defined else math.nan,
                    math.log(ci.hi) if ci.defined else math.nan, ci.n, ci.total, ci.sd)


def floor_analyse(results: Results, s: Settings, extras: dict) -> dict[str, Any]:
    r = s.rules
    lo_key = _key(min(s.sweep_taus))
    out: dict[str, Any] = {"verdicts": []}
    # teacher: final test MSE per seed, ratio smallest tau / ideal per algorithm
    runs = extras.get("beyond-floor") or []
    t_rows, t_tests = [], []
    for M in s.bt_teacher_stages:
        loss: dict[str, dict[str, dict[int, float]]] = {}
        for alg in ALGORITHMS:
            for t in (*tt_taus(s), math.inf):
                xs = [x for x in runs if x["algorithm"] == alg and x["stages"] == M
                      and x["tau"] == t]
                loss.setdefault(alg, {})[_key(t)] = {x["seed"]: x["final"] for x in xs}
                t_rows.append({"algorithm": alg, "M": M, "tau": t, "key": _key(t),
                               "loss": st.mean_interval([x["final"] for x in xs]).to_dict(),
                               "sat": st.mean_interval([x["max_saturation"] for x in xs
                                                        if not math.isinf(t)]).to_dict(),
                               "diverged": sum(x["status"] == "diverged" for x in xs),
                               "n": len(xs)})
        if not runs:
            continue
        test = {"M": M}
        for alg in ALGORITHMS:
            ratio = st.log_ratio_interval(loss[alg][lo_key], loss[alg]["ideal"])
            test[alg] = ratio.to_dict()
        test["tt_vs_sgd"] = st.log_ratio_interval(loss["tiki-taka"][lo_key],
                                                  loss["analog-sgd"][lo_key]).to_dict()
        test["v_sgd"] = _grows(_i(test["analog-sgd"]), True, 1.0)
        test["v_tt"] = st.equivalence(_log(_i(test["tiki-taka"])), math.log(r.floor_ratio))
        t_tests.append(test)
        div = sum(x["diverged"] for x in t_rows if x["M"] == M)
        out["verdicts"].append(_verdict(
            f"Teacher problem, M = {M}: Analog SGD's floor grows as tau shrinks, Tiki-Taka's "
            f"does not", st.combine([test["v_sgd"], test["v_tt"]]),
            f"ratio of final test MSE tau {lo_key} / ideal device, geometric mean over paired "
            f"seeds: Analog SGD's whole 95% CI > 1, and Tiki-Taka's within "
            f"[1/{r.floor_ratio:g}, {r.floor_ratio:g}]",
            f"Analog SGD {_i(test['analog-sgd']).fmt(3)} ({test['v_sgd']}); Tiki-Taka "
            f"{_i(test['tiki-taka']).fmt(3)} ({test['v_tt']}); Tiki-Taka / Analog SGD at tau "
            f"{lo_key}: {_i(test['tt_vs_sgd']).fmt(3)}",
            f"{div} diverged run(s) (left out of the ratios); the MSE includes the target "
            f"noise variance {s.bt_teacher_noise ** 2:g}, which neither algorithm can remove "
            f"(ratios are pulled towards 1); {s.bt_teacher_steps} updates per run: a floor "
            f"not yet reached reads as convergence speed"))
    out["teacher"] = {"rows": t_rows, "tests": t_tests}
    # digits: final test accuracy per seed, difference smallest tau - ideal per algorithm
    d_rows, d_tests = [], []
    for M in s.bt_stages:
        acc: dict[str, dict[str, dict[int, float]]] = {}
        for alg in ALGORITHMS:
            for t in (*_taus(s, alg, M), math.inf):
                sel = _select(results, floor_config(s, alg, M, t, 0))
                acc.setdefault(alg, {})[_key(t)] = per_seed(
                    sel, lambda x: final_acc(x, s.chance))
                d_rows.append({"algorithm": alg, "M": M, "tau": t, "key": _key(t),
                               "acc": st.mean_interval(list(acc[alg][_key(t)].values())
                                                       ).to_dict(),
                               "diverged": sum(x.diverged for x in sel.values()),
                               "n": len(sel)})
        test = {"M": M}
        for alg in ALGORITHMS:
            test[alg] = st.paired_difference(acc[alg][lo_key], acc[alg]["ideal"]).to_dict()
        test["tt_vs_sgd"] = st.paired_difference(acc["tiki-taka"][lo_key],
                                                 acc["analog-sgd"][lo_key]).to_dict()
        test["v_sgd"] = _grows(_i(test["analog-sgd"]), False, 0.0)
        test["v_tt"] = st.equivalence(_i(test["tiki-taka"]), r.acc_margin)
        d_tests.append(test)
        div = sum(x["diverged"] for x in d_rows if x["M"] == M)
        out["verdicts"].append(_verdict(
            f"Digits, AP M = {M}: Analog SGD loses accuracy as tau shrinks, Tiki-Taka does not",
            st.combine([test["v_sgd"], test["v_tt"]]),
            f"paired 95% CI of final test accuracy tau {lo_key} - ideal device: Analog SGD's "
            f"wholly < 0, Tiki-Taka's within ±{r.acc_margin:g}",
            f"Analog SGD {_i(test['analog-sgd']).fmt(3)} ({test['v_sgd']}); Tiki-Taka "
            f"{_i(test['tiki-taka']).fmt(3)} ({test['v_tt']}); Tiki-Taka - Analog SGD at tau "
            f"{lo_key}: {_i(test['tt_vs_sgd']).fmt(3)}",
            f"{div} diverged run(s) counted as chance; {s.epochs} epochs: accuracy mixes the "
            f"floor with convergence speed; Tiki-Taka's own settings (gamma {s.tt_gamma:g}, "
            f"transfer_lr {s.tt_transfer_lr:g}) were not tuned per tau"))
    out["digits"] = {"rows": d_rows, "tests": d_tests}
    return out


def _select(results: Results, cfg: Any) -> dict[int, Any]:
    keys = ("scheme", "stages", "lr", "model", "width", "depth", "device_model", "tau", "omega",
            "algorithm", "delay_compensation")
    d = cfg.to_dict()
    return results.select(**{k: d[k] for k in keys})


def _cell(rows: list[dict], alg: str, M: int, key: str) -> dict | None:
    return next((x for x in rows if x["algorithm"] == alg and x["M"] == M and x["key"] == key),
                None)


def floor_render(a: dict, s: Settings, figs: dict[str, str]) -> list[str]:
    r = s.rules
    lo_key = _key(min(s.sweep_taus))
    L = [f"Tiki-Taka (a fast array A, zero-shifted to its symmetric point, and a slow array C, "
         f"both the run's device; forward and backward read W = gamma A + C with gamma "
         f"{s.tt_gamma:g}; every {s.tt_transfer_every} update(s) {s.tt_n_reads} column(s) of A "
         f"are read and pulsed into C at transfer_lr {s.tt_transfer_lr:g} x lr, A learns at "
         f"fast_lr {s.tt_fast_lr:g} x lr) against Analog SGD, over the tau sweep of section 4: "
         f"only the device bound changes, the ideal device is tau = inf. Rules (fixed in the "
         f"plan): Analog SGD's floor grows when the whole 95% CI of its change from the ideal "
         f"device to tau {lo_key} lies on the worse side; Tiki-Taka's does not grow when that "
         f"CI lies within the margin (teacher: MSE ratio within [1/{r.floor_ratio:g}, "
         f"{r.floor_ratio:g}]; digits: accuracy difference within ±{r.acc_margin:g}). "
         f"Theory (arXiv 2406.12774): Analog SGD on soft bounds converges to a neighbourhood "
         f"that grows with W_max / tau; Tiki-Taka's A array, kept at its symmetric point, "
         f"removes that bias and converges exactly.", ""]
    if s.bt_taus != "all" or set(s.bt_stages) != {1, s.acc_stages} or set(
            s.bt_teacher_stages) != {1, s.acc_stages}:
        L += [f"Cut to fit the time budget of this mode: Tiki-Taka at tau {list(tt_taus(s))} "
              f"and the ideal device only (not every tau of the sweep), digits only at M = "
              f"{list(s.bt_stages)}, the teacher only at M = {list(s.bt_teacher_stages)}, "
              f"{s.bt_teacher_steps} updates per teacher run. Full mode runs every tau at M = 1 "
              f"and M = {s.acc_stages} on both problems.", ""]
    L += [f"![floor]({figs['beyond-floor']})", ""] if "beyond-floor" in figs else []
    t = a.get("teacher", {})
    if t.get("tests"):
        L += [f"**Teacher problem** (chain of four 16-wide bias-free linear layers, teacher and "
              f"initial weights uniform in [-{TEACHER_SCALE:g}, {TEACHER_SCALE:g}], inside "
              f"every tau; target noise std {s.bt_teacher_noise:g}; 4096 training and 1024 "
              f"test samples per seed; perfect IO, no mapping, expected update; AP with one "
              f"update per micro-batch of {TEACHER_BATCH} at lr {s.lr:g}, "
              f"{s.bt_teacher_steps} updates; final = mean test MSE of the last 3 of "
              f"{TEACHER_EVALS} evaluations):", ""]
        keys = [*(_key(x) for x in tt_taus(s)), "ideal"]
        L += ["| algorithm | M | " + " | ".join(f"MSE tau {k}" for k in keys)
              + f" | ratio {lo_key} / ideal | verdict |", "|---|---|" + "---|" * len(keys)
              + "---|---|"]
        for test in t["tests"]:
            for alg in ALGORITHMS:
                cells = []
                for k in keys:
                    c = _cell(t["rows"], alg, test["M"], k)
                    cells.append(_fmt_cell(c, "loss", 5) if c else "")
                v = test["v_sgd"] if alg == "analog-sgd" else test["v_tt"]
                L.append(f"| {SHORT[alg]} | {test['M']} | " + " | ".join(cells)
                         + f" | {_i(test[alg]).fmt(3)} | {v} |")
        L.append("")
    d = a.get("digits", {})
    if d.get("tests"):
        keys = [*(f"{x:g}" for x in s.sweep_taus), "ideal"]
        L += [f"**Digits** (the model and stream of section 4; AP at lr {s.lr:g}, "
              f"{s.epochs} epochs; final test accuracy in %, diverged runs counted as chance; "
              f"Analog SGD at M = {s.acc_stages} is section 4's runs):", "",
              "| algorithm | M | " + " | ".join(f"tau {k}" for k in keys)
              + f" | Δ {lo_key} - ideal (points) | verdict |",
              "|---|---|" + "---|" * len(keys) + "---|---|"]
        for test in d["tests"]:
            for alg in ALGORITHMS:
                cells = []
                for k in keys:
                    c = _cell(d["rows"], alg, test["M"], k)
                    cells.append(_fmt_cell(c, "acc", 1, 100) if c else "not run")
                v = test["v_sgd"] if alg == "analog-sgd" else test["v_tt"]
                L.append(f"| {SHORT[alg]} | {test['M']} | " + " | ".join(cells)
                         + f" | {_i(test[alg]).fmt(1, 100)} | {v} |")
        L.append("")
    return L


def _fmt_cell(c: dict, key: str, digits: int, scale: float = 1.0) -> str:
    text = _i(c[key]).fmt(digits, scale)
    return text + (f" ({c['diverged']}/{c['n']} diverged)" if c["diverged"] else "")


# ------------------------------------------------------------------------------ 7 staleness
def stale_stages(s: Settings) -> tuple[int, ...]:
    """The M of the PipeMare comparison: ``bt_stale_stages`` that the staleness group runs,
    else the largest M of the stage list (when > 1)."""
    ms = tuple(m for m in s.bt_stale_stages if m in s.stage_list)
    return ms or ((max(s.stage_list),) if max(s.stage_list) > 1 else ())


def stale_config(s: Settings, M: int, dc: str, seed: int) -> Any:
    return config(s, scheme="ap", stages=M, seed=seed, pipe=True, delay_compensation=dc)


def stale_runs(s: Settings) -> list:
    out = []
    for seed in range(s.seeds):
        out.append(config(s, scheme="digital", seed=seed, pipe=True))  # the target's reference
        out.append(stale_config(s, 1, "none", seed))
        for m in stale_stages(s):
            out += [stale_config(s, m, dc, seed) for dc in ("none", "pipemare")]
    return out


def stale_analyse(results: Results, s: Settings, extras: dict) -> dict[str, Any]:
    from analogpipe.experiments.paper import target_of

    tgt = target_of(results, s, pipe=True)
    target = tgt["target"]

    def cell(M: int, dc: str) -> tuple[dict, dict, int, int]:
        runs = _select(results, stale_config(s, M, dc, 0))
        return (per_seed(runs, lambda x: samples_to_target(x, target, s.chance)),
                per_seed(runs, lambda x: final_acc(x, s.chance)),
                sum(x.diverged for x in runs.values()), len(runs))

    base_s, base_a, base_div, base_n = cell(1, "none")
    rows, verdicts = [{"M": 1, "dc": "none",
                       "samples": st.mean_interval(list(base_s.values())).to_dict(),
                       "acc": st.mean_interval(list(base_a.values())).to_dict(),
                       "diverged": base_div, "n": base_n,
                       "reached": sum(math.isfinite(v) for v in base_s.values())}], []
    for M in stale_stages(s):
        by = {dc: cell(M, dc) for dc in ("none", "pipemare")}
        for dc, (smp, acc, div, n) in by.items():
            rows.append({"M": M, "dc": dc,
                         "samples": st.mean_interval(list(smp.values())).to_dict(),
                         "acc": st.mean_interval(list(acc.values())).to_dict(),
                         "ratio": st.log_ratio_interval(smp, base_s).to_dict(),
                         "d_acc": st.paired_difference(acc, base_a).to_dict(),
                         "diverged": div, "n": n,
                         "reached": sum(math.isfinite(v) for v in smp.values())})
        effect = st.log_ratio_interval(by["pipemare"][0], by["none"][0])
        d_acc = st.paired_difference(by["pipemare"][1], by["none"][1])
        v = _grows(effect, False, 1.0)
        rows[-1].update({"effect": effect.to_dict(), "effect_acc": d_acc.to_dict(),
                         "verdict": v})
        verdicts.append(v)
    if not verdicts:
        return {"rows": rows, "target": tgt, "verdicts": []}
    pm = [x for x in rows if x["dc"] == "pipemare"]
    nums = "; ".join(
        f"M={x['M']}: PipeMare / none {_i(x['effect']).fmt(2)} (Δacc "
        f"{_i(x['effect_acc']).fmt(3)})" for x in pm)
    cost = "; ".join(f"M={x['M']} without: {_i(x['ratio']).fmt(2)} of AP(1)'s samples"
                     for x in rows if x["dc"] == "none" and x["M"] > 1)
    div = sum(x["diverged"] for x in rows)
    miss = sum(x["n"] - x["reached"] for x in rows)
    v = _verdict(
        f"PipeMare's lr rescheduling lowers AP's samples-to-target at M = "
        f"{list(stale_stages(s))}", st.combine(verdicts),
        "ratio of samples-to-target PipeMare / none, geometric mean over paired seeds: whole "
        "95% CI < 1 at every M (whole CI >= 1: not supported)", nums,
        f"the staleness cost it can remove: {cost}; PipeMare also lowers the early lr "
        f"(warm-up 1 epoch), which costs samples when staleness costs little; {div} diverged "
        f"run(s), {miss} run(s) never reached the target {target:.3f} (left out, n shown)")
    return {"rows": rows, "target": tgt, "verdicts": [v]}


def stale_render(a: dict, s: Settings, figs: dict[str, str]) -> list[str]:
    if not a.get("verdicts"):
        return ["Not run: the stage list has no M > 1.", ""]
    t = a["target"]
    L = [f"AP at M = 1 and M = {list(stale_stages(s))} on the model, lr and micro-batch stream "
         f"of section 1 (the runs without compensation are section 1's), and the same runs "
         f"with PipeMare's per-stage lr rescheduling: stage i (0-based) of M, whose "
         f"gradients are d_i = M - 1 - i of its own updates stale, uses lr x max(1, d_i) ^ "
         f"-(1 - min(k / K, 1)) at its update k, K = one epoch of updates (the warm-up), then "
         f"the base schedule; no weight copy is kept. Target accuracy {t['target']:.3f} "
         f"(section 1's). Rule (fixed in the plan): PipeMare lowers the staleness cost when "
         f"the whole 95% CI of the paired ratio samples(PipeMare) / samples(none) is < 1.", ""]
    L += [f"![pipemare]({figs['beyond-staleness']})", ""] if "beyond-staleness" in figs else []
    L += ["| M | delay compensation | samples to target | ratio to AP(1) | final acc (%) | "
          "PipeMare / none | verdict | diverged | reached target |",
          "|---|---|---|---|---|---|---|---|---|"]
    for x in a["rows"]:
        ratio = _i(x["ratio"]).fmt(2) if "ratio" in x else "1"
        eff = _i(x["effect"]).fmt(2) if "effect" in x else "-"
        L.append(f"| {x['M']} | {x['dc']} | {_i(x['samples']).fmt(0)} | {ratio} | "
                 f"{_i(x['acc']).fmt(1, 100)} | {eff} | {x.get('verdict', '-')} | "
                 f"{x['diverged']}/{x['n']} | {x['reached']}/{x['n']} |")
    return L + [""]


# ------------------------------------------------------------------------------ 8 cost
def cost_runs(s: Settings) -> list:
    """The digits runs whose wall time is read: both algorithms at the smallest tau."""
    t = min(s.sweep_taus)
    return [floor_config(s, alg, M, t, seed) for seed in range(s.seeds) for M in s.bt_stages
            for alg in ALGORITHMS]


def cost_measure(results: Any, s: Settings, out: Path) -> dict[str, Any]:
    """AIMC cycles per sample of Analog SGD and Tiki-Taka at every M of the digits floor runs,
    the update charged by the mean pulse-train length of Analog SGD's first updates."""
    from analogpipe.experiments.clock import mean_pulse_train_length, run_clock

    t = min(s.sweep_taus)
    bl = mean_pulse_train_length(floor_config(s, "analog-sgd", max(s.bt_stages), t, 0))
    clock: dict[str, Any] = {}
    for M in s.bt_stages:
        for alg in ALGORITHMS:
            c = run_clock(floor_config(s, alg, M, t, 0), bl)
            clock[f"{alg}/M{M}"] = {k: c[k] for k in ("aimc", "balanced", "t_f", "t_b")}
    return {"bl": bl, "clock": clock}


def _wall_per_sample(run: Any) -> float:
    if not run.complete:
        return math.nan
    last = run.curve[-1]
    return 1e6 * float(last["wall_s"]) / float(last["samples"])


def cost_analyse(results: Results, s: Settings, extras: dict) -> dict[str, Any]:
    m = extras.get("beyond-cost") or {}
    t = min(s.sweep_taus)
    rows = []
    for M in s.bt_stages:
        wall = {alg: per_seed(_select(results, floor_config(s, alg, M, t, 0)),
                              _wall_per_sample) for alg in ALGORITHMS}
        clk = {alg: (m.get("clock") or {}).get(f"{alg}/M{M}", {}) for alg in ALGORITHMS}
        rows.append({
            "problem": "digits", "M": M,
            "cycles": {alg: clk[alg].get("aimc", math.nan) for alg in ALGORITHMS},
            "t_b": {alg: clk[alg].get("t_b", []) for alg in ALGORITHMS},
            "wall": {alg: st.mean_interval(list(wall[alg].values())).to_dict()
                     for alg in ALGORITHMS},
            "wall_ratio": st.log_ratio_interval(wall["tiki-taka"], wall["analog-sgd"]
                                                ).to_dict()})
    runs = extras.get("beyond-floor") or []
    for M in s.bt_teacher_stages:
        per = {alg: {x["seed"]: 1e6 * x["cpu_s"] / max(x["samples"], 1) for x in runs
                     if x["algorithm"] == alg and x["stages"] == M and x["tau"] == t
                     and x["status"] == "done"} for alg in ALGORITHMS}
        if runs:
            rows.append({"problem": "teacher", "M": M,
                         "wall": {alg: st.mean_interval(list(per[alg].values())).to_dict()
                                  for alg in ALGORITHMS},
                         "wall_ratio": st.log_ratio_interval(per["tiki-taka"],
                                                             per["analog-sgd"]).to_dict()})
    return {"rows": rows, "bl": m.get("bl", math.nan), "verdicts": []}


def cost_render(a: dict, s: Settings, figs: dict[str, str]) -> list[str]:
    L = [f"A measurement, not a claim (no verdict). Cycles per training sample on the AIMC "
         f"clock of the digits runs (the partition each run uses, balanced on AIMC cost; "
         f"update charged by BL = {a['bl']:.2f}, the mean pulse-train length of Analog SGD's "
         f"first updates at tau {min(s.sweep_taus):g}, for both algorithms). A Tiki-Taka "
         f"transfer read costs one forward MVM on A plus one pulse train into C and is charged "
         f"to the stage's backward; with {s.tt_n_reads} read(s) every {s.tt_transfer_every} "
         f"update(s), every layer adds {s.tt_n_reads / s.tt_transfer_every:g} MVM + pulse "
         f"train per micro-batch. Wall time per sample of the simulator: digits from the "
         f"runs' own timings (one torch thread per worker, evaluation included, machine "
         f"shared with the other workers); teacher from the in-process CPU time (one "
         f"thread). Tiki-Taka also doubles the analog arrays (A and C per layer).", ""]
    L += [f"![cost]({figs['beyond-cost']})", ""] if "beyond-cost" in figs else []
    L += ["| problem | M | cycles/sample Analog SGD | cycles/sample Tiki-Taka | cycle overhead | "
          "µs/sample Analog SGD | µs/sample Tiki-Taka | time ratio TT / SGD |",
          "|---|---|---|---|---|---|---|---|"]
    for x in a["rows"]:
        cyc = x.get("cycles")
        if cyc:
            c_s, c_t = cyc["analog-sgd"], cyc["tiki-taka"]
            cells = f"{c_s:.1f} | {c_t:.1f} | {100 * (c_t / c_s - 1):+.1f}%"
        else:
            cells = "- | - | -"
        L.append(f"| {x['problem']} | {x['M']} | {cells} | "
                 f"{_i(x['wall']['analog-sgd']).fmt(0)} | {_i(x['wall']['tiki-taka']).fmt(0)} "
                 f"| {_i(x['wall_ratio']).fmt(2)} |")
    return L + [""]


# ------------------------------------------------------------------------------ registry
register(Group("beyond-floor", "6. Beyond the paper: Tiki-Taka's floor against saturation",
               floor_runs, floor_analyse, floor_render, plot_figures("beyond_floor"),
               measure=floor_measure, order=60, measure_needs_runs=False))
register(Group("beyond-staleness",
               "7. Beyond the paper: staleness cost with and without PipeMare", stale_runs,
               stale_analyse, stale_render, plot_figures("beyond_staleness"), order=70))
register(Group("beyond-cost", "8. Beyond the paper: what Tiki-Taka costs", cost_runs,
               cost_analyse, cost_render, plot_figures("beyond_cost"), measure=cost_measure,
               order=80, measure_needs_runs=False))
