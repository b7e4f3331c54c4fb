"""The paper's five claims, each an experiment group that isolates it (see docs/reproduction.md).

1. ``staleness``: AP at M in stage_list, same lr, same micro-batch stream; AP(1) is plain
   analog SGD on micro-batches, so AP(M) vs AP(1) isolates the stale forward weights.
2. ``equivalence``: AP vs SP vs digital SGD at M = acc_stages, under the lr policies `same`
   (primary, the paper's) and `scaled` (AP at lr / B). SP makes WOP's updates (numerically the
   same run), so SP stands for both.
3. ``speedup``: cycles-to-target of AP(M) over AP(1) on the AIMC clock of the actual
   partition, against the ideal M x density; SP(M) and WOP beside it.
4. ``tau``: AP at M = acc_stages over tau with everything else fixed (mapping omega in
   conductance units, IO, initial weights, logical lr), the ideal device as tau -> inf.
5. ``convergence``: E_K rate and floor on a teacher problem inside the range.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from analogpipe.experiments import stats as st
from analogpipe.experiments.analysis import (
    Results,
    final_acc,
    final_loss,
    max_saturation,
    per_seed,
    samples_to_target,
)
from analogpipe.experiments.plan import Group, Settings, config, plot_figures, register
from analogpipe.experiments.stats import ACCURACY, COUNT, Interval

# ------------------------------------------------------------------------------ helpers


def _verdict(claim: str, verdict: str, rule: str, numbers: str, confounds: str = "none named"
             ) -> dict[str, str]:
    return {"claim": claim, "verdict": verdict, "rule": rule, "numbers": numbers,
            "confounds": confounds}


def _sel(results: Results, cfg: Any) -> dict[int, Any]:
    """Runs of every seed with the settings of `cfg` except the seed."""
    keys = ("scheme", "stages", "lr", "model", "width", "depth", "device_model", "tau", "omega",
            "algorithm", "delay_compensation")
    d = cfg.to_dict()
    return results.select(**{k: d[k] for k in keys})


def _diverged(runs: dict[int, Any]) -> int:
    return sum(r.diverged for r in runs.values())


def target_of(results: Results, s: Settings, pipe: bool) -> dict[str, Any]:
    """The plan's target: rules.target_fraction x the digital reference's mean final accuracy
    (same model, this reproduction)."""
    dig = _sel(results, config(s, scheme="digital", seed=0, pipe=pipe))
    ref = st.mean_interval(list(per_seed(dig, lambda r: final_acc(r, s.chance)).values()))
    return {"target": s.rules.target_fraction * ref.mean if ref.n else math.nan,
            "reference": ref.to_dict()}


def _i(d: dict) -> Interval:
    return Interval.from_dict(d)


# ------------------------------------------------------------------------------ 1 staleness
def staleness_runs(s: Settings) -> list:
    out = []
    for seed in range(s.seeds):
        out.append(config(s, scheme="digital", seed=seed, pipe=True))
        out += [config(s, scheme="ap", stages=m, seed=seed, pipe=True) for m in s.stage_list]
    return out


def staleness_analyse(results: Results, s: Settings, extras: dict) -> dict[str, Any]:
    tgt = target_of(results, s, pipe=True)
    target = tgt["target"]
    cells = {}
    for m in s.stage_list:
        runs = _sel(results, config(s, scheme="ap", stages=m, seed=0, pipe=True))
        cells[m] = {"acc": per_seed(runs, lambda r: final_acc(r, s.chance)),
                    "samples": per_seed(runs, lambda r: samples_to_target(r, target, s.chance)),
                    "diverged": _diverged(runs), "n": len(runs)}
    base = cells[min(s.stage_list)]
    rows, verdicts = [], []
    r = s.rules
    for m in s.stage_list:
        c = cells[m]
        d_acc = st.paired_difference(c["acc"], base["acc"])
        ratio = st.log_ratio_interval(c["samples"], base["samples"])
        row = {"M": m, "acc": st.mean_interval(list(c["acc"].values())).to_dict(),
               "samples": st.mean_interval(list(c["samples"].values())).to_dict(),
               "d_acc": d_acc.to_dict(), "ratio": ratio.to_dict(), "diverged": c["diverged"],
               "n": c["n"], "reached": sum(math.isfinite(v) for v in c["samples"].values())}
        if m != min(s.stage_list):
            row["v_acc"] = st.equivalence(d_acc, r.acc_margin)
            row["v_samples"] = st.equivalence(
                Interval(math.log(ratio.mean), math.log(ratio.lo), math.log(ratio.hi), ratio.n,
                         ratio.total) if ratio.defined else ratio, math.log(r.samples_ratio))
            verdicts += [row["v_acc"], row["v_samples"]]
        rows.append(row)
    nums = "; ".join(
        f"M={x['M']}: Δacc {_i(x['d_acc']).fmt(3)}, samples ratio {_i(x['ratio']).fmt(2)}"
        for x in rows if x["M"] != min(s.stage_list))
    div = sum(x["diverged"] for x in rows)
    miss = sum(x["n"] - x["reached"] for x in rows)
    v = _verdict(
        "Staleness costs little: AP(M) needs about AP(1)'s samples and reaches its accuracy",
        st.combine(verdicts),
        f"paired 95% CI of final-accuracy difference AP(M) - AP(1) within ±{r.acc_margin:g} and "
        f"CI of samples-to-target ratio within [1/{r.samples_ratio:g}, {r.samples_ratio:g}], "
        f"every M; same lr {s.lr:g}, same stream", nums,
        f"{div} diverged run(s) (counted as chance, never reaching the target); {miss} run(s) "
        f"never reached the target {target:.3f} (left out of the ratio, n shown)")
    return {"rows": rows, "target": tgt, "verdicts": [v]}


def staleness_render(a: dict, s: Settings, figs: dict[str, str]) -> list[str]:
    t = a["target"]
    L = [f"AP at M = {list(s.stage_list)}, lr {s.lr:g} for every M, the same micro-batch "
         f"stream per seed; AP(1) is plain analog SGD with one update per micro-batch. Target "
         f"accuracy {t['target']:.3f} = {s.rules.target_fraction:g} x digital SGD's final "
         f"accuracy {_i(t['reference']).fmt(3)}.", ""]
    L += [f"![staleness]({figs['staleness']})", ""] if "staleness" in figs else []
    L += ["| M | final acc (%) | Δ vs AP(1) (points) | samples to target | ratio to AP(1) | "
          "verdict acc / samples | diverged | reached target |",
          "|---|---|---|---|---|---|---|---|"]
    for x in a["rows"]:
        L.append(f"| {x['M']} | {_i(x['acc']).fmt(1, 100, ACCURACY)} | "
                 f"{_i(x['d_acc']).fmt(1, 100)} | "
                 f"{_i(x['samples']).fmt(0, bounds=COUNT)} | {_i(x['ratio']).fmt(2)} | "
                 f"{x.get('v_acc', '-')} / {x.get('v_samples', '-')} | {x['diverged']}/{x['n']} "
                 f"| {x['reached']}/{x['n']} |")
    return L + [""]


# ------------------------------------------------------------------------------ 2 equivalence
def equivalence_runs(s: Settings) -> list:
    out = []
    M = s.acc_stages
    for seed in range(s.seeds):
        out.append(config(s, scheme="digital", seed=seed))
        out.append(config(s, scheme="sp", stages=M, seed=seed))
        out.append(config(s, scheme="ap", stages=M, seed=seed, policy="same"))
        out.append(config(s, scheme="ap", stages=M, seed=seed, policy="scaled"))
    return out


def equivalence_analyse(results: Results, s: Settings, extras: dict) -> dict[str, Any]:
    M, r = s.acc_stages, s.rules
    cells = {
        "digital": config(s, scheme="digital", seed=0),
        "sp": config(s, scheme="sp", stages=M, seed=0),
        "ap_same": config(s, scheme="ap", stages=M, seed=0, policy="same"),
        "ap_scaled": config(s, scheme="ap", stages=M, seed=0, policy="scaled"),
    }
    acc, info, curves = {}, {}, {}
    for k, cfg in cells.items():
        runs = _sel(results, cfg)
        acc[k] = per_seed(runs, lambda x: final_acc(x, s.chance))
        info[k] = {"lr": cfg.lr, "acc": st.mean_interval(list(acc[k].values())).to_dict(),
                   "diverged": _diverged(runs), "n": len(runs)}
        curves[k] = _mean_curve(runs)
    comps, verdicts = [], {}
    for pol in ("same", "scaled"):
        for ref in ("sp", "digital"):
            d = st.paired_difference(acc[f"ap_{pol}"], acc[ref])
            v = st.equivalence(d, r.acc_margin)
            comps.append({"policy": pol, "ref": ref, "diff": d.to_dict(), "verdict": v})
            verdicts[(pol, ref)] = v
    out = []
    for pol, primary in (("same", "primary: the paper's policy"), ("scaled", "secondary")):
        nums = "; ".join(f"AP - {c['ref'].upper() if c['ref'] == 'sp' else 'digital'} "
                         f"{_i(c['diff']).fmt(3)}" for c in comps if c["policy"] == pol)
        div = sum(info[k]["diverged"] for k in cells)
        out.append(_verdict(
            f"AP matches SP and digital final accuracy (lr policy `{pol}`, {primary})",
            st.combine([verdicts[(pol, "sp")], verdicts[(pol, "digital")]]),
            f"paired 95% CI of the final-accuracy difference within ±{r.acc_margin:g}, vs SP "
            f"and vs digital, M = {M}", nums,
            f"{div} diverged run(s) counted as chance; AP makes B = {s.microbatches} times as "
            f"many updates as SP per sample" + (" of the same lr" if pol == "same" else
                                               " at lr / B")))
    return {"cells": info, "comparisons": comps, "curves": curves, "verdicts": out}


def _mean_curve(runs: dict[int, Any]) -> list[dict[str, Any]]:
    """Mean test accuracy per epoch over the seeds that have it (with the count)."""
    by: dict[int, list[float]] = {}
    for r in runs.values():
        for h in r.curve:
            by.setdefault(int(h["epoch"]), []).append(float(h["test_acc"]))
    return [{"epoch": e, **st.mean_interval(v).to_dict()} for e, v in sorted(by.items())]


def equivalence_render(a: dict, s: Settings, figs: dict[str, str]) -> list[str]:
    L = [f"M = {s.acc_stages}, mini-batch {s.microbatches} x {s.micro_batch_size}. SP and WOP "
         "make the same updates (one per mini-batch, same weights), so the SP run stands for "
         "both; WOP differs only in its clock (section 3). Policy `same`: every scheme at lr "
         f"{s.lr:g} (the paper's); `scaled`: AP at lr / B = {s.lr / s.microbatches:g}.", ""]
    L += [f"![accuracy vs epoch]({figs['equivalence']})", ""] if "equivalence" in figs else []
    L += ["| run | lr | final acc (%) | diverged |", "|---|---|---|---|"]
    names = {"digital": "digital SGD", "sp": "analog SP (= WOP)", "ap_same": "analog AP, `same`",
             "ap_scaled": "analog AP, `scaled`"}
    for k, c in a["cells"].items():
        L.append(f"| {names[k]} | {c['lr']:g} | {_i(c['acc']).fmt(1, 100, ACCURACY)} | "
                 f"{c['diverged']}/{c['n']} |")
    L += ["", "| policy | AP minus | difference (points) | verdict |", "|---|---|---|---|"]
    for c in a["comparisons"]:
        L.append(f"| `{c['policy']}` | {c['ref']} | {_i(c['diff']).fmt(1, 100)} | "
                 f"{c['verdict']} |")
    return L + [""]


# ------------------------------------------------------------------------------ 3 speedup
def speedup_runs(s: Settings) -> list:
    out = staleness_runs(s)
    out += [config(s, scheme="sp", stages=s.acc_stages, seed=seed, pipe=True)
            for seed in range(s.seeds)]
    return out


def speedup_measure(results: Results, s: Settings, out: Path) -> dict[str, Any]:
    """Mean BL of every AP / SP run (start and end) and their clocks."""
    from analogpipe.experiments.clock import measure_bl
    from analogpipe.experiments.plan import RunSpec
    from analogpipe.experiments.runner import run_dir
    from analogpipe.train.config import TrainConfig

    bl = {}
    for r in results.runs:
        c = r.config
        if "speedup" in r.groups and c["scheme"] in ("ap", "sp") and r.curve:
            cfg = TrainConfig.from_dict(c)
            # the run's own folder (name + settings hash), where its final checkpoint lies
            folder = run_dir(out, RunSpec(r.name, cfg, list(r.groups)))
            bl[r.name] = measure_bl(cfg, folder)
    return {"bl": bl}


def speedup_analyse(results: Results, s: Settings, extras: dict) -> dict[str, Any]:
    from analogpipe.experiments.clock import run_clock

    bl = (extras.get("speedup") or {}).get("bl", {})
    tgt = target_of(results, s, pipe=True)
    target, r = tgt["target"], s.rules
    M1 = min(s.stage_list)
    samples, clocks, cyc, cyc_bal = {}, {}, {}, {}
    for m in s.stage_list:
        runs = _sel(results, config(s, scheme="ap", stages=m, seed=0, pipe=True))
        samples[m] = per_seed(runs, lambda x: samples_to_target(x, target, s.chance))
        clk = {sd: run_clock(_cfg(x), bl.get(x.name, {}).get("mean", math.nan))
               for sd, x in runs.items()}
        clocks[m] = clk
        cyc[m] = {sd: samples[m][sd] * clk[sd]["aimc"] for sd in runs}
        cyc_bal[m] = {sd: samples[m][sd] * clk[sd]["balanced"] for sd in runs}
    sp_runs = _sel(results, config(s, scheme="sp", stages=s.acc_stages, seed=0, pipe=True))
    sp_samples = per_seed(sp_runs, lambda x: samples_to_target(x, target, s.chance))
    rows, verdicts = [], []
    for m in s.stage_list:
        sp_cyc, wop_cyc = {}, {}
        for sd, x in sp_runs.items():
            b = bl.get(x.name, {}).get("mean", math.nan)
            c_sp = _cfg(x, stages=m, t=1.0 / m)
            sp_cyc[sd] = sp_samples[sd] * run_clock(c_sp, b)["aimc"]
            wop_cyc[sd] = sp_samples[sd] * run_clock(_cfg(x, stages=m, t=1.0 / m,
                                                          scheme="wop"), b)["aimc"]
        sp_ = st.log_ratio_interval(cyc[M1], cyc[m])
        dens = _mean([c["density_unit"] for c in clocks[m].values()])
        ideal = m * dens / (M1 * _mean([c["density_unit"] for c in clocks[M1].values()]))
        eff = st.log_ratio_interval({sd: v / ideal for sd, v in _ratios(cyc[M1], cyc[m]).items()},
                                    {sd: 1.0 for sd in cyc[m]})
        row = {"M": m, "speedup": sp_.to_dict(),
               "speedup_balanced": st.log_ratio_interval(cyc_bal[M1], cyc_bal[m]).to_dict(),
               "ideal": ideal, "density": dens, "efficiency": eff.to_dict(),
               "cycles_ap": st.mean_interval(list(cyc[m].values())).to_dict(),
               "cycles_sp": st.mean_interval(list(sp_cyc.values())).to_dict(),
               "cycles_wop": st.mean_interval(list(wop_cyc.values())).to_dict(),
               "bl": _mean([c["mean_bl"] for c in clocks[m].values()]),
               "stage_blocks": next(iter(clocks[m].values()))["stage_blocks"] if clocks[m]
               else [],
               "t_f": next(iter(clocks[m].values()))["t_f"] if clocks[m] else [],
               "t_b": next(iter(clocks[m].values()))["t_b"] if clocks[m] else []}
        if m != M1:
            row["verdict"] = st.at_least(eff, r.near_linear)
            verdicts.append(row["verdict"])
        rows.append(row)
    sp_bl = _mean([bl.get(x.name, {}).get("mean", math.nan) for x in sp_runs.values()])
    nums = "; ".join(f"M={x['M']}: {_i(x['speedup']).fmt(2)}x vs ideal {x['ideal']:.2f} "
                     f"(efficiency {_i(x['efficiency']).fmt(2)})" for x in rows if x["M"] != M1)
    v = _verdict(
        "Near-linear speedup: AP(M) reaches the target in ~1/M of AP(1)'s cycles",
        st.combine(verdicts),
        f"95% CI of measured / ideal speedup (ideal = M x density) >= {r.near_linear:g} at "
        f"every M; AIMC clock on the actual partition", nums,
        "stages are not perfectly balanced (the input layer has no transposed MVM; see the "
        "stage costs), and AP(M) may need other samples than AP(1) (section 1)")
    return {"rows": rows, "target": tgt, "sp_bl": sp_bl, "verdicts": [v]}


def _cfg(run: Any, *, stages: int | None = None, t: float | None = None,
         scheme: str | None = None) -> Any:
    from analogpipe.train.config import TrainConfig

    d = dict(run.config)
    if stages is not None:
        d["stages"] = stages
    if t is not None:
        d["t_f"] = d["t_b"] = t
    if scheme is not None:
        d["scheme"] = scheme
    return TrainConfig.from_dict(d)


def _ratios(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    return {sd: a[sd] / b[sd] if (sd in a and b[sd] > 0) else math.nan for sd in b}


def _mean(v: list[float]) -> float:
    v = [x for x in v if isinstance(x, int | float) and math.isfinite(x)]
    return sum(v) / len(v) if v else math.nan


def speedup_render(a: dict, s: Settings, figs: dict[str, str]) -> list[str]:
    M1 = min(s.stage_list)
    L = [f"cycles-to-target = samples-to-target x cycles-per-sample, per seed. Cycles per sample"
         f" come from the cycle model on one epoch's schedule with AIMC stage costs on the "
         f"partition each run used (balanced on AIMC cost), the update charged by the run's "
         f"measured mean pulse-train length BL (mean of start and end; SP's mean BL "
         f"{a['sp_bl']:.2f}); t_pulse = 1/31 MVM. Speedup = AP({M1})'s cycles / AP(M)'s, "
         f"geometric mean over seeds with its t interval on the logs. Ideal = M x density "
         f"(density of the AP schedule, unit costs; the pipeline drains every epoch). The "
         f"balanced clock (t_f = t_b = 1/M) is shown beside it. SP(M) and WOP cycles use SP's "
         f"samples (SP = WOP numerically) on their own schedules: against AP they also change "
         f"how often weights are updated, a separate effect.", ""]
    L += [f"![speedup]({figs['speedup']})", ""] if "speedup" in figs else []
    L += ["| M | stages (blocks) | t_f / t_b per stage (MVM times) | mean BL | speedup AIMC | "
          "speedup balanced | ideal | efficiency | verdict | cycles AP | cycles SP | "
          "cycles WOP |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in a["rows"]:
        stages = " / ".join("+".join(g) for g in x["stage_blocks"])
        tf = ", ".join(f"{f:.0f}/{b:.0f}" for f, b in zip(x["t_f"], x["t_b"]))
        L.append(f"| {x['M']} | {stages} | {tf} | {x['bl']:.2f} | {_i(x['speedup']).fmt(2)} | "
                 f"{_i(x['speedup_balanced']).fmt(2)} | {x['ideal']:.2f} | "
                 f"{_i(x['efficiency']).fmt(2)} | {x.get('verdict', '-')} | "
                 f"{_i(x['cycles_ap']).fmt(0, bounds=COUNT)} | "
                 f"{_i(x['cycles_sp']).fmt(0, bounds=COUNT)} | "
                 f"{_i(x['cycles_wop']).fmt(0, bounds=COUNT)} |")
    return L + [""]


# ------------------------------------------------------------------------------ 4 tau sweep
def tau_configs(s: Settings, seed: int) -> list:
    """The sweep at one seed: soft bounds at each tau, then the ideal device; everything but
    the device bound is identical (mapping omega, IO, init, lr, stream)."""
    M = s.acc_stages
    out = [config(s, scheme="ap", stages=M, seed=seed, tau=t, omega=s.sweep_omega)
           for t in s.sweep_taus]
    # the ideal device ignores tau: keep the first tau so that the configs differ only in
    # the device model
    out.append(config(s, scheme="ap", stages=M, seed=seed, tau=s.sweep_taus[0],
                      omega=s.sweep_omega, device_model="ideal"))
    return out


def tau_runs(s: Settings) -> list:
    out = []
    for seed in range(s.seeds):
        out += tau_configs(s, seed)
    return out


def tau_analyse(results: Results, s: Settings, extras: dict) -> dict[str, Any]:
    rows, pts = [], []
    loss: dict[str, dict[int, float]] = {}
    for cfg in tau_configs(s, 0):
        runs = _sel(results, cfg)
        ideal = cfg.device_model == "ideal"
        key = "ideal" if ideal else f"{cfg.tau:g}"
        sat = per_seed(runs, lambda x, ideal=ideal: math.nan if ideal else max_saturation(x))
        loss[key] = per_seed(runs, final_loss)
        rows.append({"tau": math.inf if ideal else cfg.tau, "key": key,
                     "acc": st.mean_interval(list(per_seed(
                         runs, lambda x: final_acc(x, s.chance)).values())).to_dict(),
                     "loss": st.mean_interval(list(loss[key].values())).to_dict(),
                     "sat": st.mean_interval(list(sat.values())).to_dict(),
                     "diverged": _diverged(runs), "n": len(runs)})
        pts += [(sat.get(sd, math.nan), loss[key][sd]) for sd in runs if not ideal]
    lo_key = f"{min(s.sweep_taus):g}"
    d = st.paired_difference(loss[lo_key], loss["ideal"])
    sp = st.spearman([p[0] for p in pts], [p[1] for p in pts])
    r = s.rules
    up = d.defined and d.lo > 0
    trend = sp["rho"] > 0 and sp["p"] < r.trend_p
    if up and trend:
        verdict = st.SUPPORTED
    elif (d.defined and d.hi < 0) or (sp["rho"] < 0 and sp["p"] < r.trend_p):
        verdict = st.NOT_SUPPORTED
    else:
        verdict = st.INCONCLUSIVE
    div = sum(x["diverged"] for x in rows)
    smax = max((_i(x["sat"]).mean for x in rows if math.isfinite(_i(x["sat"]).mean)),
               default=math.nan)
    v = _verdict(
        "Saturation raises the floor: final test loss grows with W_max / tau",
        verdict,
        f"paired 95% CI of final test loss (smallest tau - ideal device) > 0, and Spearman "
        f"rho(max|W|/tau over training, final loss) > 0 with p < {r.trend_p:g} over all runs",
        f"Δloss tau {lo_key} vs ideal {d.fmt(3)}; rho {sp['rho']:+.2f} (p {sp['p']:.2g}, "
        f"n {sp['n']})",
        f"{div} diverged run(s) (loss left out); largest mean max|W|/tau {smax:.2f}; "
        f"saturation sampled at epoch ends only")
    return {"rows": rows, "loss_diff": d.to_dict(), "spearman": sp, "verdicts": [v]}


def tau_render(a: dict, s: Settings, figs: dict[str, str]) -> list[str]:
    L = [f"AP at M = {s.acc_stages}, lr {s.lr:g}. Only the device bound changes: every run maps "
         f"its weights at omega = {s.sweep_omega:g} conductance units (so max|W|/tau starts at "
         f"omega/tau), with the same 8-bit IO, output noise, learned output scaling, initial "
         f"weights and micro-batch stream; the ideal device with the same mapping and IO is "
         f"tau = inf. max|W|/tau is the largest per-layer max over all end-of-epoch snapshots.",
         ""]
    L += [f"![tau sweep]({figs['tau']})", ""] if "tau" in figs else []
    L += ["| tau | max abs(W)/tau over training | final test loss | final acc (%) | diverged |",
          "|---|---|---|---|---|"]
    for x in a["rows"]:
        L.append(f"| {x['key']} | {_i(x['sat']).fmt(2) if x['key'] != 'ideal' else '-'} | "
                 f"{_i(x['loss']).fmt(3)} | {_i(x['acc']).fmt(1, 100, ACCURACY)} | "
                 f"{x['diverged']}/{x['n']} |")
    return L + [""]


# ------------------------------------------------------------------------------ 5 convergence
def convergence_measure(results: Results, s: Settings, out: Path) -> list[dict[str, Any]]:
    from analogpipe.experiments.convergence import convergence_runs

    return convergence_runs(s.conv_taus, s.seeds, steps=s.conv_steps, lr=s.conv_lr,
                            batch=s.conv_batch, w_star_max=s.conv_w_star)


def fit_window(K: list[int], E: list[float], floor: float) -> tuple[list[int], list[float]]:
    """The plan's window for the rate: K >= 10 while E_K >= 3 x the run's floor."""
    pts = [(k, e) for k, e in zip(K, E) if k >= 10]
    kept = []
    for k, e in pts:
        if e < 3 * floor:
            break
        kept.append((k, e))
    return [k for k, _ in kept], [e for _, e in kept]


def convergence_analyse(results: Results, s: Settings, extras: dict) -> dict[str, Any]:
    runs = extras.get("convergence") or []
    if not runs:
        return {"verdicts": []}
    r = s.rules
    ideal = {x["seed"]: x["floor"] for x in runs if math.isinf(x["tau"])}
    rows, slope_v, curves = [], [], {}
    for tau in s.conv_taus:
        xs = [x for x in runs if x["tau"] == tau]
        slopes = []
        for x in xs:
            k, e = fit_window(x["K"], x["E_K"], x["floor"])
            slopes.append(st.slope_fit(k, e)["slope"])
        sl = st.mean_interval(slopes)
        excess = st.mean_interval([x["floor"] - ideal.get(x["seed"], math.nan) for x in xs])
        wmax = _mean([x["w_max"] for x in xs])
        v = (st.SUPPORTED if sl.defined and sl.hi <= r.rate_slope else
             st.NOT_SUPPORTED if sl.defined and sl.lo > r.rate_slope else st.INCONCLUSIVE)
        slope_v.append(v)
        rows.append({"tau": tau, "slope": sl.to_dict(), "excess": excess.to_dict(),
                     "floor": st.mean_interval([x["floor"] for x in xs]).to_dict(),
                     "w_max": wmax, "shape": wmax ** 2 / (tau ** 2 - wmax ** 2)
                     if wmax < tau else math.nan, "slope_verdict": v})
        curves[f"{tau:g}"] = _mean_ek(xs)
    curves["ideal"] = _mean_ek([x for x in runs if math.isinf(x["tau"])])
    fit = st.fit_one_constant([x["shape"] for x in rows], [_i(x["excess"]).mean for x in rows])
    for x, res in zip(rows, fit["residuals"]):
        x["residual"] = res
    tol = math.log10(r.floor_factor)
    res_ok = all(math.isfinite(x) and abs(x) <= tol for x in fit["residuals"])
    inside = all(s.conv_w_star < x["tau"] and x["w_max"] < x["tau"] for x in rows)
    sigma2 = _mean([x["sigma2"] for x in runs])
    v1 = _verdict(
        "E_K falls at least like 1/sqrt(K) before the floor (teacher problem)",
        st.combine(slope_v),
        f"95% CI of the log-log slope of E_K (K >= 10 while E_K >= 3 x floor) <= "
        f"{r.rate_slope:g} at every tau (the theory's bound is -1/2)",
        "; ".join(f"tau {x['tau']:g}: {_i(x['slope']).fmt(2)}" for x in rows),
        "a strongly convex quadratic converges faster than the non-convex bound: a slope "
        "near -1 is expected and satisfies it")
    v2 = _verdict(
        "The floor follows sigma^2 W_max^2 / (tau^2 - W_max^2)",
        (st.SUPPORTED if res_ok else st.NOT_SUPPORTED) if inside else st.INCONCLUSIVE,
        f"floor(tau) - floor(ideal) = c x W_max^2 / (tau^2 - W_max^2), one constant c fitted on "
        f"the logs; every point within a factor {r.floor_factor:g} of the fit",
        f"c = {fit['c']:.3g} (c / sigma^2 = {fit['c'] / sigma2:.3g}); log10 residuals "
        + ", ".join(f"tau {x['tau']:g}: {x['residual']:+.2f}" for x in rows),
        "none" if inside else "max|W*| or W_max is not below tau for every tau: the floor "
        "may measure clipping")
    return {"rows": rows, "fit": {"c": fit["c"]}, "sigma2": sigma2, "curves": curves,
            "inside": inside, "verdicts": [v1, v2]}


def _mean_ek(xs: list[dict[str, Any]]) -> dict[str, list[float]]:
    if not xs:
        return {"K": [], "E_K": []}
    K = xs[0]["K"]
    return {"K": K, "E_K": [_mean([x["E_K"][i] for x in xs]) for i in range(len(K))]}


def convergence_render(a: dict, s: Settings, figs: dict[str, str]) -> list[str]:
    if not a.get("rows"):
        return ["Not run (`--no-convergence`).", ""]
    L = [f"Linear teacher y = W* x + noise (16 inputs, 4 outputs, 512 samples, noise std 0.1), "
         f"max|W*| = {s.conv_w_star:g} inside every tau; one analog tile, soft bounds, perfect "
         f"IO, expected update per micro-batch (the theory's model), W_0 = 0, lr "
         f"{s.conv_lr:g}, micro-batch {s.conv_batch}, {s.conv_steps} steps, {s.seeds} seeds. "
         f"E_K = (1/K) sum_k ||grad f(W_k)||^2 with the full-batch gradient; floor = mean "
         f"||grad f||^2 over the last quarter; sigma^2 = variance of the micro-batch gradient "
         f"at W* = {a['sigma2']:.3g}.", ""]
    L += [f"![convergence]({figs['convergence']})", ""] if "convergence" in figs else []
    L += ["| tau | max abs(W) | W_max^2/(tau^2-W_max^2) | floor | floor - ideal floor | "
          "log10 residual | slope of E_K | verdict (rate) |", "|---|---|---|---|---|---|---|---|"]
    for x in a["rows"]:
        L.append(f"| {x['tau']:g} | {x['w_max']:.3f} | {x['shape']:.3g} | "
                 f"{_i(x['floor']).fmt(5)} | {_i(x['excess']).fmt(5)} | {x['residual']:+.2f} | "
                 f"{_i(x['slope']).fmt(2)} | {x['slope_verdict']} |")
    return L + [""]


# ------------------------------------------------------------------------------ registry
register(Group("staleness", "1. Staleness: AP(M) against AP(1), same lr and stream",
               staleness_runs, staleness_analyse, staleness_render, plot_figures("staleness"),
               order=10))
register(Group("equivalence", "2. AP against SP and digital SGD (two lr policies)",
               equivalence_runs, equivalence_analyse, equivalence_render,
               plot_figures("equivalence"), order=20))
register(Group("speedup", "3. Speedup in cycles to the target", speedup_runs, speedup_analyse,
               speedup_render, plot_figures("speedup"), measure=speedup_measure, order=30))
register(Group("tau", "4. Saturation sweep: only the device bound changes", tau_runs,
               tau_analyse, tau_render, plot_figures("tau"), order=40))
register(Group("convergence", "5. Convergence rate and floor (teacher problem)",
               lambda s: [], convergence_analyse, convergence_render,
               plot_figures("convergence"), measure=convergence_measure, order=50,
               measure_needs_runs=False))
